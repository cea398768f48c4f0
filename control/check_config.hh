#pragma once
// `apprelay --check-config FILE`: what start-up checks about a settings file without side
// effects — the parser with every key's bounds and cross-checks (control/settings.cc) and the
// core map against this machine's cpus — with nothing started, bound or written. The checks
// that need the store, the listeners or DPDK's EAL happen only at start.
#include <string>

namespace apprelay::control {

struct config_check {
    int exit_code = 0; // 0 valid, 1 invalid, 2 unreadable
    std::string line;  // "FILE: ok" or "FILE: limits.idle_timeout_ms: expected an integer in ..."
};

config_check check_config(const std::string& path);

} // namespace apprelay::control
