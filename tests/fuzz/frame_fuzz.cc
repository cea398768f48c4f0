// libFuzzer target for the tunnel codec and stream mux (dataplane/tunnel/frame.cc, mux.cc).
// Input: byte 0 picks the chunk size, the rest is wire bytes from an untrusted peer.
// Codec checks: no crash/over-read (ASan/UBSan); chunked decoding yields exactly the frames and
// the error of one-shot decoding; every accepted payload re-encodes to the same bytes.
// Mux checks (the same bytes fed in chunks to a relay-side and a connector-side mux whose owner
// acks, fails, reads, writes, finishes and resets streams): no crash, the stream count stays
// within max_streams, every window stays within 2^31-1, and everything produce() emits is a
// sequence of whole frames that a peer's decoder accepts.
#include "dataplane/tunnel/frame.hh"
#include "dataplane/tunnel/mux.hh"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

using namespace apprelay;
using namespace apprelay::tunnel;

struct seen_frame {
    frame_header header;
    std::vector<std::byte> payload;
};

void check(bool ok) {
    if (!ok) {
        std::abort();
    }
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

// Decodes the payload with its type's decoder; re-encodes what was accepted and compares.
void run_payload(const frame_header& h, std::span<const std::byte> p) {
    std::byte out[k_header_size + 1024];
    std::size_t n = 0;
    switch (h.type) {
    case frame_type::hello:
        if (auto r = decode_hello(p); r.ok()) {
            n = encode_hello(out, *r);
            check(n > 0);
        }
        break;
    case frame_type::hello_ack:
        if (auto r = decode_hello_ack(p); r.ok()) {
            n = encode_hello_ack(out, *r);
            check(n > 0);
        }
        break;
    case frame_type::open:
        if (auto r = decode_open(p); r.ok()) {
            n = encode_open(out, h.stream_id, *r);
            check(n > 0);
        }
        break;
    case frame_type::open_fail:
    case frame_type::rst:
        if (auto r = decode_reason(p); r.ok()) {
            check(!to_string(r->code).empty());
        }
        break;
    case frame_type::window:
        if (auto r = decode_window(p); r.ok()) {
            check(*r != 0 && *r <= k_max_window);
            n = encode_window(out, h.stream_id, *r);
        }
        break;
    case frame_type::ping:
    case frame_type::pong:
        if (auto r = decode_ping(p); r.ok()) {
            n = h.type == frame_type::ping ? encode_ping(out, *r) : encode_pong(out, *r);
        }
        break;
    case frame_type::goaway:
        if (auto r = decode_goaway(p); r.ok()) {
            check(!to_string(r->code).empty());
        }
        break;
    case frame_type::config:
        if (auto r = decode_config(p); r.ok()) {
            check(r->body.size() + 8 == p.size());
        }
        break;
    case frame_type::open_ack:
    case frame_type::fin:
        check(p.empty());
        break;
    case frame_type::data:
        break;
    }
    check(!to_string(h.type).empty());
    if (n > 0) {
        check(same({out + k_header_size, n - k_header_size}, p));
    }
}

// Decodes `in` in chunks of `chunk` bytes (0: one chunk); returns the final non-again errc.
errc decode_all(std::span<const std::byte> in, std::size_t chunk, std::vector<seen_frame>& out) {
    frame_decoder d(k_default_max_frame);
    std::size_t off = 0;
    do {
        std::size_t n = chunk == 0 ? in.size() : std::min(chunk, in.size() - off);
        d.feed(in.subspan(off, n));
        off += n;
        for (;;) {
            auto r = d.next();
            if (!r.ok()) {
                if (r.code() != errc::again) {
                    check(d.next().code() == r.code()); // sticky
                    return r.code();
                }
                break;
            }
            check(r->payload.size() == r->header.length);
            check(r->header.length <= d.max_frame());
            run_payload(r->header, r->payload);
            out.push_back({r->header, {r->payload.begin(), r->payload.end()}});
        }
    } while (off < in.size());
    return errc::again;
}

// A busy owner: reacts to every callback with the calls a real relay/connector makes.
struct fuzz_owner : mux_handler {
    mux* m = nullptr;
    uint32_t step = 0;
    uint32_t pull_budget = 256 * 1024; // total bytes offered, so produce() loops end

    void on_open(uint32_t sid, std::string_view app, std::string_view target) override {
        check(app.size() <= 255 && target.size() <= 255);
        if (++step % 4 == 0) {
            m->open_fail(sid, reason::refused, "fuzz refused");
        } else {
            m->open_ack(sid);
            m->mark_readable(sid);
        }
    }
    void on_data(uint32_t sid, std::span<const std::byte> b) override {
        check(!b.empty());
        switch (++step % 5) {
        case 0:
            break; // slow reader: credit not returned
        case 1:
            m->reset(sid, reason::cancelled, "fuzz reset");
            break;
        default:
            m->consumed(sid, b.size());
            m->mark_readable(sid);
        }
    }
    void on_fin(uint32_t sid) override { m->finish(sid); }
    void on_reset(uint32_t, reason r, std::string_view) override { check(!to_string(r).empty()); }
    std::size_t pull(uint32_t sid, std::span<std::byte> dst) override {
        std::size_t n = std::min<std::size_t>({dst.size(), pull_budget, 3000 + sid % 5000});
        std::memset(dst.data(), int(sid & 0xff), n);
        pull_budget -= uint32_t(n);
        if (++step % 7 == 0) {
            m->finish(sid);
        }
        return n;
    }
};

void check_produced(std::span<const std::byte> out, uint32_t max_frame) {
    frame_decoder d(max_frame);
    d.feed(out);
    std::size_t total = 0;
    for (auto f = d.next(); f.ok(); f = d.next()) {
        total += k_header_size + f->header.length;
    }
    check(total == out.size()); // whole valid frames only
}

void run_mux(role side, std::span<const std::byte> in, std::size_t chunk) {
    mux_limits l;
    l.max_streams = 8;
    l.initial_window = 4096;
    l.max_control_queue = 64;
    fuzz_owner owner;
    mux m(side, l, owner);
    owner.m = &m;
    uint64_t now = 1'000'000'000;
    static std::byte out[64 * 1024];
    if (side == role::relay) {
        for (int i = 0; i < 4; ++i) {
            auto sid = m.open("app", "host:1", now);
            check(sid.ok());
            m.mark_readable(*sid);
        }
        m.ping(42);
    }
    std::size_t off = 0;
    do {
        std::size_t n = chunk == 0 ? in.size() : std::min(chunk, in.size() - off);
        auto r = m.receive(in.subspan(off, n), now);
        off += n;
        now += 3'000'000; // 3 ms per chunk: the open/reset bucket refills a little
        check(m.stream_count() <= l.max_streams);
        for (uint32_t sid = 1; sid < 64; sid += 2) {
            check(m.send_window(sid) <= k_max_window);
            check(m.recv_window(sid) <= k_max_window);
        }
        if (!r.ok()) {
            check(r.code() != errc::again && r.code() != errc::ok);
            m.goaway(goaway_reason(r.code()), r.err().detail);
            check_produced({out, m.produce(out)}, l.max_frame);
            return;
        }
        std::size_t p = m.produce(out);
        check(p <= sizeof(out));
        check_produced({out, p}, l.max_frame);
    } while (off < in.size());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) {
        return 0;
    }
    std::size_t chunk = data[0] % 64; // 0: whole input at once
    std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data + 1), size - 1);

    std::vector<seen_frame> whole;
    std::vector<seen_frame> split;
    errc e_whole = decode_all(in, 0, whole);
    errc e_split = decode_all(in, chunk, split);
    check(e_whole == e_split);
    check(whole.size() == split.size());
    for (std::size_t i = 0; i < whole.size(); ++i) {
        check(whole[i].header.type == split[i].header.type);
        check(whole[i].header.stream_id == split[i].header.stream_id);
        check(whole[i].header.length == split[i].header.length);
        check(whole[i].payload == split[i].payload);
    }
    run_mux(role::relay, in, chunk);
    run_mux(role::connector, in, chunk);
    return 0;
}
