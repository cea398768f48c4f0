#include "dataplane/tunnel/frame.hh"

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <new>
#include <string>
#include <vector>

// Global allocation counter: the decoder must not allocate per frame or on a bad header.
namespace {
std::atomic<std::size_t> g_allocs{0};
} // namespace

// GCC 12 cannot see that these replace the global pair and warns about malloc/free pairing.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
    g_allocs.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n == 0 ? 1 : n)) {
        return p;
    }
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace apprelay::tunnel {
namespace {

using bytes = std::vector<std::byte>;

bytes make_bytes(std::initializer_list<int> v) {
    bytes b;
    for (int x : v) {
        b.push_back(static_cast<std::byte>(x));
    }
    return b;
}

std::span<const std::byte> as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// A frame as the decoder returns it, copied so it outlives the decoder's views.
struct owned_frame {
    frame_header header;
    bytes payload;
    bool operator==(const owned_frame& o) const {
        return header.type == o.header.type && header.flags == o.header.flags &&
               header.stream_id == o.header.stream_id && header.length == o.header.length &&
               payload == o.payload;
    }
};

// One of every frame type, concatenated.
bytes all_frames() {
    bytes out(64 * 1024);
    std::size_t n = 0;
    auto rest = [&]() { return std::span<std::byte>(out).subspan(n); };
    n += encode_hello(rest(), hello{1, 3, 16384, 65536, "conn-1", "1.2.3"});
    n += encode_hello_ack(rest(), hello_ack{1, 2, 8, 32768, 131072, 100, 500, "2.0", "1.0"});
    n += encode_open(rest(), 1, open_frame{"web", "10.0.0.1:443"});
    n += encode_open_ack(rest(), 1);
    n += encode_open_fail(rest(), 3, reason_frame{reason::refused, "connection refused"});
    std::string payload(1000, 'x');
    std::size_t h = encode_data_header(rest(), 1, static_cast<uint32_t>(payload.size()));
    EXPECT_EQ(h, k_header_size);
    std::memcpy(out.data() + n + h, payload.data(), payload.size());
    n += h + payload.size();
    n += encode_data_header(rest(), 1, 0); // empty DATA is legal for the codec
    n += encode_window(rest(), 1, 4096);
    n += encode_fin(rest(), 1);
    n += encode_rst(rest(), 5, reason_frame{reason::cancelled, ""});
    n += encode_ping(rest(), 0x0102030405060708ull);
    n += encode_pong(rest(), 0xfffffffffffffffful);
    n += encode_goaway(rest(), goaway_frame{7, reason::shutting_down, "bye"});
    n += encode_config(rest(), 42, as_bytes("{\"k\":1}"));
    out.resize(n);
    return out;
}

// Feeds `in` split at the given offsets; returns the frames and the last non-again error.
std::vector<owned_frame> decode_split(const bytes& in, const std::vector<std::size_t>& cuts,
                                      errc* last = nullptr) {
    frame_decoder d;
    std::vector<owned_frame> frames;
    std::size_t from = 0;
    auto run = [&](std::size_t to) {
        d.feed(std::span<const std::byte>(in).subspan(from, to - from));
        for (;;) {
            auto r = d.next();
            if (!r.ok()) {
                if (last != nullptr && r.code() != errc::again) {
                    *last = r.code();
                }
                break;
            }
            frames.push_back({r->header, bytes(r->payload.begin(), r->payload.end())});
        }
        from = to;
    };
    for (std::size_t c : cuts) {
        run(c);
    }
    run(in.size());
    return frames;
}

TEST(tunnel_frame, hello_round_trips) {
    std::array<std::byte, 128> buf{};
    hello h{1, 7, 32768, 1 << 20, "connector-abc", "3.4.5"};
    std::size_t n = encode_hello(buf, h);
    ASSERT_EQ(n, k_header_size + 12 + 1 + 13 + 1 + 5);
    auto hd = decode_header(buf, k_default_max_frame);
    ASSERT_TRUE(hd.ok());
    EXPECT_EQ(hd->type, frame_type::hello);
    EXPECT_EQ(hd->stream_id, 0u);
    EXPECT_EQ(hd->length, n - k_header_size);
    auto d = decode_hello(std::span<const std::byte>(buf).subspan(k_header_size, hd->length));
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->proto_version, 1);
    EXPECT_EQ(d->worker_index, 7);
    EXPECT_EQ(d->max_frame, 32768u);
    EXPECT_EQ(d->initial_window, 1u << 20);
    EXPECT_EQ(d->connector_id, "connector-abc");
    EXPECT_EQ(d->connector_version, "3.4.5");
}

TEST(tunnel_frame, every_frame_type_round_trips) {
    bytes in = all_frames();
    auto frames = decode_split(in, {});
    ASSERT_EQ(frames.size(), 14u);
    auto p = [&](std::size_t i) { return std::span<const std::byte>(frames[i].payload); };

    auto h = decode_hello(p(0));
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->connector_id, "conn-1");
    EXPECT_EQ(h->worker_index, 3);

    auto ha = decode_hello_ack(p(1));
    ASSERT_TRUE(ha.ok());
    EXPECT_EQ(ha->worker_index, 2);
    EXPECT_EQ(ha->worker_count, 8);
    EXPECT_EQ(ha->max_frame, 32768u);
    EXPECT_EQ(ha->initial_window, 131072u);
    EXPECT_EQ(ha->max_streams, 100u);
    EXPECT_EQ(ha->ping_interval_ms, 500u);
    EXPECT_EQ(ha->latest_version, "2.0");
    EXPECT_EQ(ha->min_version, "1.0");

    EXPECT_EQ(frames[2].header.type, frame_type::open);
    EXPECT_EQ(frames[2].header.stream_id, 1u);
    auto o = decode_open(p(2));
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->app, "web");
    EXPECT_EQ(o->target, "10.0.0.1:443");

    EXPECT_EQ(frames[3].header.type, frame_type::open_ack);
    EXPECT_EQ(frames[3].header.length, 0u);

    EXPECT_EQ(frames[4].header.type, frame_type::open_fail);
    auto of = decode_reason(p(4));
    ASSERT_TRUE(of.ok());
    EXPECT_EQ(of->code, reason::refused);
    EXPECT_EQ(of->message, "connection refused");

    EXPECT_EQ(frames[5].header.type, frame_type::data);
    EXPECT_EQ(frames[5].payload, bytes(1000, std::byte{'x'}));
    EXPECT_EQ(frames[6].header.type, frame_type::data);
    EXPECT_EQ(frames[6].header.length, 0u);

    auto w = decode_window(p(7));
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(*w, 4096u);

    EXPECT_EQ(frames[8].header.type, frame_type::fin);

    EXPECT_EQ(frames[9].header.type, frame_type::rst);
    auto rst = decode_reason(p(9));
    ASSERT_TRUE(rst.ok());
    EXPECT_EQ(rst->code, reason::cancelled);
    EXPECT_EQ(rst->message, "");

    EXPECT_EQ(frames[10].header.type, frame_type::ping);
    EXPECT_EQ(*decode_ping(p(10)), 0x0102030405060708ull);
    EXPECT_EQ(frames[11].header.type, frame_type::pong);
    EXPECT_EQ(*decode_ping(p(11)), 0xfffffffffffffffful);

    auto g = decode_goaway(p(12));
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(g->last_stream_id, 7u);
    EXPECT_EQ(g->code, reason::shutting_down);
    EXPECT_EQ(g->message, "bye");

    auto c = decode_config(p(13));
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->version, 42u);
    EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(c->body.data()), c->body.size()),
              "{\"k\":1}");
}

