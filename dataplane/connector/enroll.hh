#pragma once
// Connector side of enrollment (control/enroll/PROTOCOL.md steps 1-7) and the state directory it
// leaves behind for `apprelay-connector run --state-dir DIR`. Start-up code: blocking sockets,
// allocations and exceptions-free error reporting through result<> + a message.
#include "dataplane/base/result.hh"

#include <cstdint>
#include <string>
#include <vector>
#include <string_view>

namespace apprelay::connector {

// `art1.<id>.<secret>.<relay-ca-fingerprint>` (control/API.md), all lowercase hex.
struct enroll_token {
    std::string id;             // 16 hex
    std::string secret;         // 32 hex
    std::string ca_fingerprint; // 64 hex: SHA-256 of the relay CA certificate's DER
};
result<enroll_token> parse_token(std::string_view token);

// The message of a pin mismatch (PROTOCOL.md step 3), printed by `register`.
constexpr std::string_view k_pin_mismatch =
    "relay certificate does not match the token's CA fingerprint";

// One exchange with an enrollment listener: TCP connect to relay (HOST:PORT), TLS 1.3 accepting
// the server only through `ca_fingerprint` (see tls::client_options::pinned_ca_fingerprint), send
// `request_line` (ends with '\n'), return the reply line without its '\n'. Nothing is sent when
// the pin does not match (errc::cert_rejected, *why = k_pin_mismatch + details). The whole
// exchange is bounded by deadline_ms (errc::timed_out).
result<std::string> exchange_line(const std::string& relay, const std::string& ca_fingerprint,
                                  std::string_view request_line, uint32_t deadline_ms,
                                  std::string* why);

struct register_options {
    std::string relay;     // HOST:PORT of the relay's enrollment listener
    std::string token;     // art1....
    std::string state_dir; // created 0700 if missing
    std::string name;      // requested connector name; empty = this host's name
    std::string version = APPRELAY_VERSION;
    uint32_t deadline_ms = 15'000;
};

struct registration {
    std::string connector_id;
    std::string tenant;
    std::string group;
};

// PROTOCOL.md step 6: what an accepted enrollment reply carries.
struct relay_reply {
    registration reg;
    std::string cert_pem;
    std::string ca_pem;
    uint16_t tunnel_port = 0;
    std::string server_name;
    std::vector<std::string> relays; // a fleet's relays, HOST:PORT
};
// Decodes the relay's reply line (without its '\n'). errc::refused with the relay's reason in
// *why, or errc::protocol_error for a reply that is not valid JSON of step 6 or lacks a field.
result<relay_reply> parse_reply(const std::string& line, std::string* why);

// PROTOCOL.md steps 1-7. Errors: errc::refused when the relay refused (*why = its reason, e.g.
// "token already used"); errc::cert_rejected for a pin mismatch (*why starts with
// k_pin_mismatch); invalid_argument for a malformed token (before any connection); others for
// network, TLS, reply or file problems. Nothing is written to state_dir unless the relay
// accepted and its reply checks out (certificate matches our key, CA matches the pin).
result<registration> register_connector(const register_options& opts, std::string* why);

// What `run --state-dir DIR` needs, read back from DIR.
struct state {
    std::string relay;       // HOST:tunnel_port
    std::vector<std::string> relays; // a fleet's relays (HOST:PORT); empty: `relay` alone
    std::string server_name; // name on the relay's certificate
    std::string key_path;
    std::string cert_path;
    std::string ca_path;
    std::string connector_id; // CN of cert.pem
    std::string enroll;       // HOST:PORT of the relay's enrollment listener; empty: not recorded
};
result<state> load_state(const std::string& dir, std::string* why);

// A request of a registered connector to its relay's enrollment listener (control/enroll/
// PROTOCOL.md "Connector requests"): TLS 1.3 to st.enroll with the connector's certificate, the
// relay verified against st.ca_path and st.server_name. Returns the reply line (an object with
// "ok": true); the bytes announced by its "length" go to *body. errc::refused with the relay's
// reason in *why; other codes for network, TLS or malformed replies.
result<std::string> connector_request(const state& st, std::string_view request_line,
                                      uint32_t deadline_ms, std::string* body, std::string* why);
// The reply line of a connector request (without its '\n'): the length of the body that
// follows (0: none; at most 1 MiB). errc::refused with the relay's reason in *why, or
// errc::protocol_error for a line that is not such a reply.
result<uint64_t> parse_service_reply(const std::string& line, std::string* why);

} // namespace apprelay::connector
