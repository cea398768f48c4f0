#include "control/ctl/cli.hh"

#include "control/ctl/client.hh"
#include "control/ctl/output.hh"
#include "tls/ca.hh"

#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>
#include <fmt/format.h>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace apprelay::ctl {

using nlohmann::json;

namespace {

// A command's work once arguments are parsed: the API call, its human output and, where the
// response body is not already the JSON to print (metrics, users issue), its --json output.
struct command {
    api_call call;
    renderer render;
    renderer json_render;
};

// A usage problem found after parsing (an unreadable --cert file) is reported through
// `usage_error`.
using command_builder = std::function<command(std::string& usage_error)>;

struct app_options {
    std::string backend;
    std::string hostname;
    uint16_t port = 0;
    std::string group;
    std::string access;
    std::vector<std::string> allow_groups;
    std::string cert_file;
    std::string key_file;
    int64_t idle_timeout_ms = -1; // -1 = not given
};

// Objects on the relay whose names a value can take, for the completion script: `__names KIND`
// prints the `field` of each object the list call returns under the key KIND (API.md), one a
// line. Tokens: only the valid ones, the only ones `tokens revoke` takes.
struct name_list {
    std::string_view kind;
    api_call (*list)(std::string_view tenant);
    std::string_view field;
    std::string_view state; // only objects in this state; empty = all
};
const std::array<name_list, 6> k_name_lists = {{
    {"tenants", [](std::string_view) { return tenants_list_call(); }, "name", ""},
    {"relays", [](std::string_view) { return relays_list_call(); }, "node", ""},
    {"groups", &groups_list_call, "name", ""},
    {"connectors", &connectors_list_call, "id", ""},
    {"apps", &apps_list_call, "name", ""},
    {"tokens", &tokens_list_call, "id", "valid"},
}};

// KIND has passed the CLI::IsMember check built from the same table.
const name_list& find_name_list(std::string_view kind) {
    return *std::find_if(k_name_lists.begin(), k_name_lists.end(),
                         [&](const name_list& l) { return l.kind == kind; });
}

// Marks a value as naming an existing object of `kind` (k_name_lists).
CLI::Option* names_of(value_names& names, CLI::Option* o, std::string_view kind) {
    names[o] = std::string(kind);
    return o;
}

void add_app_options(CLI::App* sub, app_options& o, bool backend_required, value_names& names) {
    auto* backend = sub->add_option("--backend", o.backend, "backend HOST:PORT");
    if (backend_required) {
        backend->required();
    }
    sub->add_option("--hostname", o.hostname, "external hostname (TLS SNI)");
    sub->add_option("--port", o.port, "listen port on the relay")->check(CLI::Range(1, 65535));
    names_of(names, sub->add_option("--group", o.group, "connector group (default Default)"),
             "groups");
    sub->add_option("--access", o.access, "access rule")
        ->check(CLI::IsMember({"passthrough", "user-cert"}));
    sub->add_option("--allow-group", o.allow_groups, "user group allowed (user-cert), repeatable");
    auto* cert = sub->add_option("--cert", o.cert_file, "server certificate chain (PEM file)");
    auto* key = sub->add_option("--key", o.key_file, "server private key (PEM file)");
    cert->needs(key);
    key->needs(cert);
    sub->add_option("--idle-timeout-ms", o.idle_timeout_ms,
                    "cut this app's streams after this long with no byte moved (100-86400000; 0 = "
                    "the relay's [limits] idle_timeout_ms)")
        ->check(CLI::Range(int64_t(0), int64_t(86'400'000)));
}

std::optional<app_fields> to_fields(const app_options& o, std::string& usage_error) {
    app_fields f;
    auto set = [](std::optional<std::string>& field, const std::string& v) {
        if (!v.empty()) {
            field = v;
        }
    };
    set(f.backend, o.backend);
    set(f.hostname, o.hostname);
    set(f.group, o.group);
    set(f.access, o.access);
    if (o.port != 0) {
        f.listen_port = o.port;
    }
    if (o.idle_timeout_ms >= 0) {
        f.idle_timeout_ms = o.idle_timeout_ms;
    }
    f.allowed_user_groups = o.allow_groups;
    if (!o.cert_file.empty()) {
        f.cert_pem = read_text_file(o.cert_file, usage_error);
        if (!f.cert_pem) {
            return std::nullopt;
        }
        f.key_pem = read_text_file(o.key_file, usage_error);
        if (!f.key_pem) {
            return std::nullopt;
        }
    }
    return f;
}

rendered text(std::string s) {
    return rendered{std::move(s), {}, {}};
}

rendered json_text(const json& j) {
    return text(j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
}

renderer confirm(std::string action) {
    return json_renderer([action](const json& j) { return text(format_confirmation(action, j)); });
}

// users issue: the certificate and its key go to OUT.crt and OUT.key (0600), never to the
// terminal, in --json mode too. Returns the JSON summary, or sets why.
std::optional<json> write_user_files(const json& j, const std::string& out_prefix,
                                     std::string& why) {
    auto c =
        apprelay::tls::write_pem_file(out_prefix + ".crt", j.value("cert_pem", ""), false, &why);
    auto k = apprelay::tls::write_pem_file(out_prefix + ".key", j.value("key_pem", ""), true, &why);
    if (!c || !k) {
        return std::nullopt;
    }
    return json{{"name", j.value("name", "")},
                {"groups", j.value("groups", json::array())},
                {"cert_file", out_prefix + ".crt"},
                {"key_file", out_prefix + ".key"}};
}

// __names KIND: one name a line; with --json a JSON array of them.
command names_command(const name_list& l, const std::string& tenant) {
    auto names = [&l](const json& j) { return listed_names(j, l.kind, l.field, l.state); };
    return command{l.list(tenant), json_renderer([names](const json& j) {
                       std::string out;
                       for (const auto& n : names(j)) {
                           out += n + "\n";
                       }
                       return text(std::move(out));
                   }),
                   json_renderer([names](const json& j) { return json_text(names(j)); })};
}

// --json is looked for before parsing too: a parse error must already honour it.
bool json_requested(int argc, const char* const* argv) {
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--") == 0) {
            return false;
        }
        if (std::strcmp(argv[i], "--json") == 0) {
            return true;
        }
    }
    return false;
}

} // namespace

