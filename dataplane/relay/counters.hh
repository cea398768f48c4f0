#pragma once
#include "dataplane/base/counters.hh"

namespace apprelay::relay {

// Per-worker relay counters; the control thread sums them for the stats file and /metrics.
#define APPRELAY_RELAY_COUNTERS(X)                                                                 \
    X(user_conns_accepted, "user TCP connections accepted")                                        \
    X(user_conns_throttled,                                                                        \
      "user connections closed at accept: their source spent its open or abort budget")           \
    X(user_conns_throttled_aborts, "... of them because the source's abort budget was spent")     \
    X(user_conns_refused_full,                                                                     \
      "user connections reset at accept: the worker's share of max_user_connections is open")     \
    X(user_conns_refused_source,                                                                   \
      "user connections reset at accept: their source has source_max_connections open")          \
    X(user_conns_refused_memory,                                                                   \
      "user connections reset at accept: the worker holds user_buffer_budget_mb of user bytes")   \
    X(user_buffered_bytes,                                                                         \
      "gauge: bytes held for users (TLS output to them, their input not yet carried on)")         \
    X(streams_idle_timeout, "streams cut: no byte moved either way for idle_timeout_ms")          \
    X(user_aborts_charged, "user aborts charged to their source (resets, failed handshakes)")     \
    X(sources_tracked, "gauge: source addresses with budget state on this worker")                \
    X(sources_untracked, "new sources admitted untracked: the source table was full")              \
    X(user_tls_failed, "user TLS handshakes that failed (garbage, plaintext, bad hello)")          \
    X(user_unknown_sni, "user handshakes refused: no application for the SNI")                     \
    X(user_handshake_timeouts, "user connections closed: TLS handshake not done in time")          \
    X(streams_opened, "streams opened towards a connector")                                        \
    X(streams_failed_no_connector, "user sessions refused: the app's group has no live tunnel")    \
    X(streams_forwarded, "user streams carried to a peer relay (this relay held no tunnel)")      \
    X(streams_forwarded_in, "streams a peer relay forwarded here (opened on this relay's tunnels)") \
    X(streams_failed_no_peer,                                                                      \
      "forwarded streams refused: no peer relay reachable or willing (clear refusal to the user)") \
    X(peer_link_failures, "peer relay connections that failed (connect, TLS, refusal, timeout)")  \
    X(peer_in_refused, "forwarded streams this relay refused (unknown app, no tunnel, bad header)") \
    X(tunnel_pending_opens_full,                                                                   \
      "new streams kept off a tunnel: max_pending_opens of its OPENs are unanswered")             \
    X(streams_failed_limit, "user sessions refused: tunnel stream limit")                          \
    X(streams_failed_backend, "streams refused by the connector (OPEN_FAIL)")                      \
    X(streams_failed_not_allowed,                                                                  \
      "user sessions refused: the app's access rule (user cert/group)")                            \
    X(streams_retried,                                                                             \
      "OPENs retried on another connector (failed before any byte reached the user)")              \
    X(streams_closed, "streams finished cleanly in both directions")                               \
    X(streams_reset, "streams ended by a reset (either side, tunnel loss)")                        \
    X(streams_user_aborted,                                                                        \
      "streams the user cut mid-exchange (TCP reset, send failure): RST to the connector")       \
    X(streams_user_closed_after_response,                                                          \
      "users that reset after the backend's last byte and FIN: ended with FIN, not RST")         \
    X(bytes_user_to_backend, "plaintext bytes from users into tunnels")                            \
    X(bytes_backend_to_user, "plaintext bytes from tunnels to users")                              \
    X(tunnels_accepted, "tunnel TCP connections accepted")                                         \
    X(tunnel_tls_failed, "tunnel TLS handshakes that failed")                                      \
    X(tunnel_cert_rejected, "tunnel client certificates that failed verification")                 \
    X(tunnel_unknown_connector, "verified tunnel certificates that match no connector")            \
    X(tunnel_protocol_errors,                                                                      \
      "tunnels closed for a protocol violation or overload (M17-M19 past budget, M22)")           \
    X(tunnel_ping_timeouts, "tunnels closed: the connector stopped answering (PING deadline)")     \
    X(tunnel_revoked, "tunnels closed: the connector was deleted (certificate revoked)")           \
    X(tunnel_version_refused, "tunnels refused at HELLO: connector older than the minimum")        \
    X(tunnel_limit_refused,                                                                        \
      "tunnels refused at HELLO: the connector has max_tunnels_per_connector on the worker")      \
    X(tunnels_moved, "tunnels drained: the connector was moved to another group")                  \
    X(configs_sent, "CONFIG frames sent to connectors")                                            \
    X(config_updates, "configuration snapshots applied by this worker")                            \
    X(tunnels_handed_off, "tunnels moved to the worker they asked for, at setup")                  \
    X(tunnels_closed, "tunnels closed (any reason)")                                               \
    X(tunnels_up, "gauge: tunnels ready on this worker")                                           \
    X(user_recv_paused, "times a user's receive was paused for lack of tunnel credit")             \
    X(user_sends, "socket sends to users completed (each carries one or more TLS records)")       \
    X(tunnel_sends, "socket sends to connectors completed (frames of many streams coalesced)")     \
    X(loop_iterations, "worker loop iterations (one io_uring wait each)")                          \
    X(user_conns_open, "gauge: user connections open on this worker")

APPRELAY_DECLARE_COUNTERS(relay_counter, APPRELAY_RELAY_COUNTERS)

} // namespace apprelay::relay
