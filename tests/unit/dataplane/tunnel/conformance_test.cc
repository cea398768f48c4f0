// One row per codec MUST of dataplane/tunnel/SPEC.md (M1-M15): raw wire bytes in, errc out.
// Each input is run the way the mux runs it: frame_decoder first, then the payload decoder of
// the frame's type.
#include "dataplane/tunnel/frame.hh"

#include <gtest/gtest.h>
#include <vector>

namespace apprelay::tunnel {
namespace {

struct conformance_row {
    const char* id;
    const char* what;
    std::vector<uint8_t> wire;
    errc want;
};

errc decode_payload(frame_type t, std::span<const std::byte> p) {
    switch (t) {
    case frame_type::hello:
        return decode_hello(p).code();
    case frame_type::hello_ack:
        return decode_hello_ack(p).code();
    case frame_type::open:
        return decode_open(p).code();
    case frame_type::open_fail:
    case frame_type::rst:
        return decode_reason(p).code();
    case frame_type::window:
        return decode_window(p).code();
    case frame_type::ping:
    case frame_type::pong:
        return decode_ping(p).code();
    case frame_type::goaway:
        return decode_goaway(p).code();
    case frame_type::config:
        return decode_config(p).code();
    case frame_type::open_ack:
    case frame_type::fin:
    case frame_type::data:
        return errc::ok;
    }
    return errc::ok;
}

// First non-ok errc over every frame in `wire`, errc::again if the input ends mid-frame.
errc run(const std::vector<uint8_t>& wire) {
    frame_decoder d(k_default_max_frame);
    d.feed({reinterpret_cast<const std::byte*>(wire.data()), wire.size()});
    for (;;) {
        auto f = d.next();
        if (!f.ok()) {
            // again with bytes left over means a partial frame; with none, all frames passed.
            return f.code();
        }
        errc e = decode_payload(f->header.type, f->payload);
        if (e != errc::ok) {
            return e;
        }
        if (f->header.length + k_header_size == wire.size()) {
            return errc::ok; // the single frame of the row was accepted
        }
    }
}

// Header: type, flags, reserved(2), stream_id(4), length(4).
const std::vector<conformance_row> k_rows = {
    {"M1", "header split: 11 bytes wait", {6, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, errc::again},
    {"M1",
     "payload short: DATA of 4 with 3 bytes wait",
     {6, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 1, 2, 3},
     errc::again},
    {"M2", "reserved non-zero", {8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}, errc::protocol_error},
    {"M2", "reserved high byte", {8, 0, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0}, errc::protocol_error},
    {"M3", "flags set on FIN", {8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, errc::protocol_error},
    {"M3", "flags set on DATA", {6, 0x80, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, errc::protocol_error},
    {"M4", "type 0", {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, errc::protocol_error},
    {"M4", "type 14", {14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, errc::protocol_error},
    {"M4", "type 255", {255, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, errc::protocol_error},
    {"M5",
     "DATA length max+1, header only",
     {6, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x40, 0x01},
     errc::frame_too_large},
    {"M5",
     "CONFIG length 4 GiB-1",
     {13, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
     errc::frame_too_large},
    {"M6",
     "PING on stream 1",
     {10, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0},
     errc::protocol_error},
    {"M6",
     "GOAWAY on stream 3",
     {12, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0},
     errc::protocol_error},
    {"M6", "HELLO on stream 1", {1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, errc::protocol_error},
    {"M7", "DATA on stream 0", {6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'x'}, errc::protocol_error},
    {"M7", "OPEN on stream 0", {3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0}, errc::protocol_error},
    {"M7", "RST on stream 0", {9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0}, errc::protocol_error},
    {"M8", "OPEN_ACK with 1 byte", {4, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0}, errc::protocol_error},
    {"M8", "FIN with 1 byte", {8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0}, errc::protocol_error},
    {"M8",
     "PING of 7 bytes",
     {10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0},
     errc::protocol_error},
    {"M8",
     "PONG of 9 bytes",
     {11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0},
     errc::protocol_error},
    {"M8",
     "WINDOW of 3 bytes",
     {7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 1},
     errc::protocol_error},
    {"M9",
     "OPEN app str overruns",
     {3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 5, 'a', 'b'},
     errc::protocol_error},
    {"M9",
     "OPEN target length missing",
     {3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1, 'a'},
     errc::protocol_error},
    {"M9",
     "HELLO fixed part short",
     {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0xff, 0xff},
     errc::protocol_error},
    {"M9",
     "RST without message length",
     {9, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 7},
     errc::protocol_error},
    {"M9",
     "GOAWAY message overruns",
     {12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 9, 'x'},
     errc::protocol_error},
    {"M10",
     "OPEN with a trailing byte",
     {3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 1, 'a', 1, 'b', 0},
     errc::protocol_error},
    {"M10",
     "HELLO with a trailing byte",
     {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 1, 0xff, 0xff, 0, 0, 0x40, 0, 0, 4, 0, 0, 0, 0, 0},
     errc::protocol_error},
    {"M10",
     "OPEN_FAIL with a trailing byte",
     {5, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 4, 0, 0},
     errc::protocol_error},
    {"M10",
     "GOAWAY with a trailing byte",
     {12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0},
     errc::protocol_error},
    {"M11",
     "HELLO_ACK reserved non-zero",
     {2, 0, 0, 0,    0, 0, 0, 0, 0, 0, 0, 26,   0, 1, 0, 0, 0,    1, 0,
      1, 0, 0, 0x40, 0, 0, 4, 0, 0, 0, 0, 0x10, 0, 0, 0, 3, 0xe8, 0, 0},
     errc::protocol_error},
    {"M12",
     "WINDOW increment 0",
     {7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0},
     errc::protocol_error},
    {"M13",
     "WINDOW increment 2^31",
     {7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0x80, 0, 0, 0},
     errc::flow_control},
    {"M13",
     "WINDOW increment 2^31-1 ok",
     {7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff},
     errc::ok},
    {"M14",
     "RST reason 0x1234 accepted",
     {9, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0x12, 0x34, 0},
     errc::ok},
    {"M14",
     "GOAWAY reason 15 accepted",
     {12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 15, 0},
     errc::ok},
    {"M15",
     "CONFIG of 7 bytes",
     {13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 1},
     errc::protocol_error},
    {"M15",
     "CONFIG with empty body ok",
     {13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1},
     errc::ok},
};

TEST(tunnel_conformance, every_codec_must_has_a_row_and_holds) {
    bool seen[16] = {};
    for (const auto& row : k_rows) {
        SCOPED_TRACE(std::string(row.id) + ": " + row.what);
        EXPECT_EQ(name_of(run(row.wire)), name_of(row.want));
        seen[std::atoi(row.id + 1)] = true;
    }
    for (int m = 1; m <= 15; ++m) {
        EXPECT_TRUE(seen[m]) << "no conformance row for M" << m;
    }
}

TEST(tunnel_conformance, unknown_reasons_read_as_internal) {
    const uint8_t rst[] = {0x12, 0x34, 0};
    auto r = decode_reason({reinterpret_cast<const std::byte*>(rst), sizeof(rst)});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->code, reason::internal);
}

} // namespace
} // namespace apprelay::tunnel
