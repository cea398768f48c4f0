#pragma once
// The body of a CONFIG frame: what a connector is allowed to do, sent by the relay at HELLO, on
// every change and periodically. Text, one `key value` per line ('\n'), so it stays readable in
// a capture and parses without a library:
//
//   tenant contoso
//   group site-a
//   backend 10.1.0.5:443        (one line per backend this connector's group may reach)
//   region eu-west              (the group's region; absent = none)
//   relay relay-a 10.0.0.1:8444 eu-west 0   (a fleet's relays: node, tunnel address, region or
//                                            "-", draining 0|1; absent with a lone relay)
//
// Unknown keys are ignored (newer relays may add some). Decoding validates every line; the
// connector refuses an OPEN whose target is not one of the backends.
#include "dataplane/base/result.hh"

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::tunnel {

constexpr std::size_t k_max_config_backends = 1024;
constexpr std::size_t k_max_config_line = 300; // "backend " + a 255-byte host:port + slack
constexpr std::size_t k_max_config_relays = 64;

// A relay host of the fleet, as the connector needs it to choose where to attach.
struct fleet_relay_info {
    std::string node;
    std::string address; // host:port of its tunnel listener
    std::string region;  // empty = none
    bool draining = false;
    bool operator==(const fleet_relay_info&) const = default;
};

struct connector_config {
    std::string tenant;
    std::string group;
    std::vector<std::string> backends; // sorted, unique
    std::string region;                // the group's region
    std::vector<fleet_relay_info> relays; // sorted by node; empty = a lone relay
    bool allows(std::string_view target) const noexcept;
};

std::string encode_connector_config(const connector_config& c);
// errc::protocol_error with a static detail on a malformed body (empty key, control bytes,
// line too long, too many backends, missing tenant or group).
result<connector_config> decode_connector_config(std::span<const std::byte> body);

} // namespace apprelay::tunnel
