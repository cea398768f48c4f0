#pragma once
// Shared by the TLS micro-benchmarks: a client and a server tls::session handshaking entirely in
// memory (each one's output fed to the other).
#include "tls/session.hh"

#include <chrono>

namespace apprelay::bench {

inline void transfer(tls::session& from, tls::session& to) {
    while (from.pending_output_size() > 0) {
        auto out = from.pending_output();
        to.feed(out);
        from.consume_output(out.size());
    }
}

// Full handshake. With server_s, the time spent in the server's calls is added to it.
inline bool connect(tls::session& client, tls::session& server, double* server_s = nullptr) {
    using clk = std::chrono::steady_clock;
    for (int i = 0; i < 8; ++i) {
        auto c = client.handshake();
        clk::time_point t0;
        if (server_s != nullptr) {
            t0 = clk::now();
        }
        transfer(client, server);
        auto s = server.handshake();
        if (server_s != nullptr) {
            *server_s += std::chrono::duration<double>(clk::now() - t0).count();
        }
        transfer(server, client);
        if (c.ok() && s.ok()) {
            return true;
        }
        if ((!c.ok() && c.code() != errc::again) || (!s.ok() && s.code() != errc::again)) {
            return false;
        }
    }
    return false;
}

} // namespace apprelay::bench
