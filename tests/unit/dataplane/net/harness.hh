#pragma once
// Test harness for dataplane/net: a link that captures frames, an event recorder, and helpers
// that craft Ethernet/ARP/IPv4/ICMP/TCP frames (with correct or deliberately broken fields) and
// parse what the stack sends. The parser is independent of the stack's own parsing code (only
// the RFC 1071 checksum is shared, and it has its own known-answer test).
#include "dataplane/net/checksum.hh"
#include "dataplane/net/stack.hh"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace apprelay::net::testing {

using bytes = std::vector<std::byte>;

inline constexpr uint8_t k_fin = 0x01, k_syn = 0x02, k_rst = 0x04, k_psh = 0x08, k_ack = 0x10;

inline uint32_t ip4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
    return (uint32_t(a) << 24) | (uint32_t(b) << 16) | (uint32_t(c) << 8) | d;
}

inline void put16(bytes& b, std::size_t at, uint16_t v) {
    b[at] = std::byte(v >> 8);
    b[at + 1] = std::byte(v & 0xff);
}
inline void put32(bytes& b, std::size_t at, uint32_t v) {
    put16(b, at, uint16_t(v >> 16));
    put16(b, at + 2, uint16_t(v & 0xffff));
}
inline uint16_t get16(const bytes& b, std::size_t at) {
    return uint16_t((unsigned(b[at]) << 8) | unsigned(b[at + 1]));
}
inline uint32_t get32(const bytes& b, std::size_t at) {
    return (uint32_t(get16(b, at)) << 16) | get16(b, at + 2);
}

inline bytes pattern(std::size_t n, uint32_t seed = 1) {
    bytes b(n);
    uint32_t x = seed * 2654435761u + 1;
    for (auto& c : b) {
        x = x * 1103515245u + 12345u;
        c = std::byte(x >> 24);
    }
    return b;
}

// A link whose frames are kept for inspection. fail_alloc simulates an exhausted TX pool.
class frame_link final : public link {
public:
    std::span<std::byte> tx_alloc(std::size_t len) override {
        if (fail_alloc) {
            return {};
        }
        _buf.assign(len, std::byte{0});
        return _buf;
    }
    void tx_commit(std::size_t len) override {
        frames.emplace_back(_buf.begin(), _buf.begin() + static_cast<std::ptrdiff_t>(len));
    }
    std::vector<bytes> take() {
        std::vector<bytes> out;
        out.swap(frames);
        return out;
    }

    std::vector<bytes> frames;
    bool fail_alloc = false;

private:
    bytes _buf;
};

// Records every callback; optionally starts receiving on accept/connect.
class recorder final : public tcp_events {
public:
    struct conn_log {
        bytes data;
        std::optional<int> recv_end;
        std::vector<int> sent;
        std::optional<int> connect;
        int recv_calls = 0;
    };

    void on_accept(sock_id l, sock_id c, uint32_t ip, uint16_t port) override {
        accepted.push_back(c);
        listener = l;
        peer_ip = ip;
        peer_port = port;
        if (auto_recv && st != nullptr) {
            st->start_recv(c);
        }
    }
    void on_connect(sock_id c, int res) override {
        conns[c.index].connect = res;
        if (auto_recv && st != nullptr && res == 0) {
            st->start_recv(c);
        }
    }
    void on_recv(sock_id c, std::span<const std::byte> d) override {
        auto& l = conns[c.index];
        l.data.insert(l.data.end(), d.begin(), d.end());
        ++l.recv_calls;
        if (on_recv_hook) {
            on_recv_hook(c);
        }
    }
    void on_recv_end(sock_id c, int res) override { conns[c.index].recv_end = res; }
    void on_sent(sock_id c, int res) override {
        conns[c.index].sent.push_back(res);
        if (on_sent_hook) {
            on_sent_hook(c, res);
        }
    }

    conn_log& of(sock_id c) { return conns[c.index]; }

    stack* st = nullptr;
    bool auto_recv = true;
    std::vector<sock_id> accepted;
    sock_id listener;
    uint32_t peer_ip = 0;
    uint16_t peer_port = 0;
    std::map<uint32_t, conn_log> conns;
    std::function<void(sock_id)> on_recv_hook;
    std::function<void(sock_id, int)> on_sent_hook;
};

