#pragma once
// A connector in a fleet: tunnels to K = min(N, 2) relay hosts at once, so that no single relay
// host's loss leaves the connector's group without a tunnel.
//
// Each relay the connector is attached to is one attachment: the single-relay agent (agent.hh)
// run on its own threads with the relay's address and a stats file of its own. The manager here
// chooses the relays (its group's region first, then any; distinct hosts), reads what every
// attachment learned (the fleet's relays and region from CONFIG, tunnels up, GOAWAYs), and:
//   - a relay that stops answering (its attachment gives up after a few seconds, or never gets
//     a tunnel) is replaced by another at once, with jittered backoff per relay; the connector
//     does not wait for the relay's presence lease to expire;
//   - a relay that drains (CONFIG says so, or it sent GOAWAY) is replaced by opening the new
//     attachment first; the old one is stopped (GOAWAY, streams finish) once the new one has a
//     tunnel, or when there is no other relay to go to, when the draining relay leaves.
// The connector's stats file sums the attachments' counters and lists each attachment.
#include "dataplane/connector/agent.hh"

#include <atomic>

namespace apprelay::connector {

// Runs until stop; returns an exit code like run_agent (3 = no relay reachable for
// give_up_after_ms, 4 = refused by a relay: version too old).
int run_fleet(const agent_options& opts, const std::atomic<bool>& stop);

} // namespace apprelay::connector
