// libFuzzer target for the user-space TCP/IP stack (dataplane/net). A stack with a listener on
// port 80 first completes one handshake from crafted frames; then the input is a list of ops:
//   0x00 len16 bytes    raw Ethernet frame, as is (checksums most likely wrong)
//   0x01 len16 bytes    raw frame with the IPv4 header and TCP/ICMP checksums fixed up
//   0x02 t8             advance the clock by t * 7 ms and run the timers
//   0x03 ...            TCP segment on the established connection's 4-tuple, checksummed:
//                       flags8 seq_delta16 ack_delta16 window16 optlen8 opts paylen8 payload
//   0x04 act8           an application call: send / pause / start / shutdown / close / abort /
//                       connect / listen-close (act selects, low bits pick the connection)
// Checks: no crash or sanitizer report; connections() never exceeds max_connections; every
// frame the stack sends has valid IPv4 and TCP/ICMP checksums; memory stays bounded.
#include "dataplane/net/checksum.hh"
#include "dataplane/net/stack.hh"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace {

using namespace apprelay;
using namespace apprelay::net;
using bytes = std::vector<std::byte>;

constexpr mac_addr k_our_mac{0x02, 0, 0, 0, 0, 1};
constexpr mac_addr k_peer_mac{0x02, 0, 0, 0, 0, 2};
constexpr uint32_t k_our_ip = 0x0a000001;
constexpr uint32_t k_peer_ip = 0x0a000002;
constexpr uint16_t k_port = 80;
constexpr uint16_t k_peer_port = 40000;
constexpr uint64_t k_ms = 1'000'000;

void check(bool ok) {
    if (!ok) {
        std::abort();
    }
}

uint16_t get16(const std::byte* p) {
    return uint16_t((unsigned(p[0]) << 8) | unsigned(p[1]));
}
uint32_t get32(const std::byte* p) {
    return (uint32_t(get16(p)) << 16) | get16(p + 2);
}
void put16(std::byte* p, uint16_t v) {
    p[0] = std::byte(v >> 8);
    p[1] = std::byte(v & 0xff);
}
void put32(std::byte* p, uint32_t v) {
    put16(p, uint16_t(v >> 16));
    put16(p + 2, uint16_t(v));
}

// Every frame the stack emits must be well formed.
void check_out_frame(std::span<const std::byte> f) {
    check(f.size() >= 14);
    const uint16_t type = get16(f.data() + 12);
    if (type == 0x0806) {
        check(f.size() >= 42);
        return;
    }
    check(type == 0x0800 && f.size() >= 34);
    const std::size_t ihl = std::size_t(unsigned(f[14]) & 0xf) * 4;
    const std::size_t total = get16(f.data() + 16);
    check(ihl == 20 && total + 14 <= f.size());
    check(csum(f.subspan(14, ihl)) == 0);
    const auto l4 = f.subspan(14 + ihl, total - ihl);
    const uint8_t proto = uint8_t(f[23]);
    if (proto == 1) {
        check(csum(l4) == 0);
    } else {
        check(proto == 6 && l4.size() >= 20);
        const uint64_t s =
            csum_pseudo_ipv4(get32(f.data() + 26), get32(f.data() + 30), 6, uint16_t(l4.size()));
        check(csum_fold(csum_add(l4, s)) == 0);
    }
}

class capture_link final : public link {
public:
    std::span<std::byte> tx_alloc(std::size_t len) override {
        if (len > sizeof(_buf)) {
            return {};
        }
        return {_buf, len};
    }
    void tx_commit(std::size_t len) override {
        check_out_frame({_buf, len});
        last.assign(_buf, _buf + len);
        ++frames;
    }
    bytes last;
    std::size_t frames = 0;

private:
    std::byte _buf[2048];
};

// A static, never-modified send source: any send that starts at the right offset honours the
// contract (data unchanged until on_sent; after a short on_sent the next send begins with the
// rest). Each send is copied into a heap buffer of exactly its size, freed at on_sent (and
// replaced at the next send after close()): ASan reports any read of it by the stack afterwards.
std::byte g_src[256 * 1024];

struct app final : tcp_events {
    stack* st = nullptr;
    struct conn {
        sock_id id;
        std::size_t off = 0;
        std::unique_ptr<std::byte[]> buf; // the outstanding send's data
        bool sending = false;
        bool live = false;
    };
    conn conns[8];