TEST(tunnel_frame, whole_frames_in_a_chunk_are_zero_copy_views) {
    bytes in = all_frames();
    frame_decoder d;
    d.feed(in);
    std::size_t off = 0;
    for (;;) {
        auto r = d.next();
        if (!r.ok()) {
            EXPECT_EQ(r.code(), errc::again);
            break;
        }
        if (r->header.length > 0) {
            EXPECT_EQ(r->payload.data(), in.data() + off + k_header_size);
        }
        off += k_header_size + r->header.length;
    }
    EXPECT_EQ(off, in.size());
}

TEST(tunnel_frame, split_at_every_byte_boundary_yields_identical_frames) {
    bytes in = all_frames();
    auto want = decode_split(in, {});
    for (std::size_t cut = 0; cut <= in.size(); ++cut) {
        ASSERT_EQ(decode_split(in, {cut}), want) << "cut at " << cut;
    }
}

TEST(tunnel_frame, two_cuts_inside_every_header_and_one_byte_chunks) {
    bytes in = all_frames();
    auto want = decode_split(in, {});
    // Every pair of cuts within the first 40 bytes (HELLO header and payload).
    for (std::size_t a = 0; a <= 40; ++a) {
        for (std::size_t b = a; b <= 40; ++b) {
            ASSERT_EQ(decode_split(in, {a, b}), want) << a << "," << b;
        }
    }
    std::vector<std::size_t> every;
    for (std::size_t i = 1; i < in.size(); ++i) {
        every.push_back(i);
    }
    EXPECT_EQ(decode_split(in, every), want);
}

