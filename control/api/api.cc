#include "control/api/api.hh"

#include "control/admin/status_page_html.hh"
#include "control/store/rules.hh"
#include "dataplane/relay/snapshot.hh"
#include "tls/ca.hh"

#include <algorithm>
#include <exception>
#include <initializer_list>
#include <map>
#include <optional>
#include <string_view>
#include <vector>

namespace apprelay::control {

namespace {

using json = nlohmann::json;

constexpr int64_t k_default_token_ttl_s = 3600; // API.md: POST tokens, ttl default

http_response reply(int status, const json& body) {
    http_response r;
    r.status = status;
    // Store strings are validated, but never let a stray byte turn a reply into a 500.
    r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
    return r;
}

http_response fail(int status, const std::string& message) {
    return reply(status, json{{"error", message}});
}

http_response fail(const store_error& e) {
    return fail(http_status_of(e.k), e.message);
}

// A parsed JSON request body with typed, checked field access. The first problem is kept in
// `problem`; callers read every field, then check it once.
class body {
public:
    // Parses `text` (empty = {}) and refuses fields outside `allowed`.
    body(const std::string& text, std::initializer_list<std::string_view> allowed) {
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
            _j = json::object();
            return;
        }
        try {
            _j = json::parse(text);
        } catch (const json::parse_error& e) {
            problem = "malformed JSON at byte " + std::to_string(e.byte) + ": " + e.what();
            return;
        } catch (const json::exception& e) {
            // Not only syntax: a number beyond a double's range (1e999) throws out_of_range 406.
            problem = std::string("malformed JSON: ") + e.what();
            return;
        }
        if (!_j.is_object()) {
            problem = "request body must be a JSON object";
            return;
        }
        std::vector<std::string> unknown;
        for (const auto& [k, v] : _j.items()) {
            if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) {
                unknown.push_back(k);
            }
        }
        if (!unknown.empty()) {
            std::string names;
            for (const auto& u : unknown) {
                names += (names.empty() ? "'" : ", '") + u + "'";
            }
            problem = (unknown.size() == 1 ? "unknown field " : "unknown fields ") + names;
        }
    }

    std::optional<std::string> str(const char* key) {
        if (!present(key)) {
            return std::nullopt;
        }
        if (!_j[key].is_string()) {
            return wrong(key, "a string");
        }
        return _j[key].get<std::string>();
    }
    std::optional<int64_t> integer(const char* key) {
        if (!present(key)) {
            return std::nullopt;
        }
        if (!_j[key].is_number_integer()) {
            wrong(key, "an integer");
            return std::nullopt;
        }
        return _j[key].get<int64_t>();
    }
    std::optional<std::vector<std::string>> strings(const char* key) {
        if (!present(key)) {
            return std::nullopt;
        }
        const auto& v = _j[key];
        if (!v.is_array() ||
            !std::all_of(v.begin(), v.end(), [](const json& e) { return e.is_string(); })) {
            wrong(key, "an array of strings");
            return std::nullopt;
        }
        return v.get<std::vector<std::string>>();
    }
    std::string required_str(const char* key) {
        auto v = str(key);
        if (!v && !problem && !present(key)) {
            problem = std::string("missing field '") + key + "'";
        }
        return v.value_or("");
    }

    std::optional<std::string> problem;

private:
    bool present(const char* key) const {
        return !problem && _j.is_object() && _j.contains(key) && !_j[key].is_null();
    }
    std::nullopt_t wrong(const char* key, const char* type) {
        problem = std::string("field '") + key + "' must be " + type;
        return std::nullopt;
    }

    json _j;
};

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start < path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string::npos) {
            end = path.size();
        }
        if (end > start) {
            out.push_back(path.substr(start, end - start));
        }
        start = end + 1;
    }
    return out;
}

std::string backend_of(const app& a) {
    bool v6 = a.backend_host.find(':') != std::string::npos;
    return (v6 ? "[" + a.backend_host + "]" : a.backend_host) + ":" +
           std::to_string(a.backend_port);
}

json app_json(const app& a) {
    return json{{"name", a.name},
                {"hostname", a.hostname},
                {"listen_port", a.listen_port},
                {"backend", backend_of(a)},
                {"group", a.group},
                {"access", to_string(a.access)},
                {"allowed_user_groups", a.allowed_user_groups},
                {"idle_timeout_ms", a.idle_timeout_ms}};
}

