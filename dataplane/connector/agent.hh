#pragma once
// The connector agent: dials the relay (outbound only), keeps one tunnel per relay worker, takes
// OPENs, connects to backends and pumps bytes both ways with per-stream credit. One io_uring loop
// per thread; with a core map, one pinned loop per cpu, each owning the tunnels of its share of
// the relay's workers (agent.cc, agent_group).
#include "dataplane/base/counters.hh"
#include "dataplane/base/result.hh"

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace apprelay::connector {

#define APPRELAY_CONNECTOR_COUNTERS(X)                                                             \
    X(tunnels_connected, "tunnels set up (HELLO_ACK received)")                                    \
    X(tunnel_failures, "tunnel connects, handshakes or sessions that failed")                      \
    X(tunnels_misplaced, "tunnels that landed on another relay worker than dialed (dialed again)") \
    X(tunnels_up, "gauge: tunnels up")                                                             \
    X(streams_opened, "OPENs accepted (backend connected)")                                        \
    X(streams_refused, "OPENs refused (backend refused or unreachable, bad target)")               \
    X(streams_not_allowed, "OPENs refused: target not in this connector's configuration")          \
    X(configs_received, "CONFIG frames received from the relay")                                   \
    X(streams_closed, "streams finished cleanly")                                                  \
    X(streams_reset, "streams reset (either side)")                                                \
    X(bytes_to_backend, "bytes written to backends")                                               \
    X(bytes_from_backend, "bytes read from backends")                                              \
    X(protocol_errors, "tunnels closed for a protocol violation by the relay")                     \
    X(relay_goaways, "GOAWAYs from the relay (it is draining or stopping)")

APPRELAY_DECLARE_COUNTERS(connector_counter, APPRELAY_CONNECTOR_COUNTERS)

struct agent_options {
    std::string relay; // HOST:PORT of the relay's tunnel listener
    std::string server_name = "relay.apprelay.test";
    std::string ca_path;   // relay CA
    std::string cert_path; // this connector's certificate
    std::string key_path;
    std::string id; // this connector's id (must match the relay's record)
    std::string version = APPRELAY_VERSION;
    std::string stats_file;
    std::string metrics_listen;      // HOST:PORT for GET /metrics and /status (empty: none)
    uint32_t backoff_base_ms = 1000; // full jitter, doubling up to the cap
    uint32_t backoff_cap_ms = 32000;
    uint32_t give_up_after_ms = 600'000; // exit non-zero after this long with no tunnel
    uint32_t drain_deadline_ms = 30'000; // on stop: GOAWAY, streams finish, then exit
    // Completion coalescing (io::uring_loop::set_coalescing): after waking for one event, wait
    // up to this long for more, so one pass serves many streams. 0 = off (the default).
    uint32_t io_coalesce_us = 0;
    // `control=C,workers=LIST[,shared=1]` (the relay's grammar): one pinned loop per worker cpu,
    // the relay's tunnels spread over them; the control thread (stats, /metrics) on C. Empty:
    // one loop on the calling thread, unpinned.
    std::string core_map;
    // A fleet's relays (from enrollment; refreshed by CONFIG): with two or more, `run` keeps
    // tunnels to two relay hosts (fleet.hh) instead of to `relay` alone.
    std::vector<std::string> relays;
};

// Runs until stop, then drains (GOAWAY to the relay, streams in flight finish, deadline); returns
// the exit code (2 = start-up error, 3 = gave up reaching the relay, 4 = refused by the relay:
// version older than its minimum).
int run_agent(const agent_options& opts, const std::atomic<bool>& stop);

// Prometheus text of the connector counters (values in connector_counter order); `loops` > 0
// adds the loop count of a multi-loop connector.
std::string metrics_for(const std::vector<uint64_t>& values, uint64_t config_version,
                        std::size_t loops);
// Writes `s` to `path` through a temporary file and a rename (readers never see half a file).
void write_file_atomically(const std::string& path, const std::string& s);

} // namespace apprelay::connector