TEST(tunnel_frame, decoder_does_not_allocate_per_frame) {
    bytes in = all_frames();
    frame_decoder d;
    std::size_t before = g_allocs.load();
    std::size_t frames = 0;
    for (std::size_t i = 0; i < in.size(); i += 7) {
        d.feed(std::span<const std::byte>(in).subspan(i, std::min<std::size_t>(7, in.size() - i)));
        while (d.next().ok()) {
            ++frames;
        }
    }
    EXPECT_EQ(frames, 14u);
    EXPECT_EQ(g_allocs.load(), before);
}

TEST(tunnel_frame, length_over_max_fails_from_header_without_allocation) {
    frame_decoder d;
    // DATA sid 1 length 0xffffffff, and only the header is ever sent.
    bytes in = make_bytes({6, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff});
    std::size_t before = g_allocs.load();
    d.feed(std::span<const std::byte>(in).first(5));
    EXPECT_EQ(d.next().code(), errc::again);
    d.feed(std::span<const std::byte>(in).subspan(5));
    EXPECT_EQ(d.next().code(), errc::frame_too_large);
    EXPECT_EQ(g_allocs.load(), before);
    // Sticky: later input is not looked at.
    bytes ok(64);
    std::size_t n = encode_fin(ok, 1);
    d.feed(std::span<const std::byte>(ok).first(n));
    EXPECT_EQ(d.next().code(), errc::frame_too_large);
    EXPECT_EQ(d.next().code(), errc::frame_too_large);
}

TEST(tunnel_frame, length_exactly_max_is_accepted_and_one_more_is_not) {
    bytes hdr(k_header_size);
    ASSERT_EQ(encode_data_header(hdr, 1, k_default_max_frame), k_header_size);
    EXPECT_TRUE(decode_header(hdr, k_default_max_frame).ok());
    ASSERT_EQ(encode_data_header(hdr, 1, k_default_max_frame + 1), k_header_size);
    EXPECT_EQ(decode_header(hdr, k_default_max_frame).code(), errc::frame_too_large);
}

TEST(tunnel_frame, set_max_frame_shrinks_the_limit) {
    frame_decoder d(1 << 20);
    d.set_max_frame(1024);
    EXPECT_EQ(d.max_frame(), 1024u);
    d.set_max_frame(1 << 21); // cannot grow past the construction-time buffer
    EXPECT_EQ(d.max_frame(), 1024u);
    bytes in(k_header_size);
    ASSERT_EQ(encode_data_header(in, 1, 1025), k_header_size);
    d.feed(in);
    EXPECT_EQ(d.next().code(), errc::frame_too_large);
}

