#pragma once
// The relay process: control thread (this thread) + pinned data-plane workers.
#include <atomic>
#include <string>

namespace apprelay::control {

struct relay_options {
    std::string config_path;
    std::string core_map;   // overrides the config file's
    std::string ready_file; // JSON {pid,user_port,tunnel_port,workers}, written once listening
    std::string stats_file; // JSON counters, rewritten every 200 ms
};

// Set by main's signal handlers, read by the control thread.
struct relay_signals {
    std::atomic<bool> stop{false};   // SIGTERM, SIGINT: drain and exit
    std::atomic<bool> reload{false}; // SIGHUP: re-read the settings file (control/reload.hh)
};

// Runs until signals.stop becomes true. Returns the process exit code; on a start-up error
// prints one line naming the problem and returns 2.
int run_relay(const relay_options& opts, relay_signals& signals);

} // namespace apprelay::control