struct l2 {
    mac_addr src{};
    mac_addr dst{};
};

inline bytes eth(const l2& a, uint16_t type, const bytes& payload) {
    bytes f(14);
    std::memcpy(f.data(), a.dst.data(), 6);
    std::memcpy(f.data() + 6, a.src.data(), 6);
    put16(f, 12, type);
    f.insert(f.end(), payload.begin(), payload.end());
    return f;
}

struct ip_spec {
    uint32_t src = 0;
    uint32_t dst = 0;
    uint8_t proto = 6;
    uint8_t ttl = 64;
    uint16_t frag = 0x4000; // DF
    int total_len = -1;     // override
    uint8_t version_ihl = 0x45;
    bool bad_checksum = false;
};

inline bytes ipv4(const ip_spec& s, const bytes& payload) {
    const std::size_t ihl = std::size_t(s.version_ihl & 0x0f) * 4;
    bytes h(std::max<std::size_t>(ihl, 20), std::byte{0});
    h[0] = std::byte{s.version_ihl};
    put16(h, 2, uint16_t(s.total_len >= 0 ? s.total_len : int(h.size() + payload.size())));
    put16(h, 4, 0x1234);
    put16(h, 6, s.frag);
    h[8] = std::byte{s.ttl};
    h[9] = std::byte{s.proto};
    put32(h, 12, s.src);
    put32(h, 16, s.dst);
    uint16_t c = csum(std::span<const std::byte>(h.data(), h.size()));
    if (s.bad_checksum) {
        c ^= 0x0101;
    }
    put16(h, 10, c);
    h.insert(h.end(), payload.begin(), payload.end());
    return h;
}

struct tcp_spec {
    uint16_t sport = 0;
    uint16_t dport = 0;
    uint32_t seq = 0;
    uint32_t ack = 0;
    uint8_t flags = 0;
    uint16_t window = 65535;
    bytes options;
    bytes payload;
    bool bad_checksum = false;
    int doff_words = -1; // override data offset
};

inline bytes tcp(const tcp_spec& s, uint32_t src_ip, uint32_t dst_ip) {
    bytes opts = s.options;
    while (opts.size() % 4 != 0) {
        opts.push_back(std::byte{0});
    }
    // Sized once (growing a 20-byte vector trips a GCC 12 -Warray-bounds false positive).
    bytes t(20 + opts.size() + s.payload.size(), std::byte{0});
    std::copy(opts.begin(), opts.end(), t.begin() + 20);
    std::copy(s.payload.begin(), s.payload.end(),
              t.begin() + 20 + static_cast<std::ptrdiff_t>(opts.size()));
    put16(t, 0, s.sport);
    put16(t, 2, s.dport);
    put32(t, 4, s.seq);
    put32(t, 8, s.ack);
    const int doff = s.doff_words >= 0 ? s.doff_words : int((20 + opts.size()) / 4);
    t[12] = std::byte(uint8_t(doff << 4));
    t[13] = std::byte{s.flags};
    put16(t, 14, s.window);
    uint64_t sum = csum_pseudo_ipv4(src_ip, dst_ip, 6, uint16_t(t.size()));
    uint16_t c = csum_fold(csum_add(std::span<const std::byte>(t.data(), t.size()), sum));
    if (s.bad_checksum) {
        c ^= 0x0202;
    }
    put16(t, 16, c);
    return t;
}

inline bytes opt_mss(uint16_t mss) {
    return {std::byte{2}, std::byte{4}, std::byte(mss >> 8), std::byte(mss & 0xff)};
}
inline bytes opt_ws(uint8_t ws) {
    return {std::byte{1}, std::byte{3}, std::byte{3}, std::byte{ws}};
}
inline bytes opt_sackok() {
    return {std::byte{1}, std::byte{1}, std::byte{4}, std::byte{2}};
}
inline bytes opt_ts(uint32_t val, uint32_t ecr) {
    bytes o = {std::byte{1}, std::byte{1}, std::byte{8}, std::byte{10}};
    o.resize(12);
    put32(o, 4, val);
    put32(o, 8, ecr);
    return o;
}
inline bytes cat(std::initializer_list<bytes> parts) {
    bytes out;
    for (const auto& p : parts) {
        out.insert(out.end(), p.begin(), p.end());
    }
    return out;
}