// POST and PATCH apps share the fields; only POST names the app.
std::optional<app_fields> read_app_fields(body& b) {
    app_fields f;
    f.hostname = b.str("hostname");
    f.listen_port = b.integer("listen_port");
    f.backend = b.str("backend");
    f.group = b.str("group");
    auto access = b.str("access");
    f.allowed_user_groups = b.strings("allowed_user_groups");
    f.cert_pem = b.str("cert_pem");
    f.key_pem = b.str("key_pem");
    f.idle_timeout_ms = b.integer("idle_timeout_ms");
    if (b.problem) {
        return std::nullopt;
    }
    if (access) {
        if (*access == "passthrough") {
            f.access = access_mode::passthrough;
        } else if (*access == "user-cert") {
            f.access = access_mode::user_cert;
        } else {
            b.problem =
                "field 'access' must be 'passthrough' or 'user-cert', not '" + *access + "'";
            return std::nullopt;
        }
    }
    return f;
}

// The status page (control/admin/status_page.html) carries no data: its script fetches
// /v1/overview. The policy allows only the page's own inline script and style and requests
// back to this listener; nosniff and no-store keep browsers from guessing or caching it.
http_response status_page() {
    http_response r;
    r.content_type = "text/html; charset=utf-8";
    r.body = std::string(k_status_page_html);
    r.headers = {{"Content-Security-Policy",
                  "default-src 'none'; script-src 'self' 'unsafe-inline'; "
                  "style-src 'unsafe-inline'; connect-src 'self'; img-src data:"},
                 {"X-Content-Type-Options", "nosniff"},
                 {"Cache-Control", "no-store"}};
    return r;
}

std::optional<bool> query_flag(const http_request& r, std::string_view key, std::string* problem) {
    for (const auto& [k, v] : r.query) {
        if (k != key) {
            continue;
        }
        if (v == "1" || v == "true") {
            return true;
        }
        if (v == "0" || v == "false" || v.empty()) {
            return false;
        }
        *problem = "query parameter '" + std::string(key) + "' must be 1 or 0, not '" + v + "'";
        return std::nullopt;
    }
    return false;
}

} // namespace

http_response admin_api::handle(const http_request& r, const live_view& live) {
    try {
        return route(r, live);
    } catch (const std::exception& e) {
        return fail(500, std::string("internal error: ") + e.what());
    } catch (...) {
        return fail(500, "internal error");
    }
}

