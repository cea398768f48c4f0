#pragma once
// SIGHUP: which changes of a re-read settings file the running relay takes.
//
// Live: the [limits] keys the workers read from the published snapshot each time they use them
// (an accept, a handshake timer, an OPEN, a stream's idle timer, a drain); a new snapshot with
// them reaches every worker at its next pass. Everything else is bound at start and needs a
// restart: listeners and the I/O backend, state directory and store, core map, admin API, TLS
// contexts and ticket keys, DPDK, fleet presence, connector versions, and the [limits] keys a
// tunnel agrees with its connector in HELLO_ACK when it is accepted (max_frame, initial_window,
// max_streams_per_tunnel, ping_interval_ms, and ping_timeout_ms, which is checked against the
// interval): a tunnel's stream mux takes them at accept, so a live change could make the
// HELLO_ACK disagree with the mux it was built with.
#include "control/settings.hh"

#include <string>
#include <vector>

namespace apprelay::control {

struct setting_change {
    std::string key; // "limits.idle_timeout_ms"
    std::string from;
    std::string to;
};

struct reload_plan {
    std::vector<setting_change> live;    // taken now
    std::vector<setting_change> restart; // taken at the next start
    // `running`'s limits with the live changes applied (values as in the file: 0 for a derived
    // max_user_connections).
    relay::relay_limits limits;
};

// `running` and `next` as load_settings returned them (before start-up derives anything).
reload_plan plan_reload(const relay_settings& running, const relay_settings& next);

// "limits.idle_timeout_ms=3600000->5000 limits.open_retries=2->3"; secrets show as "(changed)".
std::string describe(const std::vector<setting_change>& changes);

} // namespace apprelay::control
