#include "dataplane/io/tunnel_pump.hh"

namespace apprelay::io {

result<void> pump_tunnel(tunnel::mux& m, tls_transport& tx, tunnel_pending& pending,
                         std::span<std::byte> scratch) {
    for (uint32_t sid : pending.reset) {
        m.reset(sid, tunnel::reason::cancelled, pending.reset_message);
    }
    pending.reset.clear();
    // Bounded passes: pull() may queue more FINs (EOF seen while reading), handled next pass.
    for (int pass = 0; pass < 64 && tx.queued() < k_tunnel_high_water; ++pass) {
        for (uint32_t sid : pending.fin) {
            m.finish(sid);
        }
        pending.fin.clear();
        if (!m.wants_produce()) {
            break;
        }
        std::size_t n = m.produce(scratch);
        if (n == 0 && pending.fin.empty()) {
            break;
        }
        if (n > 0 && !tx.tls().write(std::span<const std::byte>(scratch.data(), n))) {
            return error(errc::tls_error, "tunnel encryption failed");
        }
    }
    tx.flush();
    return {};
}

} // namespace apprelay::io
