// One row per stream MUST of dataplane/tunnel/SPEC.md (M16-M26, plus the stream-scoped codec
// rules M12/M13 as the mux applies them): frames in, and the expected outcome with its scope.
//   tunnel: receive() returns the errc (the owner then sends GOAWAY goaway_reason(errc), closes)
//   stream: receive() is ok and the mux queued an RST with the reason on that stream id
//   none:   receive() is ok and no RST was queued
#include "dataplane/tunnel/mux.hh"
#include "tests/unit/dataplane/tunnel/wire.hh"

#include <cstring>
#include <functional>
#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace apprelay::tunnel {
namespace {

// These tests count the open/reset budget at 200/s, burst 400 and a 256 KiB window (the
// defaults are larger: the tunnel budget is only a backstop, users are charged at the relay's
// edge, and the default window is sized for WAN paths).
mux_limits small_budget() {
    mux_limits l;
    l.open_reset_rate = 200;
    l.open_reset_burst = 400;
    l.initial_window = 256 * 1024; // the windows these tests count in
    return l;
}

constexpr uint64_t k_now = 1'000'000'000;

enum class scope : uint8_t { none, stream, tunnel };

struct quiet_handler : mux_handler {
    mux* m = nullptr;
    void on_open(uint32_t sid, std::string_view, std::string_view) override { m->open_ack(sid); }
    void on_data(uint32_t, std::span<const std::byte>) override {} // never consumes
    void on_fin(uint32_t) override {}
    void on_reset(uint32_t, reason, std::string_view) override {}
    std::size_t pull(uint32_t, std::span<std::byte>) override { return 0; }
};

using testing::wire;

struct mux_row {
    const char* id;
    const char* what;
    role side; // the receiving mux
    uint32_t max_streams = 4096;
    uint32_t relay_opens = 0; // streams the relay-side mux opens before the input arrives
    std::function<void(wire&)> input;
    scope want_scope;
    errc want_errc = errc::ok;             // tunnel scope
    reason want_reason = reason::no_error; // stream scope
    uint32_t rst_sid = 0;                  // stream scope
};

// Initial window 1024 in every row, so one DATA of 1025 bytes is beyond credit (M17).
const std::vector<mux_row> k_rows = {
    {"M16", "OPEN with an even id", role::connector, 4096, 0, [](wire& w) { w.open(2); },
     scope::tunnel, errc::protocol_error},
    {"M16", "OPEN with a decreasing id", role::connector, 4096, 0,
     [](wire& w) { w.open(5).open(3); }, scope::tunnel, errc::protocol_error},
    {"M16", "OPEN reusing an id", role::connector, 4096, 0, [](wire& w) { w.open(1).open(1); },
     scope::tunnel, errc::protocol_error},
    {"M16", "OPEN from the connector", role::relay, 4096, 0, [](wire& w) { w.open(1); },
     scope::tunnel, errc::protocol_error},
    {"M16", "DATA on an id never opened", role::connector, 4096, 0, [](wire& w) { w.data(7, 1); },
     scope::tunnel, errc::protocol_error},
    {"M17", "DATA one byte beyond credit", role::connector, 4096, 0,
     [](wire& w) { w.open(1).data(1, 1025); }, scope::stream, errc::ok, reason::flow_control, 1},
    {"M17", "DATA exactly at credit", role::connector, 4096, 0,
     [](wire& w) { w.open(1).data(1, 1024); }, scope::none},
    {"M18", "WINDOW raising credit past 2^31-1", role::connector, 4096, 0,
     [](wire& w) { w.open(1).window(1, 0x7fffffff - 1023); }, scope::stream, errc::ok,
     reason::flow_control, 1},
    {"M18", "WINDOW raising credit to exactly 2^31-1", role::connector, 4096, 0,
     [](wire& w) { w.open(1).window(1, 0x7fffffff - 1024); }, scope::none},
    {"M13", "WINDOW increment above 2^31-1", role::connector, 4096, 0,
     [](wire& w) { w.open(1).window(1, 0x80000000u); }, scope::stream, errc::ok,
     reason::flow_control, 1},
    {"M19", "WINDOW increment 0 (M12)", role::connector, 4096, 0,
     [](wire& w) { w.open(1).window(1, 0); }, scope::stream, errc::ok, reason::protocol_error, 1},
    // Frames racing a reset are ignored and never charged: the next OPEN is still accepted.
    {"M20", "late frames after RST, then an OPEN", role::connector, 4096, 0,
     [](wire& w) { w.open(1).rst(1).times(1000, [](wire& x) { x.data(1, 1); }).open(3); },
     scope::none},
    {"M20", "OPEN+RST flood: the OPEN after the burst is refused", role::connector, 4096, 0,
     [](wire& w) {
         for (uint32_t sid = 1; sid < 2 * 401; sid += 2) { // OPEN 801 finds the bucket empty
             w.open(sid).rst(sid);
         }
     },
     scope::stream, errc::ok, reason::rate_limited, 801},
    {"M21", "OPEN beyond max_streams", role::connector, 2, 0,
     [](wire& w) { w.open(1).open(3).open(5); }, scope::stream, errc::ok, reason::stream_limit, 5},
    // Nothing is produced while the input arrives, so every PONG stays queued.
    {"M22", "PING flood with PONGs never flushed", role::connector, 4096, 0,
     [](wire& w) { w.times(1001, [](wire& x) { x.ping(); }); }, scope::tunnel, errc::overloaded},
    {"M22", "PINGs up to the control queue limit", role::connector, 4096, 0,
     [](wire& w) { w.times(1000, [](wire& x) { x.ping(); }); }, scope::none},
    {"M23", "two consecutive empty DATA", role::connector, 4096, 0,
     [](wire& w) { w.open(1).data(1, 0).data(1, 0); }, scope::tunnel, errc::protocol_error},
    {"M23", "empty DATA separated by a non-empty one", role::connector, 4096, 0,
     [](wire& w) { w.open(1).data(1, 0).data(1, 1).data(1, 0); }, scope::none},
    // No DATA sent yet: the allowance is 10 * (0 + 10 slack) = 100 WINDOW frames.
    {"M24", "101 WINDOW frames and no DATA sent", role::connector, 4096, 0,
     [](wire& w) { w.open(1).times(101, [](wire& x) { x.window(1, 1); }); }, scope::tunnel,
     errc::protocol_error},
    {"M24", "100 WINDOW frames and no DATA sent", role::connector, 4096, 0,
     [](wire& w) { w.open(1).times(100, [](wire& x) { x.window(1, 1); }); }, scope::none},
    {"M25", "OPEN after GOAWAY", role::connector, 4096, 0, [](wire& w) { w.goaway().open(1); },
     scope::stream, errc::ok, reason::shutting_down, 1},
    {"M26", "DATA from the connector before OPEN_ACK", role::relay, 4096, 1,
     [](wire& w) { w.data(1, 1); }, scope::tunnel, errc::protocol_error},
};

TEST(tunnel_conformance, every_stream_must_has_a_row_and_holds_with_its_scope) {
    bool seen[27] = {};
    for (const auto& row : k_rows) {
        SCOPED_TRACE(std::string(row.id) + ": " + row.what);
        seen[std::atoi(row.id + 1)] = true;
        mux_limits l = small_budget();
        l.initial_window = 1024;
        l.max_streams = row.max_streams;
        quiet_handler h;
        mux m(row.side, l, h);
        h.m = &m;
        for (uint32_t i = 0; i < row.relay_opens; ++i) {
            ASSERT_TRUE(m.open("app", "h:1", k_now).ok());
        }
        std::vector<std::byte> scratch(64 * 1024);
        while (m.produce(scratch) > 0) {
        }
        wire w;
        row.input(w);
        auto r = m.receive(w.b, k_now);
        if (row.want_scope == scope::tunnel) {
            EXPECT_EQ(name_of(r.code()), name_of(row.want_errc));
            continue;
        }
        ASSERT_TRUE(r.ok()) << name_of(r.code()) << " " << r.err().detail;
        // Collect the RSTs the mux queued (control frames fit one produce of 64 KiB here).
        std::vector<std::pair<uint32_t, reason>> rsts;
        std::vector<std::byte> out(1024 * 1024);
        std::size_t n = m.produce(out);
        frame_decoder d(k_hard_max_frame);
        d.feed(std::span<const std::byte>(out.data(), n));
        for (auto f = d.next(); f.ok(); f = d.next()) {
            if (f->header.type == frame_type::rst) {
                rsts.emplace_back(f->header.stream_id, decode_reason(f->payload)->code);
            }
        }
        if (row.want_scope == scope::none) {
            EXPECT_TRUE(rsts.empty());
        } else {
            ASSERT_EQ(rsts.size(), 1u);
            EXPECT_EQ(rsts[0].first, row.rst_sid);
            EXPECT_EQ(to_string(rsts[0].second), to_string(row.want_reason));
        }
    }
    for (int id = 16; id <= 26; ++id) {
        EXPECT_TRUE(seen[id]) << "no conformance row for M" << id;
    }
}

TEST(tunnel_conformance, tunnel_errors_map_to_goaway_reasons) {
    EXPECT_EQ(goaway_reason(errc::protocol_error), reason::protocol_error);
    EXPECT_EQ(goaway_reason(errc::frame_too_large), reason::protocol_error);
    EXPECT_EQ(goaway_reason(errc::flow_control), reason::flow_control);
    EXPECT_EQ(goaway_reason(errc::overloaded), reason::rate_limited);
    EXPECT_EQ(goaway_reason(errc::io_error), reason::internal);
}

} // namespace
} // namespace apprelay::tunnel
