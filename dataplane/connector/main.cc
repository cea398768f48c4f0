// apprelay-connector: argument parsing and signal wiring only (agent.cc does the work).
#include "dataplane/base/log.hh"
#include "dataplane/connector/agent.hh"

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>

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
    run->add_option("--relay", o.relay, "relay tunnel listener HOST:PORT")->required();
    run->add_option("--cert", o.cert_path, "connector certificate (PEM)")->required();
    run->add_option("--key", o.key_path, "connector private key (PEM)")->required();
    run->add_option("--ca", o.ca_path, "relay CA certificate (PEM)")->required();
    run->add_option("--id", o.id, "connector id (as registered at the relay)")->required();
    run->add_option("--server-name", o.server_name, "relay certificate name to verify");
    run->add_option("--stats-file", o.stats_file, "rewrite counters JSON every 200 ms");
    run->add_option("--backoff-base-ms", o.backoff_base_ms, "reconnect backoff base");
    run->add_option("--backoff-cap-ms", o.backoff_cap_ms, "reconnect backoff cap");
    run->add_option("--log-level", level_name, "debug|info|warn|error")
        ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
    app.set_version_flag("--version", APPRELAY_VERSION);
    CLI11_PARSE(app, argc, argv);
    using apprelay::log::level;
    apprelay::log::set_level(level_name == "debug"   ? level::debug
                             : level_name == "warn"  ? level::warn
                             : level_name == "error" ? level::error
                                                     : level::info);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    return apprelay::connector::run_agent(o, g_stop);
}
