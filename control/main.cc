// apprelay: argument parsing and signal wiring only; the relay itself is control/relay_host.cc.
#include "control/relay_host.hh"
#include "dataplane/base/log.hh"

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
    CLI::App app{"apprelay: relay host for private applications (data plane + control thread)"};
    apprelay::control::relay_options opts;
    std::string level_name = "info";
    app.add_option("--config", opts.config_path, "relay configuration file (TOML)")->required();
    app.add_option("--core-map", opts.core_map,
                   "cpus: control=C,workers=LIST[,shared=1] (overrides the config file)");
    app.add_option("--ready-file", opts.ready_file, "write {pid,user_port,tunnel_port} when ready");
    app.add_option("--stats-file", opts.stats_file, "rewrite counters JSON every 200 ms");
    app.add_option("--log-level", level_name, "debug|info|warn|error")
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
    return apprelay::control::run_relay(opts, g_stop);
}