struct command_line::impl {
    CLI::App app{"apprelayctl: manage an apprelay relay through its admin API"};
    std::vector<std::pair<CLI::App*, command_builder>> leaves;
    value_names names;

    // Global options.
    std::string socket_path;
    std::string url;
    std::string token;
    std::string tenant{k_default_tenant};
    bool json_output = false;

    // Commands that answer without the relay.
    CLI::App* completion = nullptr;
    std::string completion_shell;
    CLI::App* man = nullptr;

    // The commands' arguments.
    std::string names_kind;
    std::string drain_node;
    std::string ca_tenant;
    std::string group_name;
    std::string group_region;
    std::string group_new_name;
    bool group_force = false;
    std::string connector_id;
    std::string connector_group;
    std::string app_name;
    app_options create_opts;
    app_options update_opts;
    std::string app_group;
    std::string token_group;
    std::optional<uint64_t> token_ttl;
    std::string token_id;
    std::string user_name;
    std::vector<std::string> user_groups;
    std::optional<uint64_t> user_days;
    std::string user_out;

    impl();
    CLI::App* leaf(CLI::App* parent, const std::string& name, const char* help, command_builder b) {
        CLI::App* sub = parent->add_subcommand(name, help);
        leaves.emplace_back(sub, std::move(b));
        return sub;
    }
    CLI::Option* names_of(CLI::Option* o, std::string_view kind) {
        return ctl::names_of(names, o, kind);
    }
};