// Everything the status page shows, for all tenants, in one read: per tenant its groups with
// their connectors and apps, and the alerts an operator acts on (API.md, GET /v1/overview).
http_response admin_api::overview(const live_view& live) {
    const json& st = live.relay_status.is_object() ? live.relay_status : json::object();
    const std::string min_version = st.value("min_connector_version", std::string());
    auto ts = _store.tenants();
    if (!ts) {
        return fail(ts.err());
    }
    json tenants = json::array();
    json alerts = json::array();
    auto alert = [&](const char* kind, const std::string& tenant, json fields, std::string msg) {
        fields["kind"] = kind;
        fields["tenant"] = tenant;
        fields["message"] = std::move(msg);
        alerts.push_back(std::move(fields));
    };
    for (const auto& t : ts.value()) {
        auto gs = _store.groups(t.name);
        if (!gs) {
            return fail(gs.err());
        }
        auto cs = _store.connectors(t.name);
        if (!cs) {
            return fail(cs.err());
        }
        auto as = _store.apps(t.name);
        if (!as) {
            return fail(as.err());
        }
        const std::string where = " of tenant " + t.name;
        json groups = json::array();
        std::map<std::string, uint64_t> active_in;
        for (const auto& g : gs.value()) {
            json conns = json::array();
            uint64_t active = 0;
            for (const auto& c : cs.value()) {
                if (c.group != g.name) {
                    continue;
                }
                const uint32_t tunnels = live.tunnels_of ? live.tunnels_of(c.id) : 0u;
                const uint32_t draining = live.draining_of ? live.draining_of(c.id) : 0u;
                // Draining: the connector is stopping; its last tunnels carry streams in flight
                // but take no new ones, so it does not count as active.
                std::string status = tunnels == 0 && draining > 0
                                         ? std::string("draining")
                                         : std::string(to_string(c.status));
                active += status == "active" ? 1 : 0;
                const bool outdated = !min_version.empty() && !c.version.empty() &&
                                      relay::compare_versions(c.version, min_version) < 0;
                conns.push_back({{"id", c.id},
                                 {"name", c.name},
                                 {"version", c.version},
                                 {"status", status},
                                 {"tunnels", tunnels},
                                 {"last_seen", c.last_seen},
                                 {"outdated", outdated}});
                json update = live.update_of ? live.update_of(c.id) : json();
                if (!update.is_null()) {
                    conns.back()["update"] = update;
                    if (update.value("stuck", false)) {
                        alert("update_stuck", t.name,
                              {{"group", g.name}, {"connector", c.id},
                               {"version", update.value("version", "")}},
                              "connector " + c.name + " (" + c.id + ") in group " + g.name +
                                  where + " has had no tunnel since it began updating to " +
                                  update.value("version", "") +
                                  "; the group's other connectors wait for their turn");
                    }
                }
                if (outdated) {
                    alert("connector_outdated", t.name,
                          {{"group", g.name}, {"connector", c.id}, {"version", c.version}},
                          "connector " + c.name + " (" + c.id + ") in group " + g.name + where +
                              " runs version " + c.version + ", below the minimum " + min_version);
                }
            }
            json apps = json::array();
            for (const auto& a : as.value()) {
                if (a.group == g.name) {
                    apps.push_back(a.name);
                }
            }
            active_in[g.name] = active;
            // An empty group (no connector, no app) serves nobody: nothing to warn about.
            if (active < 2 && (!conns.empty() || !apps.empty())) {
                alert("group_not_redundant", t.name, {{"group", g.name}, {"active", active}},
                      "group " + g.name + where + " has " + std::to_string(active) +
                          " active connector" + (active == 1 ? "" : "s") +
                          " (fewer than 2: no failover)");
            }
            groups.push_back({{"name", g.name},
                              {"region", g.region},
                              {"active", active},
                              {"connectors", std::move(conns)},
                              {"apps", std::move(apps)}});
        }
        json apps = json::array();
        for (const auto& a : as.value()) {
            apps.push_back({{"name", a.name},
                            {"hostname", a.hostname},
                            {"listen_port", a.listen_port},
                            {"group", a.group}});
            if (active_in[a.group] == 0) {
                alert("app_unreachable", t.name, {{"app", a.name}, {"group", a.group}},
                      "app " + a.name + where + " is unreachable: its group " + a.group +
                          " has no active connector");
            }
        }
        tenants.push_back(
            {{"name", t.name}, {"groups", std::move(groups)}, {"apps", std::move(apps)}});
    }
    json out = {{"now", live.now}, {"tenants", std::move(tenants)}, {"alerts", std::move(alerts)}};
    for (const char* k : {"version", "config_version", "config_stale", "latest_connector_version",
                          "min_connector_version"}) {
        if (st.contains(k)) {
            out[k] = st[k];
        }
    }
    return reply(200, out);
}

