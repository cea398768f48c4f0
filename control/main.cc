// apprelay: argument parsing and signal wiring only; the relay itself is control/relay_host.cc.
#include "control/check_config.hh"
#include "control/relay_host.hh"
#include "dataplane/base/log.hh"

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>

namespace {
apprelay::control::relay_signals g_signals;
void on_stop(int) {
    g_signals.stop.store(true);
}
void on_reload(int) {
    g_signals.reload.store(true);
}
} // namespace

int main(int argc, char** argv) {
    CLI::App app{"apprelay: relay host for private applications (data plane + control thread)"};
    apprelay::control::relay_options opts;
    std::string level_name = "info";
    std::string check_path;
    auto* config = app.add_option("--config", opts.config_path, "relay configuration file (TOML)");
    app.add_option("--check-config", check_path,
                   "check a configuration file and exit: 0 valid, 1 invalid, 2 unreadable")
        ->excludes(config);
    app.add_option("--core-map", opts.core_map,
                   "cpus: control=C,workers=LIST[,shared=1] (overrides the config file)");
    app.add_option("--ready-file", opts.ready_file, "write {pid,user_port,tunnel_port} when ready");
    app.add_option("--stats-file", opts.stats_file, "rewrite counters JSON every 200 ms");
    app.add_option("--log-level", level_name, "debug|info|warn|error")
        ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
    app.set_version_flag("--version", APPRELAY_VERSION);
    try {
        app.parse(argc, argv);
        if (opts.config_path.empty() && check_path.empty()) {
            throw CLI::RequiredError("--config or --check-config");
        }
    } catch (const CLI::ParseError& e) {
        // Usage errors exit 2, like the relay's start-up errors; --help and --version exit 0.
        return app.exit(e) == 0 ? 0 : 2;
    }
    if (!check_path.empty()) {
        const auto c = apprelay::control::check_config(check_path);
        std::fprintf(c.exit_code == 0 ? stdout : stderr, "%s\n", c.line.c_str());
        return c.exit_code;
    }
    using apprelay::log::level;
    apprelay::log::set_level(level_name == "debug"   ? level::debug
                             : level_name == "warn"  ? level::warn
                             : level_name == "error" ? level::error
                                                     : level::info);
    std::signal(SIGTERM, on_stop);
    std::signal(SIGINT, on_stop);
    std::signal(SIGHUP, on_reload);
    std::signal(SIGPIPE, SIG_IGN);
    return apprelay::control::run_relay(opts, g_signals);
}