// The callbacks capture this object's members (by reference through `this`): it lives behind a
// unique_ptr, so they stay valid for the command_line's life.
command_line::impl::impl() {
    app.require_subcommand(1);
    app.fallthrough(); // global options are accepted after the command too
    app.footer("Exit status: 0 ok, 1 refused by the relay (4xx), 2 usage error, 3 relay not "
               "reachable, 4 relay failure (5xx). See apprelayctl(1).");

    app.add_option("--socket", socket_path,
                   "admin socket (default: $APPRELAY_ADMIN_SOCKET, else /run/apprelay/admin.sock)");
    app.add_option("--url", url, "admin API over loopback TCP: http://127.0.0.1:PORT");
    app.add_option("--token", token, "bearer token for --url (default: $APPRELAY_ADMIN_TOKEN)");
    names_of(app.add_option("--tenant", tenant, "tenant (default: default)"), "tenants");
    app.add_flag("--json", json_output,
                 "machine-readable output: the API's JSON response as is (a JSON object for "
                 "metrics, users issue, completion and man); errors as {\"error\", \"status\"} "
                 "on stderr");

    leaf(&app, "status", "relay status", [](std::string&) {
        return command{
            status_call(), json_renderer([](const json& j) { return text(format_status(j)); }), {}};
    });
    leaf(&app, "metrics", "Prometheus metrics", [](std::string&) {
        return command{metrics_call(), [](const std::string& body) { return text(body); },
                       [](const std::string& body) {
                           return json_text({{"metrics", body}});
                       }};
    });

    CLI::App* relays =
        app.add_subcommand("relays", "the fleet's relay hosts (etcd store)")->require_subcommand(1);
    leaf(relays, "list", "list the fleet's relays, their tunnels and how current each is",
         [](std::string&) {
             return command{relays_list_call(),
                            json_renderer([](const json& j) { return text(format_relays(j)); }),
                            {}};
         });
    auto* rdrain =
        leaf(relays, "drain", "drain a relay: GOAWAY to its tunnels, streams finish, it exits",
             [&](std::string&) {
                 return command{relay_drain_call(drain_node),
                                json_renderer([&](const json&) {
                                    return text("relay " + drain_node + " draining\n");
                                }),
                                {}};
             });
    names_of(rdrain->add_option("NODE", drain_node, "the relay's node name ([fleet] node)"),
             "relays")
        ->required();

    CLI::App* tenants = app.add_subcommand("tenants", "tenants")->require_subcommand(1);
    leaf(tenants, "list", "list tenants", [](std::string&) {
        return command{tenants_list_call(),
                       json_renderer([](const json& j) { return text(format_tenants(j)); }),
                       {}};
    });
    auto* tca = leaf(tenants, "ca", "print a tenant's CA certificate (PEM)", [&](std::string&) {
        return command{tenant_ca_call(ca_tenant),
                       json_renderer([](const json& j) { return text(format_ca(j)); }),
                       {}};
    });
    names_of(tca->add_option("NAME", ca_tenant, "tenant"), "tenants")->required();

    CLI::App* groups = app.add_subcommand("groups", "connector groups")->require_subcommand(1);
    leaf(groups, "list", "list groups", [&](std::string&) {
        return command{groups_list_call(tenant),
                       json_renderer([](const json& j) { return text(format_groups(j)); }),
                       {}};
    });
    auto* gcreate = leaf(groups, "create", "create a group", [&](std::string&) {
        std::optional<std::string> region;
        if (!group_region.empty()) {
            region = group_region;
        }
        return command{group_create_call(tenant, group_name, region),
                       confirm(fmt::format("created group {}", group_name)),
                       {}};
    });
    gcreate->add_option("NAME", group_name, "group name")->required();
    gcreate->add_option("--region", group_region, "region label");
    auto* grename = leaf(groups, "rename", "rename a group", [&](std::string&) {
        return command{group_rename_call(tenant, group_name, group_new_name),
                       confirm(fmt::format("renamed group {} to {}", group_name, group_new_name)),
                       {}};
    });
    names_of(grename->add_option("OLD", group_name, "current name"), "groups")->required();
    grename->add_option("NEW", group_new_name, "new name")->required();
    auto* gdelete = leaf(groups, "delete", "delete a group", [&](std::string&) {
        return command{
            group_delete_call(tenant, group_name, group_force),
            json_renderer([&](const json& j) { return text(format_group_deleted(group_name, j)); }),
            {}};
    });
    names_of(gdelete->add_option("NAME", group_name, "group name"), "groups")->required();
    gdelete->add_flag("--force", group_force, "delete even with connectors (they move out)");

    CLI::App* connectors = app.add_subcommand("connectors", "connectors")->require_subcommand(1);
    leaf(connectors, "list", "list connectors", [&](std::string&) {
        return command{connectors_list_call(tenant),
                       json_renderer([](const json& j) {
                           return text(format_connectors(j, std::time(nullptr)));
                       }),
                       {}};
    });
    auto* cmove = leaf(connectors, "move", "move a connector to a group", [&](std::string&) {
        return command{
            connector_move_call(tenant, connector_id, connector_group),
            confirm(fmt::format("moved connector {} to group {}", connector_id, connector_group)),
            {}};
    });
    names_of(cmove->add_option("ID", connector_id, "connector id"), "connectors")->required();
    names_of(cmove->add_option("GROUP", connector_group, "target group"), "groups")->required();
    auto* cdelete = leaf(connectors, "delete", "delete (revoke) a connector", [&](std::string&) {
        return command{connector_delete_call(tenant, connector_id),
                       confirm(fmt::format("deleted connector {}", connector_id)),
                       {}};
    });
    names_of(cdelete->add_option("ID", connector_id, "connector id"), "connectors")->required();

    CLI::App* apps = app.add_subcommand("apps", "applications")->require_subcommand(1);
    leaf(apps, "list", "list applications", [&](std::string&) {
        return command{apps_list_call(tenant),
                       json_renderer([](const json& j) { return text(format_apps(j)); }),
                       {}};
    });
    auto* acreate = leaf(apps, "create", "publish an application", [&](std::string& why) {
        auto f = to_fields(create_opts, why);
        return f ? command{app_create_call(tenant, app_name, *f),
                           confirm(fmt::format("created app {}", app_name)),
                           {}}
                 : command{};
    });
    acreate->add_option("NAME", app_name, "application name")->required();
    add_app_options(acreate, create_opts, true, names);
    auto* aupdate = leaf(apps, "update", "change an application", [&](std::string& why) {
        auto f = to_fields(update_opts, why);
        return f ? command{app_update_call(tenant, app_name, *f),
                           confirm(fmt::format("updated app {}", app_name)),
                           {}}
                 : command{};
    });
    names_of(aupdate->add_option("NAME", app_name, "application name"), "apps")->required();
    add_app_options(aupdate, update_opts, false, names);
    auto* aassign = leaf(apps, "assign", "assign an application to a group", [&](std::string&) {
        return command{app_assign_call(tenant, app_name, app_group),
                       confirm(fmt::format("assigned app {} to group {}", app_name, app_group)),
                       {}};
    });
    names_of(aassign->add_option("NAME", app_name, "application name"), "apps")->required();
    names_of(aassign->add_option("GROUP", app_group, "connector group"), "groups")->required();
    auto* adelete = leaf(apps, "delete", "delete an application", [&](std::string&) {
        return command{app_delete_call(tenant, app_name),
                       confirm(fmt::format("deleted app {}", app_name)),
                       {}};
    });
    names_of(adelete->add_option("NAME", app_name, "application name"), "apps")->required();

    CLI::App* tokens = app.add_subcommand("tokens", "enrollment tokens")->require_subcommand(1);
    auto* tcreate = leaf(tokens, "create", "create an enrollment token", [&](std::string&) {
        std::optional<std::string> group;
        if (!token_group.empty()) {
            group = token_group;
        }
        // --json prints the API's {id, token, group, expires_at} as is.
        return command{token_create_call(tenant, group, token_ttl),
                       json_renderer([](const json& j) { return format_token_created(j); }),
                       {}};
    });
    names_of(
        tcreate->add_option("--group", token_group, "group the connector joins (default Default)"),
        "groups");
    tcreate->add_option("--ttl", token_ttl, "lifetime in seconds (default 3600)");
    leaf(tokens, "list", "list tokens", [&](std::string&) {
        return command{tokens_list_call(tenant),
                       json_renderer([](const json& j) { return text(format_tokens(j)); }),
                       {}};
    });
    auto* trevoke = leaf(tokens, "revoke", "revoke a token", [&](std::string&) {
        return command{token_revoke_call(tenant, token_id),
                       confirm(fmt::format("revoked token {}", token_id)),
                       {}};
    });
    names_of(trevoke->add_option("ID", token_id, "token id"), "tokens")->required();

    CLI::App* users = app.add_subcommand("users", "user certificates (issued by the tenant CA)")
                          ->require_subcommand(1);
    auto* uissue = leaf(users, "issue", "issue a user certificate", [&](std::string&) {
        return command{user_issue_call(tenant, user_name, user_groups, user_days),
                       json_renderer([&](const json& j) {
                           rendered r;
                           if (write_user_files(j, user_out, r.error)) {
                               r.out = fmt::format(
                                   "issued user certificate for {} ({}): {}.crt, {}.key\n",
                                   user_name, j.value("groups", json::array()).dump(), user_out,
                                   user_out);
                           }
                           return r;
                       }),
                       json_renderer([&](const json& j) {
                           rendered r;
                           if (auto summary = write_user_files(j, user_out, r.error)) {
                               r.out = json_text(*summary).out;
                           }
                           return r;
                       })};
    });
    uissue->add_option("NAME", user_name, "user name (certificate CN)")->required();
    uissue->add_option("--group", user_groups, "user group (subject OU); repeat for several")
        ->required();
    uissue->add_option("--days", user_days, "validity in days (default 30)");
    uissue->add_option("--out", user_out, "write OUT.crt and OUT.key (0600)")->required();

    completion = app.add_subcommand("completion", "print a shell completion script");
    completion->add_option("SHELL", completion_shell, "the shell")
        ->check(CLI::IsMember({"bash"}))
        ->required();
    man = app.add_subcommand("man", "print this manual page (roff, for man -l -)");

    // The completion script's question to the relay (docs.hh k_names_command); hidden.
    auto* names_cmd =
        leaf(&app, std::string(k_names_command), "names of KIND on the relay, one a line",
             [&](std::string&) { return names_command(find_name_list(names_kind), tenant); });
    names_cmd->group("");
    std::vector<std::string> kinds;
    for (const auto& l : k_name_lists) {
        kinds.emplace_back(l.kind);
    }
    names_cmd->add_option("KIND", names_kind, "what to list")
        ->check(CLI::IsMember(kinds))
        ->required();
}

