#pragma once
// The write path of one tunnel, shared by relay and connector: resets and FINs the owner queued
// (outside mux callbacks) go into the mux, then frames come out of the mux into a plaintext
// scratch (many streams' frames coalesce into full 16 KiB TLS records: one encrypt per 64 KiB),
// get encrypted and handed to the socket. Production pauses while the socket backlog is above
// k_tunnel_high_water so the fair scheduler decides close to the wire, and memory stays bounded.
#include "dataplane/io/tls_transport.hh"
#include "dataplane/tunnel/mux.hh"

#include <span>
#include <vector>

namespace apprelay::io {

constexpr std::size_t k_tunnel_high_water = 256 * 1024;

struct tunnel_pending {
    std::vector<uint32_t> fin;   // streams whose source hit EOF
    std::vector<uint32_t> reset; // streams whose user/backend died
    std::string_view reset_message;
};

// errc::tls_error if encryption failed (the owner closes the tunnel).
result<void> pump_tunnel(tunnel::mux& m, tls_transport& tx, tunnel_pending& pending,
                         std::span<std::byte> scratch);

} // namespace apprelay::io