TEST(tunnel_frame, header_errors_are_sticky_after_a_partial_header) {
    frame_decoder d;
    bytes in = make_bytes({99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); // unknown type
    d.feed(std::span<const std::byte>(in).first(3));
    EXPECT_EQ(d.next().code(), errc::again);
    d.feed(std::span<const std::byte>(in).subspan(3));
    EXPECT_EQ(d.next().code(), errc::protocol_error);
    d.feed({});
    EXPECT_EQ(d.next().code(), errc::protocol_error);
}

TEST(tunnel_frame, short_header_is_again) {
    bytes in = make_bytes({6, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0});
    EXPECT_EQ(decode_header(in, k_default_max_frame).code(), errc::again);
    EXPECT_EQ(decode_header({}, k_default_max_frame).code(), errc::again);
}

TEST(tunnel_frame, truncated_strings_are_protocol_errors) {
    // OPEN: app claims 5 bytes, 2 present.
    EXPECT_EQ(decode_open(make_bytes({5, 'a', 'b'})).code(), errc::protocol_error);
    // OPEN: target length byte missing.
    EXPECT_EQ(decode_open(make_bytes({1, 'a'})).code(), errc::protocol_error);
    EXPECT_EQ(decode_open({}).code(), errc::protocol_error);
    // RST: reason only, no message length.
    EXPECT_EQ(decode_reason(make_bytes({0, 1})).code(), errc::protocol_error);
    EXPECT_EQ(decode_reason(make_bytes({0, 1, 3, 'a'})).code(), errc::protocol_error);
    // GOAWAY: message claims 255 bytes.
    EXPECT_EQ(decode_goaway(make_bytes({0, 0, 0, 1, 0, 0, 255})).code(), errc::protocol_error);
    // HELLO: fixed part truncated, then strings truncated.
    EXPECT_EQ(decode_hello(make_bytes({0, 1, 0, 0})).code(), errc::protocol_error);
    EXPECT_EQ(decode_hello(make_bytes({0, 1, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 0, 2, 'a'})).code(),
              errc::protocol_error);
    // CONFIG shorter than its version.
    EXPECT_EQ(decode_config(make_bytes({0, 0, 0, 0, 0, 0, 1})).code(), errc::protocol_error);
}

TEST(tunnel_frame, trailing_bytes_are_protocol_errors) {
    std::array<std::byte, 256> buf{};
    auto with_trailer = [&](std::size_t n) {
        // Payload of the encoded frame plus one extra zero byte.
        return std::span<const std::byte>(buf).subspan(k_header_size, n - k_header_size + 1);
    };
    std::size_t n = encode_hello(buf, hello{});
    EXPECT_EQ(decode_hello(with_trailer(n)).code(), errc::protocol_error);
    n = encode_hello_ack(buf, hello_ack{});
    EXPECT_EQ(decode_hello_ack(with_trailer(n)).code(), errc::protocol_error);
    n = encode_open(buf, 1, open_frame{"a", "b:1"});
    EXPECT_EQ(decode_open(with_trailer(n)).code(), errc::protocol_error);
    n = encode_rst(buf, 1, reason_frame{reason::internal, "x"});
    EXPECT_EQ(decode_reason(with_trailer(n)).code(), errc::protocol_error);
    n = encode_goaway(buf, goaway_frame{});
    EXPECT_EQ(decode_goaway(with_trailer(n)).code(), errc::protocol_error);
}

TEST(tunnel_frame, bad_fixed_sizes_are_protocol_errors) {
    EXPECT_EQ(decode_window(make_bytes({0, 0, 1})).code(), errc::protocol_error);
    EXPECT_EQ(decode_window(make_bytes({0, 0, 0, 1, 0})).code(), errc::protocol_error);
    EXPECT_EQ(decode_ping(make_bytes({0, 0, 0, 0, 0, 0, 0})).code(), errc::protocol_error);
    EXPECT_EQ(decode_ping(make_bytes({0, 0, 0, 0, 0, 0, 0, 0, 0})).code(), errc::protocol_error);
    // In the header: FIN with a payload, PING of 7 bytes, WINDOW of 8 bytes.
    EXPECT_EQ(decode_header(make_bytes({8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}), 100).code(),
              errc::protocol_error);
    EXPECT_EQ(decode_header(make_bytes({10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}), 100).code(),
              errc::protocol_error);
    EXPECT_EQ(decode_header(make_bytes({7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8}), 100).code(),
              errc::protocol_error);
}

TEST(tunnel_frame, window_increment_limits) {
    EXPECT_EQ(decode_window(make_bytes({0, 0, 0, 0})).code(), errc::protocol_error);
    EXPECT_EQ(*decode_window(make_bytes({0x7f, 0xff, 0xff, 0xff})), k_max_window);
    EXPECT_EQ(decode_window(make_bytes({0x80, 0, 0, 0})).code(), errc::flow_control);
}

TEST(tunnel_frame, unknown_reason_maps_to_internal) {
    auto r = decode_reason(make_bytes({0x12, 0x34, 0}));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->code, reason::internal);
    auto g = decode_goaway(make_bytes({0, 0, 0, 0, 0, 15, 0}));
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(g->code, reason::internal);
    auto known = decode_reason(make_bytes({0, 14, 0}));
    EXPECT_EQ(known->code, reason::version_too_old);
}

