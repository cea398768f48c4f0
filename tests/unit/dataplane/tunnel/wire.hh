#pragma once
// Test helper shared by the mux tests: builds raw tunnel bytes frame by frame, so a test can
// play a (possibly misbehaving) peer.
#include "dataplane/tunnel/frame.hh"

#include <cstring>
#include <span>
#include <vector>

namespace apprelay::tunnel::testing {

// Wire builder: each call appends one encoded frame.
struct wire {
    std::vector<std::byte> b;
    template <class F> wire& add(F&& enc) {
        std::size_t at = b.size();
        b.resize(at + 2048);
        b.resize(at + enc(std::span<std::byte>(b.data() + at, 2048)));
        return *this;
    }
    wire& open(uint32_t sid) {
        return add([&](auto o) { return encode_open(o, sid, open_frame{"app", "h:1"}); });
    }
    wire& open_ack(uint32_t sid) {
        return add([&](auto o) { return encode_open_ack(o, sid); });
    }
    wire& data(uint32_t sid, std::size_t n) {
        return add([&](auto o) {
            std::size_t h = encode_data_header(o, sid, uint32_t(n));
            std::memset(o.data() + h, 'x', n);
            return h + n;
        });
    }
    wire& window(uint32_t sid, uint32_t inc) {
        return add([&](auto o) { return encode_window(o, sid, inc); });
    }
    wire& rst(uint32_t sid) {
        return add([&](auto o) { return encode_rst(o, sid, reason_frame{reason::cancelled, ""}); });
    }
    wire& ping(uint64_t v = 7) {
        return add([&](auto o) { return encode_ping(o, v); });
    }
    wire& goaway() {
        return add([&](auto o) { return encode_goaway(o, goaway_frame{0, reason::no_error, ""}); });
    }
    std::span<const std::byte> span() const { return b; }
    template <class F> wire& times(int n, F&& f) {
        for (int i = 0; i < n; ++i) {
            f(*this);
        }
        return *this;
    }
};

} // namespace apprelay::tunnel::testing