command_line::command_line() : _impl(std::make_unique<impl>()) {}
command_line::~command_line() = default;

const CLI::App& command_line::app() const {
    return _impl->app;
}

const value_names& command_line::names() const {
    return _impl->names;
}

int command_line::run(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
    impl& s = *_impl;
    try {
        s.app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // --help prints and exits 0; everything else is a usage error.
        if (e.get_exit_code() == 0 || !json_requested(argc, argv)) {
            int code = s.app.exit(e, out, err);
            return code == 0 ? k_exit_ok : k_exit_usage;
        }
        err << format_error(e.what(), 0, true);
        return k_exit_usage;
    }

    if (s.completion->parsed() || s.man->parsed()) {
        std::string doc = s.completion->parsed() ? bash_completion(s.app, s.names)
                                                 : man_page(s.app, APPRELAY_VERSION);
        if (s.json_output) {
            json j = s.completion->parsed() ? json{{"shell", s.completion_shell}, {"script", doc}}
                                            : json{{"man", doc}};
            doc = json_text(j).out;
        }
        out << doc << std::flush;
        return k_exit_ok;
    }

    endpoint ep;
    if (auto why = resolve_endpoint(s.socket_path, s.url, s.token, ep); !why.empty()) {
        err << format_error(why, 0, s.json_output);
        return k_exit_usage;
    }
    for (auto& [sub, build] : s.leaves) {
        if (!sub->parsed()) {
            continue;
        }
        std::string usage_error;
        command cmd = build(usage_error);
        if (!usage_error.empty()) {
            err << format_error(usage_error, 0, s.json_output);
            return k_exit_usage;
        }
        std::string o;
        std::string e;
        int rc =
            execute(admin_client(ep), cmd.call, cmd.render, s.json_output, o, e, cmd.json_render);
        out << o << std::flush;
        err << e;
        return rc;
    }
    // require_subcommand(1) on every inner node leaves no way here but a tree without a leaf.
    err << format_error("no command given", 0, s.json_output);
    return k_exit_usage;
}

} // namespace apprelay::ctl