http_response admin_api::route(const http_request& r, const live_view& live) {
    const auto seg = split_path(r.path);
    const std::string& m = r.method;
    auto not_allowed = [&](std::string_view allowed) {
        return fail(405, "method " + m + " not allowed on " + r.path +
                             " (allowed: " + std::string(allowed) + ")");
    };
    auto with_version = [](json j, uint64_t v) {
        j["config_version"] = v;
        return j;
    };

    if (seg == std::vector<std::string>{"metrics"}) {
        if (m != "GET") {
            return not_allowed("GET");
        }
        http_response out;
        out.content_type = "text/plain; version=0.0.4";
        out.body = live.render_metrics ? live.render_metrics() : std::string();
        return out;
    }
    if (seg.size() == 2 && seg[0] == "v1" && seg[1] == "status") {
        if (m != "GET") {
            return not_allowed("GET");
        }
        auto v = _store.config_version();
        auto n = _store.count_connectors();
        if (!v) {
            return fail(v.err());
        }
        if (!n) {
            return fail(n.err());
        }
        json j = live.relay_status.is_object() ? live.relay_status : json::object();
        j["config_version"] = v.value();
        j["connectors"] = {{"active", n->active}, {"inactive", n->inactive}};
        return reply(200, j);
    }
    if (seg.empty()) {
        if (m != "GET") {
            return not_allowed("GET");
        }
        return status_page();
    }
    if (seg.size() == 2 && seg[0] == "v1" && seg[1] == "overview") {
        if (m != "GET") {
            return not_allowed("GET");
        }
        return overview(live);
    }
    if (seg.size() == 2 && seg[0] == "v1" && seg[1] == "relays") {
        if (m != "GET") {
            return not_allowed("GET");
        }
        auto rs = _store.relays();
        if (!rs) {
            return fail(rs.err());
        }
        auto v = _store.config_version();
        json list = json::array();
        for (const auto& f : rs.value()) {
            json item = {{"node", f.node},
                         {"address", f.address},
                         {"region", f.region},
                         {"draining", f.draining || f.drain_requested},
                         {"started", f.started},
                         {"tunnels", f.tunnels},
                         {"config_version", f.config_version},
                         {"stale", f.stale}};
            if (v) {
                item["versions_behind"] =
                    v.value() > f.config_version ? v.value() - f.config_version : 0;
            }
            list.push_back(std::move(item));
        }
        return reply(200, {{"relays", list}});
    }
    if (seg.size() == 4 && seg[0] == "v1" && seg[1] == "relays" && seg[3] == "drain") {
        if (m != "POST") {
            return not_allowed("POST");
        }
        auto v = _store.request_drain(seg[2]);
        if (!v) {
            return fail(v.err());
        }
        return reply(202, with_version({{"node", seg[2]}, {"draining", true}}, v.value()));
    }
    if (seg.size() == 2 && seg[0] == "v1" && seg[1] == "tenants") {
        if (m != "GET") {
            return not_allowed("GET");
        }
        auto ts = _store.tenants();
        if (!ts) {
            return fail(ts.err());
        }
        json list = json::array();
        for (const auto& t : ts.value()) {
            list.push_back({{"name", t.name}, {"ca_fingerprint", t.ca_fingerprint}});
        }
        return reply(200, {{"tenants", list}});
    }
    if (seg.size() < 4 || seg.size() > 5 || seg[0] != "v1" || seg[1] != "tenants") {
        return fail(404, "no such endpoint: " + m + " " + r.path);
    }
    const std::string& tenant = seg[2];
    const std::string& kind = seg[3];
    const bool item = seg.size() == 5;
    const std::string name = item ? seg[4] : std::string();

    if (kind == "ca" && !item) {
        if (m != "GET") {
            return not_allowed("GET");
        }
        auto t = _store.get_tenant(tenant);
        if (!t) {
            return fail(t.err());
        }
        return reply(200, {{"ca_pem", t->ca_cert_pem}, {"ca_fingerprint", t->ca_fingerprint}});
    }

    if (kind == "users" && !item) {
        // User certificate for trials and tests: issued by the tenant CA, subject OU = the user's
        // groups (what user-cert apps check). Not stored: the relay trusts the CA, not a list.
        if (m != "POST") {
            return not_allowed("POST");
        }
        body b(r.body, {"name", "groups", "days"});
        auto user = b.str("name");
        auto groups = b.strings("groups");
        int64_t days = b.integer("days").value_or(30);
        if (b.problem) {
            return fail(400, *b.problem);
        }
        // RFC 5280 appendix A: CN and OU values are at most 64 characters (OpenSSL refuses longer
        // ones); a NUL would cut the value short where OpenSSL reads it as a C string.
        if (!user || user->empty() || user->size() > 64 || !rules::printable(*user)) {
            return fail(400, "name: required, 1-64 printable characters");
        }
        if (!groups || groups->empty()) {
            return fail(400, "groups: at least one user group is required");
        }
        for (const auto& g : *groups) {
            if (g.empty() || g.size() > 64 || !rules::printable(g)) {
                return fail(400, "groups: each user group is 1-64 printable characters");
            }
        }
        if (days < 1 || days > 825) {
            return fail(400, "days: must be 1..825");
        }
        auto t = _store.get_tenant(tenant);
        if (!t) {
            return fail(t.err());
        }
        tls::leaf_options lo;
        lo.common_name = *user;
        lo.server = false;
        lo.client = true;
        lo.days = int(days);
        lo.organizational_units = *groups;
        std::string why;
        auto cert = tls::issue_leaf({t->ca_cert_pem, t->ca_key_pem}, lo, &why);
        if (!cert) {
            return fail(500, "cannot issue user certificate: " + why);
        }
        return reply(201, {{"name", *user},
                           {"groups", *groups},
                           {"cert_pem", cert->cert_pem},
                           {"key_pem", cert->key_pem},
                           {"ca_pem", t->ca_cert_pem}});
    }

    if (kind == "groups" && !item) {
        if (m == "GET") {
            auto gs = _store.groups(tenant);
            if (!gs) {
                return fail(gs.err());
            }
            auto cs = _store.connectors(tenant);
            auto as = _store.apps(tenant);
            if (!cs) {
                return fail(cs.err());
            }
            if (!as) {
                return fail(as.err());
            }
            json list = json::array();
            for (const auto& g : gs.value()) {
                uint64_t total = 0;
                uint64_t active = 0;
                for (const auto& c : cs.value()) {
                    if (c.group == g.name) {
                        ++total;
                        active += c.status == connector_status::active ? 1 : 0;
                    }
                }
                json apps = json::array();
                for (const auto& a : as.value()) {
                    if (a.group == g.name) {
                        apps.push_back(a.name);
                    }
                }
                list.push_back({{"name", g.name},
                                {"region", g.region},
                                {"connectors", total},
                                {"active", active},
                                {"apps", apps}});
            }
            return reply(200, {{"groups", list}});
        }
        if (m == "POST") {
            body b(r.body, {"name", "region"});
            std::string gname = b.required_str("name");
            std::string region = b.str("region").value_or("");
            if (b.problem) {
                return fail(400, *b.problem);
            }
            auto g = _store.create_group(tenant, gname, region, live.now);
            if (!g) {
                return fail(g.err());
            }
            json gj{{"name", g->value.name},
                    {"region", g->value.region},
                    {"connectors", 0},
                    {"active", 0},
                    {"apps", json::array()}};
            return reply(201, {{"group", gj}, {"config_version", g->config_version}});
        }
        return not_allowed("GET, POST");
    }
    if (kind == "groups" && item) {
        if (m == "PATCH") {
            body b(r.body, {"name"});
            std::string new_name = b.required_str("name");
            if (b.problem) {
                return fail(400, *b.problem);
            }
            auto v = _store.rename_group(tenant, name, new_name);
            if (!v) {
                return fail(v.err());
            }
            return reply(200, with_version({{"group", new_name}}, v.value()));
        }
        if (m == "DELETE") {
            std::string problem;
            auto force = query_flag(r, "force", &problem);
            if (!force) {
                return fail(400, problem);
            }
            auto d = _store.delete_group(tenant, name, *force);
            if (!d) {
                return fail(d.err());
            }
            return reply(200, with_version({{"moved_connectors", d->value}}, d->config_version));
        }
        return not_allowed("PATCH, DELETE");
    }

    if (kind == "connectors" && !item) {
        if (m != "GET") {
            return not_allowed("GET");
        }
        auto cs = _store.connectors(tenant);
        if (!cs) {
            return fail(cs.err());
        }
        json list = json::array();
        for (const auto& c : cs.value()) {
            json item = {{"id", c.id},
                         {"name", c.name},
                         {"group", c.group},
                         {"version", c.version},
                         {"status", to_string(c.status)},
                         {"tunnels", live.tunnels_of ? live.tunnels_of(c.id) : 0u},
                         {"fingerprint", c.fingerprint},
                         {"first_seen", c.first_seen},
                         {"last_seen", c.last_seen}};
            if (!c.relays.empty()) {
                item["relays"] = c.relays; // where its tunnels land, across the fleet
            }
            list.push_back(std::move(item));
        }
        // The relay advertises the latest connector version (DESIGN.md); shown beside the list.
        json out = {{"connectors", list}};
        for (const char* k : {"latest_connector_version", "min_connector_version"}) {
            if (live.relay_status.is_object() && live.relay_status.contains(k)) {
                out[k] = live.relay_status[k];
            }
        }
        return reply(200, out);
    }
    if (kind == "connectors" && item) {
        if (m == "PATCH") {
            body b(r.body, {"group"});
            std::string group = b.required_str("group");
            if (b.problem) {
                return fail(400, *b.problem);
            }
            auto v = _store.move_connector(tenant, name, group);
            if (!v) {
                return fail(v.err());
            }
            return reply(200, with_version({{"id", name}, {"group", group}}, v.value()));
        }
        if (m == "DELETE") {
            auto v = _store.delete_connector(tenant, name);
            if (!v) {
                return fail(v.err());
            }
            return reply(200, with_version({{"id", name}, {"revoked", true}}, v.value()));
        }
        return not_allowed("PATCH, DELETE");
    }

    if (kind == "apps" && !item) {
        if (m == "GET") {
            auto as = _store.apps(tenant);
            if (!as) {
                return fail(as.err());
            }
            json list = json::array();
            for (const auto& a : as.value()) {
                list.push_back(app_json(a));
            }
            return reply(200, {{"apps", list}});
        }
        if (m == "POST") {
            body b(r.body, {"name", "hostname", "listen_port", "backend", "group", "access",
                            "allowed_user_groups", "cert_pem", "key_pem", "idle_timeout_ms"});
            std::string aname = b.required_str("name");
            if (!b.problem && !b.str("backend")) {
                b.problem = "missing field 'backend'";
            }
            auto f = read_app_fields(b);
            if (b.problem) {
                return fail(400, *b.problem);
            }
            auto a = _store.create_app(tenant, aname, *f, live.now);
            if (!a) {
                return fail(a.err());
            }
            return reply(201, {{"app", app_json(a->value)}, {"config_version", a->config_version}});
        }
        return not_allowed("GET, POST");
    }
    if (kind == "apps" && item) {
        if (m == "PATCH") {
            body b(r.body, {"hostname", "listen_port", "backend", "group", "access",
                            "allowed_user_groups", "cert_pem", "key_pem", "idle_timeout_ms"});
            auto f = read_app_fields(b);
            if (b.problem) {
                return fail(400, *b.problem);
            }
            auto a = _store.update_app(tenant, name, *f);
            if (!a) {
                return fail(a.err());
            }
            return reply(200, {{"app", app_json(a->value)}, {"config_version", a->config_version}});
        }
        if (m == "DELETE") {
            auto v = _store.delete_app(tenant, name);
            if (!v) {
                return fail(v.err());
            }
            return reply(200, with_version({{"app", name}}, v.value()));
        }
        return not_allowed("PATCH, DELETE");
    }

    if (kind == "tokens" && !item) {
        if (m == "GET") {
            auto ts = _store.tokens(tenant, live.now);
            if (!ts) {
                return fail(ts.err());
            }
            json list = json::array();
            for (const auto& t : ts.value()) {
                list.push_back({{"id", t.id},
                                {"group", t.group},
                                {"created_at", t.created_at},
                                {"expires_at", t.expires_at},
                                {"state", to_string(t.state)}});
            }
            return reply(200, {{"tokens", list}});
        }
        if (m == "POST") {
            body b(r.body, {"group", "ttl_s"});
            std::string group = b.str("group").value_or(std::string(k_default_group));
            int64_t ttl = b.integer("ttl_s").value_or(k_default_token_ttl_s);
            if (b.problem) {
                return fail(400, *b.problem);
            }
            if (ttl > live.token_ttl_max_s) {
                return fail(400, "ttl_s " + std::to_string(ttl) + " exceeds the maximum of " +
                                     std::to_string(live.token_ttl_max_s));
            }
            auto t = _store.create_token(tenant, group, ttl, live.now);
            if (!t) {
                return fail(t.err());
            }
            return reply(201, {{"id", t->value.id},
                               {"token", t->value.token},
                               {"group", t->value.group},
                               {"expires_at", t->value.expires_at},
                               {"config_version", t->config_version}});
        }
        return not_allowed("GET, POST");
    }
    if (kind == "tokens" && item) {
        if (m != "DELETE") {
            return not_allowed("DELETE");
        }
        auto v = _store.revoke_token(tenant, name);
        if (!v) {
            return fail(v.err());
        }
        return reply(200, with_version({{"id", name}, {"state", "revoked"}}, v.value()));
    }
    return fail(404, "no such endpoint: " + m + " " + r.path);
}

} // namespace apprelay::control