    conn* find(sock_id id) {
        for (auto& c : conns) {
            if (c.live && c.id == id) {
                return &c;
            }
        }
        return nullptr;
    }
    void add(sock_id id) {
        for (auto& c : conns) {
            if (!c.live) {
                c = conn{id, 0, nullptr, false, true};
                return;
            }
        }
        st->close(id, true);
    }
    void on_accept(sock_id, sock_id c, uint32_t, uint16_t) override {
        add(c);
        st->start_recv(c);
    }
    void on_connect(sock_id c, int res) override {
        if (res == 0) {
            add(c);
        }
    }
    void on_recv(sock_id, std::span<const std::byte> d) override {
        volatile std::byte sink{};
        for (auto b : d) {
            sink = b; // touch every byte: ASan catches a span past its frame
        }
        (void)sink;
    }
    void on_recv_end(sock_id, int) override {}
    void on_sent(sock_id id, int res) override {
        conn* c = find(id);
        check(c != nullptr && c->sending);
        c->sending = false;
        if (res < 0) {
            c->live = false;
            return;
        }
        c->off = (c->off + std::size_t(res)) % sizeof(g_src);
        c->buf.reset();
    }
};

bytes tcp_frame(uint8_t flags, uint32_t seq, uint32_t ack, uint16_t window,
                std::span<const std::byte> opts, std::span<const std::byte> payload) {
    const std::size_t optlen = (opts.size() + 3) / 4 * 4;
    const std::size_t tcp_len = 20 + optlen + payload.size();
    bytes f(14 + 20 + tcp_len, std::byte{0});
    std::memcpy(f.data(), k_our_mac.data(), 6);
    std::memcpy(f.data() + 6, k_peer_mac.data(), 6);
    put16(f.data() + 12, 0x0800);
    std::byte* ip = f.data() + 14;
    ip[0] = std::byte{0x45};
    put16(ip + 2, uint16_t(20 + tcp_len));
    put16(ip + 6, 0x4000);
    ip[8] = std::byte{64};
    ip[9] = std::byte{6};
    put32(ip + 12, k_peer_ip);
    put32(ip + 16, k_our_ip);
    put16(ip + 10, csum({ip, 20}));
    std::byte* t = ip + 20;
    put16(t, k_peer_port);
    put16(t + 2, k_port);
    put32(t + 4, seq);
    put32(t + 8, ack);
    t[12] = std::byte(uint8_t(((20 + optlen) / 4) << 4));
    t[13] = std::byte{flags};
    put16(t + 14, window);
    if (!opts.empty()) {
        std::memcpy(t + 20, opts.data(), opts.size());
    }
    if (!payload.empty()) {
        std::memcpy(t + 20 + optlen, payload.data(), payload.size());
    }
    put16(t + 16, csum_fold(csum_add({t, tcp_len},
                                     csum_pseudo_ipv4(k_peer_ip, k_our_ip, 6, uint16_t(tcp_len)))));
    return f;
}

// Fixes the IPv4 header checksum and, if the datagram is TCP or ICMP and complete, the
// transport checksum, so the fuzzer gets past the checksum checks.
void fix_checksums(bytes& f) {
    if (f.size() < 34 || get16(f.data() + 12) != 0x0800) {
        return;
    }
    std::byte* ip = f.data() + 14;
    const std::size_t ihl = std::size_t(unsigned(ip[0]) & 0xf) * 4;
    if (ihl < 20 || 14 + ihl > f.size()) {
        return;
    }
    put16(ip + 10, 0);
    put16(ip + 10, csum({ip, ihl}));
    const std::size_t total = get16(ip + 2);
    if (total < ihl || 14 + total > f.size()) {
        return;
    }
    std::byte* l4 = ip + ihl;
    const std::size_t l4_len = total - ihl;
    if (ip[9] == std::byte{6} && l4_len >= 20) {
        put16(l4 + 16, 0);
        put16(l4 + 16,
              csum_fold(csum_add({l4, l4_len}, csum_pseudo_ipv4(get32(ip + 12), get32(ip + 16), 6,
                                                                uint16_t(l4_len)))));
    } else if (ip[9] == std::byte{1} && l4_len >= 8) {
        put16(l4 + 2, 0);
        put16(l4 + 2, csum({l4, l4_len}));
    }
}

