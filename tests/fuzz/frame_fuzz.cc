// libFuzzer target for the tunnel frame codec (dataplane/tunnel/frame.cc).
// Input: byte 0 picks the chunk size, the rest is wire bytes fed to frame_decoder in chunks.
// Checks: no crash/over-read (ASan/UBSan); chunked decoding yields exactly the frames and the
// error of one-shot decoding; every accepted payload re-encodes to the same bytes.
#include "dataplane/tunnel/frame.hh"

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
    return 0;
}