TEST(tunnel_frame, encoders_return_zero_when_out_is_too_small) {
    std::array<std::byte, 512> buf{};
    auto check = [&](auto encode) {
        std::size_t n = encode(std::span<std::byte>(buf));
        ASSERT_GT(n, 0u);
        buf.fill(std::byte{0xaa});
        EXPECT_EQ(encode(std::span<std::byte>(buf).first(n - 1)), 0u);
        for (std::byte b : buf) { // nothing written
            ASSERT_EQ(b, std::byte{0xaa});
        }
        EXPECT_EQ(encode(std::span<std::byte>(buf).first(n)), n);
    };
    check([](std::span<std::byte> o) { return encode_hello(o, hello{}); });
    check([](std::span<std::byte> o) { return encode_hello_ack(o, hello_ack{}); });
    check([](std::span<std::byte> o) { return encode_open(o, 1, open_frame{"app", "h:1"}); });
    check([](std::span<std::byte> o) { return encode_open_ack(o, 1); });
    check([](std::span<std::byte> o) { return encode_open_fail(o, 1, reason_frame{}); });
    check([](std::span<std::byte> o) { return encode_rst(o, 1, reason_frame{}); });
    check([](std::span<std::byte> o) { return encode_window(o, 1, 1); });
    check([](std::span<std::byte> o) { return encode_fin(o, 1); });
    check([](std::span<std::byte> o) { return encode_ping(o, 1); });
    check([](std::span<std::byte> o) { return encode_pong(o, 1); });
    check([](std::span<std::byte> o) { return encode_goaway(o, goaway_frame{}); });
    check([](std::span<std::byte> o) { return encode_config(o, 1, as_bytes("body")); });
    check([](std::span<std::byte> o) { return encode_data_header(o, 1, 100); });
}

TEST(tunnel_frame, long_strings_are_truncated_to_255) {
    std::array<std::byte, 1024> buf{};
    std::string app(300, 'a');
    std::size_t n = encode_open(buf, 1, open_frame{app, "t"});
    ASSERT_EQ(n, k_header_size + 1 + 255 + 1 + 1);
    auto o = decode_open(std::span<const std::byte>(buf).subspan(k_header_size, n - k_header_size));
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->app, std::string(255, 'a'));
    EXPECT_EQ(o->target, "t");
}

TEST(tunnel_frame, to_string_names_every_value) {
    EXPECT_EQ(to_string(frame_type::hello_ack), "HELLO_ACK");
    EXPECT_EQ(to_string(frame_type::config), "CONFIG");
    EXPECT_EQ(to_string(static_cast<frame_type>(0)), "UNKNOWN");
    EXPECT_EQ(to_string(reason::rate_limited), "rate_limited");
    EXPECT_EQ(to_string(reason::version_too_old), "version_too_old");
    EXPECT_EQ(to_string(static_cast<reason>(999)), "unknown");
    for (int t = 1; t <= 13; ++t) {
        EXPECT_NE(to_string(static_cast<frame_type>(t)), "UNKNOWN");
    }
    for (int r = 0; r <= 14; ++r) {
        EXPECT_NE(to_string(static_cast<reason>(r)), "unknown");
    }
}

} // namespace
} // namespace apprelay::tunnel