struct reader {
    const uint8_t* p;
    std::size_t n;
    bool empty() const { return n == 0; }
    uint8_t u8() {
        if (n == 0) {
            return 0;
        }
        --n;
        return *p++;
    }
    uint16_t u16() { return uint16_t((u8() << 8) | u8()); }
    std::span<const std::byte> take(std::size_t k) {
        k = std::min(k, n);
        std::span<const std::byte> s(reinterpret_cast<const std::byte*>(p), k);
        p += k;
        n -= k;
        return s;
    }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
    stack_config cfg;
    cfg.mac = k_our_mac;
    cfg.ipv4 = k_our_ip;
    cfg.arp_max_entries = 16;
    cfg.tcp.rcv_buf = 16 * 1024;
    cfg.tcp.syn_backlog = 4;
    cfg.tcp.max_connections = 16;
    cfg.tcp.keepalive_idle_ms = 5000;
    capture_link lk;
    app ev;
    stack st(cfg, &lk, &ev);
    ev.st = &st;
    uint64_t now = 1000 * k_ms;
    auto listener = st.listen(k_port);
    check(listener.ok());

    // One connection by crafted frames: SYN, read the SYN-ACK's ISN, ACK.
    const std::byte syn_opts[] = {std::byte{2}, std::byte{4}, std::byte{5}, std::byte{0xb4},
                                  std::byte{1}, std::byte{3}, std::byte{3}, std::byte{2}};
    uint32_t peer_seq = 1000;
    bytes syn = tcp_frame(0x02, peer_seq, 0, 65535, syn_opts, {});
    st.input(syn, now);
    check(lk.last.size() >= 54);
    uint32_t our_seq = get32(lk.last.data() + 34 + 4) + 1;
    peer_seq += 1;
    bytes ack = tcp_frame(0x10, peer_seq, our_seq, 65535, {}, {});
    st.input(ack, now);
    check(st.connections() == 1);

    reader r{data, size};
    while (!r.empty()) {
        switch (r.u8() % 5) {
        case 0: {
            const auto f = r.take(r.u16() % 1600);
            st.input(f, now);
            break;
        }
        case 1: {
            const auto s = r.take(r.u16() % 1600);
            bytes f(s.begin(), s.end());
            fix_checksums(f);
            st.input(f, now);
            break;
        }
        case 2:
            now += uint64_t(r.u8()) * 7 * k_ms;
            st.run_timers(now);
            break;
        case 3: {
            const uint8_t flags = r.u8();
            const auto seq_d = int16_t(r.u16());
            const auto ack_d = int16_t(r.u16());
            const uint16_t window = r.u16();
            const auto opts = r.take(r.u8() % 41);
            const auto payload = r.take(r.u8() * 8u);
            const uint32_t seq = peer_seq + uint32_t(int32_t(seq_d));
            bytes f =
                tcp_frame(flags, seq, our_seq + uint32_t(int32_t(ack_d)), window, opts, payload);
            st.input(f, now);
            if (seq_d == 0) {
                peer_seq += uint32_t(payload.size()) + ((flags & 0x03) ? 1 : 0);
            }
            if (ack_d > 0) {
                our_seq += uint32_t(ack_d);
            }
            break;
        }
        case 4: {
            const uint8_t act = r.u8();
            app::conn& c = ev.conns[act & 7];
            switch (act >> 4) {
            case 0:
            case 1:
                if (c.live && !c.sending) {
                    const std::size_t len =
                        std::min<std::size_t>(sizeof(g_src) - c.off, 1 + (act >> 3) * 3000u);
                    c.buf.reset(new std::byte[len]);
                    std::memcpy(c.buf.get(), g_src + c.off, len);
                    c.sending = st.send(c.id, {c.buf.get(), len});
                }
                break;
            case 2:
                if (c.live) {
                    st.pause_recv(c.id);
                }
                break;
            case 3:
                if (c.live) {
                    st.start_recv(c.id);
                }
                break;
            case 4:
                if (c.live) {
                    st.shutdown_write(c.id);
                }
                break;
            case 5:
            case 6:
                if (c.live) {
                    st.close(c.id, (act >> 4) == 6);
                    c.live = false;
                }
                break;
            case 7:
                (void)st.connect(k_peer_ip + (act & 3), uint16_t(8000 + (act & 7)), now);
                break;
            default:
                break;
            }
            break;
        }
        default:
            break;
        }
        check(st.connections() <= cfg.tcp.max_connections);
        (void)st.next_timer_ns();
    }
    // Drain: every timer terminates (no livelock), memory stays bounded.
    for (int i = 0; i < 64; ++i) {
        const uint64_t next = st.next_timer_ns();
        if (next == UINT64_MAX) {
            break;
        }
        now = std::max(now + 1, next);
        st.run_timers(now);
    }
    check(st.memory_bytes() < 64u * 1024 * 1024);
    return 0;
}