inline bytes arp(uint16_t op, const mac_addr& sha, uint32_t spa, const mac_addr& tha,
                 uint32_t tpa) {
    bytes a(28);
    put16(a, 0, 1);
    put16(a, 2, 0x0800);
    a[4] = std::byte{6};
    a[5] = std::byte{4};
    put16(a, 6, op);
    std::memcpy(a.data() + 8, sha.data(), 6);
    put32(a, 14, spa);
    std::memcpy(a.data() + 18, tha.data(), 6);
    put32(a, 24, tpa);
    return a;
}

// What the stack sent, decoded without the stack's parser.
struct out_frame {
    mac_addr dst{};
    mac_addr src{};
    uint16_t type = 0;
    // IPv4
    uint32_t src_ip = 0, dst_ip = 0;
    uint8_t proto = 0;
    bool ip_csum_ok = false;
    // TCP
    uint16_t sport = 0, dport = 0;
    uint32_t seq = 0, ack = 0;
    uint8_t flags = 0;
    uint16_t window = 0;
    bytes options;
    bytes payload; // TCP or ICMP payload, or the ARP packet
    bool l4_csum_ok = false;
    // Options decoded from a SYN.
    uint16_t mss = 0;
    int wscale = -1;
    bool sack_ok = false;
    bool has_ts = false;
    uint32_t ts_val = 0;
    uint32_t ts_ecr = 0;
};

inline out_frame decode(const bytes& f) {
    out_frame o;
    if (f.size() < 14) {
        return o;
    }
    std::memcpy(o.dst.data(), f.data(), 6);
    std::memcpy(o.src.data(), f.data() + 6, 6);
    o.type = get16(f, 12);
    if (o.type == 0x0806) {
        o.payload.assign(f.begin() + 14, f.begin() + std::min<std::ptrdiff_t>(42, f.size()));
        return o;
    }
    if (o.type != 0x0800 || f.size() < 34) {
        return o;
    }
    const std::size_t ihl = std::size_t(unsigned(f[14]) & 0xf) * 4;
    const std::size_t total = get16(f, 16);
    o.ip_csum_ok = csum(std::span<const std::byte>(f.data() + 14, ihl)) == 0;
    o.proto = uint8_t(f[23]);
    o.src_ip = get32(f, 26);
    o.dst_ip = get32(f, 30);
    const std::size_t l4 = 14 + ihl;
    const std::size_t l4_len = total - ihl;
    std::span<const std::byte> seg(f.data() + l4, l4_len);
    if (o.proto == 1) {
        o.l4_csum_ok = csum(seg) == 0;
        o.payload.assign(seg.begin(), seg.end());
        return o;
    }
    o.l4_csum_ok =
        csum_fold(csum_add(seg, csum_pseudo_ipv4(o.src_ip, o.dst_ip, 6, uint16_t(l4_len)))) == 0;
    o.sport = get16(f, l4);
    o.dport = get16(f, l4 + 2);
    o.seq = get32(f, l4 + 4);
    o.ack = get32(f, l4 + 8);
    const std::size_t doff = std::size_t(unsigned(f[l4 + 12]) >> 4) * 4;
    o.flags = uint8_t(f[l4 + 13]);
    o.window = get16(f, l4 + 14);
    o.options.assign(f.begin() + std::ptrdiff_t(l4 + 20), f.begin() + std::ptrdiff_t(l4 + doff));
    o.payload.assign(f.begin() + std::ptrdiff_t(l4 + doff),
                     f.begin() + std::ptrdiff_t(l4 + l4_len));
    for (std::size_t i = 0; i < o.options.size();) {
        const auto k = unsigned(o.options[i]);
        if (k == 0) {
            break;
        }
        if (k == 1) {
            ++i;
            continue;
        }
        const auto len = unsigned(o.options[i + 1]);
        if (k == 2) {
            o.mss = get16(o.options, i + 2);
        } else if (k == 3) {
            o.wscale = int(unsigned(o.options[i + 2]));
        } else if (k == 4) {
            o.sack_ok = true;
        } else if (k == 8) {
            o.has_ts = true;
            o.ts_val = get32(o.options, i + 2);
            o.ts_ecr = get32(o.options, i + 6);
        }
        i += len;
    }
    return o;
}

} // namespace apprelay::net::testing
