#include "dataplane/net/tcp_wire.hh"

#include "dataplane/net/checksum.hh"
#include "dataplane/net/detail/wire.hh"
#include "dataplane/net/ipv4.hh"

#include <algorithm>

namespace apprelay::net {

using detail::load16;
using detail::load32;
using detail::load8;
using detail::store16;
using detail::store32;
using detail::store8;

namespace {
constexpr uint8_t k_opt_eol = 0;
constexpr uint8_t k_opt_nop = 1;
constexpr uint8_t k_opt_mss = 2;
constexpr uint8_t k_opt_wscale = 3;
constexpr uint8_t k_opt_sack_permitted = 4;
constexpr uint8_t k_opt_sack = 5;
constexpr uint8_t k_opt_timestamps = 8;
} // namespace

tcp_status parse_tcp_options(std::span<const std::byte> o, tcp_options& out) noexcept {
    std::size_t i = 0;
    while (i < o.size()) {
        const uint8_t kind = load8(o.data() + i);
        if (kind == k_opt_eol) {
            break;
        }
        if (kind == k_opt_nop) {
            ++i;
            continue;
        }
        // RFC 9293 3.2: every other option has a length octet counting kind and length.
        if (i + 1 >= o.size()) {
            return tcp_status::bad_options;
        }
        const std::size_t len = load8(o.data() + i + 1);
        if (len < 2 || len > o.size() - i) {
            return tcp_status::bad_options;
        }
        const std::byte* body = o.data() + i + 2;
        switch (kind) {
        case k_opt_mss:
            if (len != 4) {
                return tcp_status::bad_options;
            }
            out.mss = load16(body);
            break;
        case k_opt_wscale:
            if (len != 3) {
                return tcp_status::bad_options;
            }
            // RFC 7323 2.3: a shift above 14 is used as 14 (and may be logged).
            out.wscale = std::min<uint8_t>(load8(body), k_wscale_max);
            break;
        case k_opt_sack_permitted:
            if (len != 2) {
                return tcp_status::bad_options;
            }
            out.sack_permitted = true;
            break;
        case k_opt_sack:
            // RFC 2018 3: 2 + 8n bytes, n >= 1. Blocks are accepted and ignored.
            if (len < 10 || (len - 2) % 8 != 0) {
                return tcp_status::bad_options;
            }
            break;
        case k_opt_timestamps:
            if (len != 10) {
                return tcp_status::bad_options;
            }
            out.has_timestamps = true;
            out.ts_val = load32(body);
            out.ts_ecr = load32(body + 4);
            break;
        default:
            break; // RFC 9293 3.2: unknown options are skipped by their length
        }
        i += len;
    }
    return tcp_status::ok;
}

tcp_status parse_tcp(std::span<const std::byte> seg, uint32_t src, uint32_t dst,
                     tcp_segment& out) noexcept {
    if (seg.size() < k_tcp_header) {
        return tcp_status::bad_header;
    }
    const std::byte* d = seg.data();
    const std::size_t doff = std::size_t(load8(d + 12) >> 4) * 4;
    if (doff < k_tcp_header || doff > seg.size()) {
        return tcp_status::bad_header;
    }
    const uint64_t sum =
        csum_add(seg, csum_pseudo_ipv4(src, dst, k_proto_tcp, static_cast<uint16_t>(seg.size())));
    if (csum_fold(sum) != 0) {
        return tcp_status::bad_checksum;
    }
    out.src_port = load16(d);
    out.dst_port = load16(d + 2);
    out.seq = load32(d + 4);
    out.ack = load32(d + 8);
    out.flags = load8(d + 13) & 0x3f;
    out.window = load16(d + 14);
    out.opt = tcp_options{};
    out.payload = seg.subspan(doff);
    if (out.src_port == 0 || out.dst_port == 0) {
        return tcp_status::bad_header;
    }
    return parse_tcp_options(seg.subspan(k_tcp_header, doff - k_tcp_header), out.opt);
}

std::size_t write_syn_options(std::byte* p, uint16_t mss, uint8_t wscale,
                              bool sack_permitted) noexcept {
    std::size_t n = 0;
    store8(p + n++, k_opt_mss);
    store8(p + n++, 4);
    store16(p + n, mss);
    n += 2;
    if (wscale != k_wscale_none) {
        store8(p + n++, k_opt_nop);
        store8(p + n++, k_opt_wscale);
        store8(p + n++, 3);
        store8(p + n++, wscale);
    }
    if (sack_permitted) {
        store8(p + n++, k_opt_nop);
        store8(p + n++, k_opt_nop);
        store8(p + n++, k_opt_sack_permitted);
        store8(p + n++, 2);
    }
    return n;
}

std::size_t write_ts_option(std::byte* p, uint32_t ts_val, uint32_t ts_ecr) noexcept {
    store8(p, k_opt_nop);
    store8(p + 1, k_opt_nop);
    store8(p + 2, k_opt_timestamps);
    store8(p + 3, 10);
    store32(p + 4, ts_val);
    store32(p + 8, ts_ecr);
    return k_ts_option_len;
}

void write_tcp_header(std::byte* d, uint16_t src_port, uint16_t dst_port, uint32_t seq,
                      uint32_t ack, uint8_t flags, uint16_t window,
                      std::size_t options_len) noexcept {
    store16(d, src_port);
    store16(d + 2, dst_port);
    store32(d + 4, seq);
    store32(d + 8, ack);
    store8(d + 12, static_cast<uint8_t>(((k_tcp_header + options_len) / 4) << 4));
    store8(d + 13, flags);
    store16(d + 14, window);
    store16(d + 16, 0);
    store16(d + 18, 0);
}

void finish_tcp_checksum(std::span<std::byte> seg, uint32_t src, uint32_t dst) noexcept {
    const uint64_t sum =
        csum_add(seg, csum_pseudo_ipv4(src, dst, k_proto_tcp, static_cast<uint16_t>(seg.size())));
    store16(seg.data() + 16, csum_fold(sum));
}

} // namespace apprelay::net
