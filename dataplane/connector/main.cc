// apprelay-connector: argument parsing and signal wiring only (agent.cc does the work).
#include "dataplane/base/log.hh"
#include "dataplane/connector/agent.hh"
#include "dataplane/connector/fleet.hh"
#include "dataplane/connector/enroll.hh"
#include "dataplane/connector/status_http.hh"

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) {
    g_stop.store(true);
}
} // namespace

int main(int argc, char** argv) {
    CLI::App app{"apprelay-connector: outbound-only connector agent"};
    app.require_subcommand(1);
    apprelay::connector::agent_options o;
    std::string level_name = "info";
    auto* run = app.add_subcommand("run", "keep tunnels to the relay and serve streams");
    std::string state_dir;
    auto* state_opt = run->add_option("--state-dir", state_dir,
                                      "directory written by `register` (replaces "
                                      "--relay --cert --key --ca --id --server-name)");
    // Without --state-dir every identity flag is needed; with it, none may be given.
    for (auto* opt : {run->add_option("--relay", o.relay, "relay tunnel listener HOST:PORT"),
                      run->add_option("--cert", o.cert_path, "connector certificate (PEM)"),
                      run->add_option("--key", o.key_path, "connector private key (PEM)"),
                      run->add_option("--ca", o.ca_path, "relay CA certificate (PEM)"),
                      run->add_option("--id", o.id, "connector id (as registered at the relay)")}) {
        opt->excludes(state_opt);
    }
    run->add_option("--server-name", o.server_name, "relay certificate name to verify")
        ->excludes(state_opt);
    run->add_option("--stats-file", o.stats_file, "rewrite counters JSON every 200 ms");
    run->add_option("--metrics-listen", o.metrics_listen,
                    "serve GET /metrics and /status on HOST:PORT (e.g. 127.0.0.1:9464)");
    run->add_option("--backoff-base-ms", o.backoff_base_ms, "reconnect backoff base");
    run->add_option("--backoff-cap-ms", o.backoff_cap_ms, "reconnect backoff cap");
    run->add_option("--io-coalesce-us", o.io_coalesce_us,
                    "after waking for one event, wait this long for more (0 = off)")
        ->check(CLI::Range(0u, 1000u));
    run->add_option("--core-map", o.core_map,
                    "control=CPU,workers=LIST[,shared=1]: one pinned loop per worker cpu");
    run->add_option("--log-level", level_name, "debug|info|warn|error")
        ->check(CLI::IsMember({"debug", "info", "warn", "error"}));

    apprelay::connector::register_options reg;
    auto* enroll = app.add_subcommand("register", "enroll with a relay using a one-time token");
    enroll->add_option("--relay", reg.relay, "relay enrollment listener HOST:PORT")->required();
    enroll->add_option("--token", reg.token, "enrollment token (art1....)")->required();
    enroll->add_option("--state-dir", reg.state_dir, "where to write key, certificates, relay")
        ->required();
    enroll->add_option("--name", reg.name, "connector name shown by the relay (default: hostname)");

    std::string status_addr = "127.0.0.1:9464";
    bool status_json = false;
    auto* status = app.add_subcommand("status", "show a running connector's state");
    status->add_option("--metrics", status_addr, "the connector's --metrics-listen HOST:PORT");
    status->add_flag("--json", status_json, "print the JSON as is");

    app.set_version_flag("--version", APPRELAY_VERSION);
    CLI11_PARSE(app, argc, argv);
    if (status->parsed()) {
        return apprelay::connector::print_status(status_addr, status_json);
    }
    if (enroll->parsed()) {
        std::string why;
        auto done = apprelay::connector::register_connector(reg, &why);
        if (!done.ok()) {
            std::fprintf(stderr, "%s\n", why.c_str());
            return done.code() == apprelay::errc::refused ? 1 : 2;
        }
        std::printf("registered connector %s in group %s of tenant %s\n",
                    done->connector_id.c_str(), done->group.c_str(), done->tenant.c_str());
        return 0;
    }
    if (!state_dir.empty()) {
        std::string why;
        auto st = apprelay::connector::load_state(state_dir, &why);
        if (!st.ok()) {
            std::fprintf(stderr, "%s\n", why.c_str());
            return 2;
        }
        o.relay = st->relay;
        o.relays = st->relays;
        o.server_name = st->server_name;
        o.cert_path = st->cert_path;
        o.key_path = st->key_path;
        o.ca_path = st->ca_path;
        o.id = st->connector_id;
    } else if (o.relay.empty() || o.cert_path.empty() || o.key_path.empty() || o.ca_path.empty() ||
               o.id.empty()) {
        std::fprintf(stderr, "run needs --state-dir, or all of --relay --cert --key --ca --id\n");
        return 2;
    }
    using apprelay::log::level;
    apprelay::log::set_level(level_name == "debug"   ? level::debug
                             : level_name == "warn"  ? level::warn
                             : level_name == "error" ? level::error
                                                     : level::info);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    if (o.relays.size() >= 2) {
        return apprelay::connector::run_fleet(o, g_stop); // tunnels to two relay hosts
    }
    return apprelay::connector::run_agent(o, g_stop);
}
