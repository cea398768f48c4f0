// Ethernet, ARP, IPv4 and ICMP input; the public API; connection lifecycle; timers.
#include "dataplane/net/stack.hh"

#include "dataplane/base/token_bucket.hh"
#include "dataplane/net/checksum.hh"
#include "dataplane/net/detail/stack_impl.hh"
#include "dataplane/net/ether.hh"
#include "dataplane/net/icmp.hh"
#include "dataplane/net/ipv4.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace apprelay::net {

using detail::k_never;
using detail::tcb;
using detail::tcp_state;

const char* counter_name(counter c) noexcept {
    static constexpr const char* k_names[] = {
#define APPRELAY_NET_COUNTER_NAME(n) #n,
        APPRELAY_NET_COUNTERS(APPRELAY_NET_COUNTER_NAME)
#undef APPRELAY_NET_COUNTER_NAME
    };
    const auto i = static_cast<std::size_t>(c);
    return i < std::size(k_names) ? k_names[i] : "unknown";
}

namespace {

uint64_t random64() {
    // Start-up only: keys for ISNs, SYN cookies and hash tables (RFC 6528 wants them secret).
    std::random_device rd;
    return (uint64_t(rd()) << 32) ^ rd();
}

uint32_t netmask(uint8_t prefix) noexcept {
    return prefix == 0 ? 0 : prefix >= 32 ? UINT32_MAX : ~((1u << (32 - prefix)) - 1);
}

} // namespace

stack::impl::impl(const stack_config& c, link* l, tcp_events* e)
    : _cfg(c), _link(l), _ev(e), _mask(netmask(c.prefix_len)), _key{random64(), random64()},
      _arp(c.arp_max_entries, random64()),
      _conns(c.tcp.max_connections == 0 ? 1 : c.tcp.max_connections) {
    // An MSS above what the MTU carries would make us emit frames the link cannot send.
    const uint16_t mtu_mss = static_cast<uint16_t>(std::max<int>(c.mtu, 576) - 40);
    _cfg.tcp.mss = std::clamp<uint16_t>(_cfg.tcp.mss, k_min_mss, mtu_mss);
    _cfg.tcp.wscale = std::min<uint8_t>(_cfg.tcp.wscale, k_wscale_max);
    _cfg.tcp.rcv_buf = std::clamp<uint32_t>(_cfg.tcp.rcv_buf, 2u * _cfg.tcp.mss, 1u << 30);
    _cfg.tcp.rto_min_ms = std::max<uint32_t>(_cfg.tcp.rto_min_ms, 1);
    _cfg.tcp.rto_max_ms = std::max(_cfg.tcp.rto_max_ms, _cfg.tcp.rto_min_ms);
    _ctl_tokens = int64_t(_cfg.tcp.ctl_replies_per_s) * int64_t(k_nanos_per_token);
    _ip_id = static_cast<uint16_t>(_key.k0);
    _next_port = static_cast<uint16_t>(k_ephemeral_first + (_key.k1 % 16384));
    _heap.reserve(64);
    _pending.reserve(64);
    _reap.reserve(64);
}

// ---------------------------------------------------------------------------------------------
// Frames

void stack::impl::on_frame(std::span<const std::byte> frame, uint64_t now) {
    bump(counter::rx_frames);
    eth_header eth;
    if (!parse_eth(frame, eth) || eth.type < 0x0600) {
        bump(counter::rx_bad_eth);
        return;
    }
    if (eth.dst != _cfg.mac && eth.dst != k_mac_broadcast) {
        bump(counter::rx_not_for_us);
        return;
    }
    const auto payload = frame.subspan(k_eth_header);
    if (eth.type == k_ethertype_arp) {
        arp_input(eth, payload, now);
        return;
    }
    if (eth.type != k_ethertype_ipv4) {
        bump(counter::rx_not_for_us);
        return;
    }
    ipv4_packet ip;
    switch (parse_ipv4(payload, ip)) {
    case ipv4_status::ok:
        break;
    case ipv4_status::bad_header:
        bump(counter::ip_bad_header);
        return;
    case ipv4_status::bad_checksum:
        bump(counter::ip_bad_checksum);
        return;
    case ipv4_status::fragment:
        bump(counter::ip_fragments_dropped);
        return;
    }
    if (ip.dst != _cfg.ipv4 || eth.dst != _cfg.mac) {
        // Only unicast to our address: no broadcast/multicast IP (RFC 1122 3.3.6 allows
        // ignoring them, and answering them is an amplification vector).
        bump(counter::rx_not_for_us);
        return;
    }
    if (is_martian_src(ip.src) || ip.src == _cfg.ipv4 || is_group_mac(eth.src)) {
        bump(counter::ip_bad_header);
        return;
    }
    // Passive peers are answered at the MAC they used, so they need no ARP round trip; on-link
    // senders refresh our cache as well (RFC 826 merge, RFC 1122 2.3.2.1 allows it).
    if (on_link(ip.src)) {
        arp_learn(ip.src, eth.src, false, now);
    }
    const received_frame rf{eth.src, ip.src, ip.dst};
    if (ip.proto == k_proto_tcp) {
        tcp_input(rf, ip.payload, now);
    } else if (ip.proto == k_proto_icmp) {
        icmp_input(rf, ip.payload);
    } else {
        bump(counter::ip_unknown_proto);
    }
}

std::span<std::byte> stack::impl::alloc_ipv4(const mac_addr& dst_mac, uint32_t dst_ip,
                                             uint8_t proto, std::size_t ip_payload) {
    const std::size_t len = k_eth_header + k_ipv4_header + ip_payload;
    std::span<std::byte> f = _link->tx_alloc(len);
    if (f.size() < len) {
        bump(counter::tx_nobufs);
        return {};
    }
    write_eth(f.data(), dst_mac, _cfg.mac, k_ethertype_ipv4);
    write_ipv4(f.data() + k_eth_header, _cfg.ipv4, dst_ip, proto, static_cast<uint16_t>(ip_payload),
               _ip_id++);
    return f.first(len);
}

void stack::impl::commit(std::size_t len) {
    _link->tx_commit(len);
    bump(counter::tx_frames);
}

bool stack::impl::ctl_allowed(uint64_t now) noexcept {
    const uint32_t rate = _cfg.tcp.ctl_replies_per_s;
    if (rate == 0) {
        bump(counter::tcp_ctl_ratelimited);
        return false;
    }
    const int64_t cap = int64_t(rate) * int64_t(k_nanos_per_token);
    _ctl_tokens = refill_tokens(_ctl_tokens, now - std::min(now, _ctl_refill_ns), rate, cap);
    _ctl_refill_ns = now;
    if (_ctl_tokens < int64_t(k_nanos_per_token)) {
        bump(counter::tcp_ctl_ratelimited);
        return false;
    }
    _ctl_tokens -= int64_t(k_nanos_per_token);
    return true;
}

bool stack::impl::on_link(uint32_t ip) const noexcept {
    return (ip & _mask) == (_cfg.ipv4 & _mask);
}

// ---------------------------------------------------------------------------------------------
// ARP

void stack::impl::arp_send(uint16_t op, const mac_addr& dst_mac, uint32_t dst_ip) {
    std::span<std::byte> f = _link->tx_alloc(k_eth_min_frame);
    if (f.size() < k_eth_min_frame) {
        bump(counter::tx_nobufs);
        return;
    }
    std::memset(f.data(), 0, k_eth_min_frame); // padding to the Ethernet minimum
    write_eth(f.data(), dst_mac, _cfg.mac, k_ethertype_arp);
    arp_packet p;
    p.op = op;
    p.sha = _cfg.mac;
    p.spa = _cfg.ipv4;
    p.tha = op == k_arp_reply ? dst_mac : mac_addr{};
    p.tpa = dst_ip;
    write_arp(f.data() + k_eth_header, p);
    commit(k_eth_min_frame);
}

void stack::impl::arp_learn(uint32_t ip, const mac_addr& mac, bool create, uint64_t now) {
    arp_entry* e = _arp.find(ip);
    if (e == nullptr) {
        if (!create) {
            return;
        }
        e = _arp.insert(ip, now);
        if (e == nullptr) {
            // Full of live entries: the peer is still reachable by replying to its frames.
            bump(counter::arp_cache_full);
            return;
        }
    }
    const bool was_pending = e->state == arp_entry::kind::pending;
    if (was_pending) {
        --_arp_pending;
    }
    e->state = arp_entry::kind::resolved;
    e->mac = mac;
    e->deadline_ns = now + uint64_t(_cfg.arp_timeout_ms) * 1'000'000ull;
    e->tries = 0;
    if (!was_pending || e->waiter == UINT32_MAX) {
        return;
    }
    // The one queued segment for this address: the connect's SYN goes out now.
    const uint32_t w = e->waiter, wg = e->waiter_gen;
    e->waiter = UINT32_MAX;
    if (w < _n_slots) {
        tcb& t = *tcb_at(w);
        if (alive(t, wg) && !t.mac_ok) {
            t.remote_mac = mac;
            t.mac_ok = true;
            if (t.state == tcp_state::syn_sent) {
                send_syn(t, now);
            }
        }
    }
}

void stack::impl::arp_input(const eth_header& eth, std::span<const std::byte> payload,
                            uint64_t now) {
    arp_packet p;
    if (!parse_arp(payload, p) || is_martian_src(p.spa)) {
        bump(counter::arp_bad);
        return;
    }
    // RFC 826 "Packet Reception": update an existing entry for the sender; add one only if we
    // are the target. A frame's Ethernet source must match the sender (proxy ARP aside, which
    // we do not serve), else it is spoofed or broken.
    if (eth.src != p.sha || p.spa == _cfg.ipv4) {
        bump(counter::arp_bad);
        return;
    }
    const bool for_us = p.tpa == _cfg.ipv4;
    if (on_link(p.spa)) {
        arp_learn(p.spa, p.sha, for_us, now);
    }
    if (!for_us) {
        bump(counter::rx_not_for_us);
        return;
    }
    if (p.op == k_arp_request) {
        arp_send(k_arp_reply, p.sha, p.spa);
        bump(counter::arp_requests_answered);
    } else {
        bump(counter::arp_replies);
    }
}

bool stack::impl::resolve(tcb& t, uint64_t now) {
    if (t.mac_ok) {
        return true;
    }
    const uint32_t hop = on_link(t.remote_ip) ? t.remote_ip : _cfg.gateway;
    arp_entry* e = _arp.find(hop);
    if (e != nullptr && e->state == arp_entry::kind::resolved && e->deadline_ns > now) {
        t.remote_mac = e->mac;
        t.mac_ok = true;
        return true;
    }
    if (e == nullptr || e->state == arp_entry::kind::resolved) {
        // Unknown or expired: start resolving; this connection's segment is the queued one.
        if (e == nullptr) {
            e = _arp.insert(hop, now, true);
            if (e == nullptr) {
                bump(counter::arp_cache_full);
                return false; // the connection retries from its RTO
            }
        }
        e->state = arp_entry::kind::pending;
        e->tries = 1;
        e->deadline_ns = now + k_arp_retry_ns;
        ++_arp_pending;
        _arp_next_ns = std::min(_arp_next_ns, e->deadline_ns);
        arp_send(k_arp_request, k_mac_broadcast, hop);
    }
    if (e->waiter == UINT32_MAX || e->waiter >= _n_slots ||
        !alive(*tcb_at(e->waiter), e->waiter_gen)) {
        e->waiter = index_of(t);
        e->waiter_gen = t.gen;
    }
    return false;
}

void stack::impl::arp_timers(uint64_t now) {
    if (now < _arp_next_ns) {
        return;
    }
    _arp_next_ns = k_never;
    // Rare (only while resolving): a scan of the table is fine here.
    uint32_t failed[8];
    uint32_t failed_gen[8];
    std::size_t n_failed = 0;
    _arp.for_each([&](arp_entry& e) {
        if (e.state != arp_entry::kind::pending) {
            return;
        }
        if (e.deadline_ns <= now) {
            if (e.tries >= k_arp_tries) {
                // Unresolvable: forget it (the next connect asks again), fail its waiter.
                if (e.waiter != UINT32_MAX && n_failed < std::size(failed)) {
                    failed[n_failed] = e.waiter;
                    failed_gen[n_failed++] = e.waiter_gen;
                }
                e.waiter = UINT32_MAX;
                e.state = arp_entry::kind::resolved;
                e.deadline_ns = 0; // expired: reclaimed when space is needed
                --_arp_pending;
                return;
            }
            ++e.tries;
            e.deadline_ns = now + k_arp_retry_ns;
            arp_send(k_arp_request, k_mac_broadcast, e.ip);
        }
        _arp_next_ns = std::min(_arp_next_ns, e.deadline_ns);
    });
    for (std::size_t i = 0; i < n_failed; ++i) {
        if (failed[i] < _n_slots) {
            tcb& t = *tcb_at(failed[i]);
            if (alive(t, failed_gen[i]) && !t.mac_ok) {
                fail(t, EHOSTUNREACH);
            }
        }
    }
    if (_arp_pending > 0 && _arp_next_ns == k_never) {
        _arp_next_ns = now + k_arp_retry_ns; // waiters beyond the local array: next round
    }
}

// ---------------------------------------------------------------------------------------------
// ICMP

void stack::impl::icmp_input(const received_frame& rf, std::span<const std::byte> msg) {
    switch (classify_icmp(msg)) {
    case icmp_status::bad:
        bump(counter::icmp_bad);
        return;
    case icmp_status::other:
        return;
    case icmp_status::echo_request:
        break;
    }
    if (msg.size() + k_ipv4_header > _cfg.mtu) {
        bump(counter::icmp_bad);
        return;
    }
    std::span<std::byte> f = alloc_ipv4(rf.src_mac, rf.src_ip, k_proto_icmp, msg.size());
    if (f.empty()) {
        return;
    }
    write_echo_reply(f.data() + k_eth_header + k_ipv4_header, msg);
    commit(f.size());
    bump(counter::icmp_echo_answered);
}

// ---------------------------------------------------------------------------------------------
// Connection slots

tcb* stack::impl::alloc_tcb(uint32_t& idx) {
    if (_free.empty()) {
        if (_n_slots >= k_listener_bit - k_tcb_chunk) {
            return nullptr;
        }
        // Growth happens at connection setup only; slots are reused afterwards.
        _chunks.push_back(std::make_unique<tcb[]>(k_tcb_chunk));
        for (std::size_t i = k_tcb_chunk; i > 0; --i) {
            _free.push_back(static_cast<uint32_t>(_n_slots + i - 1));
        }
        _n_slots += static_cast<uint32_t>(k_tcb_chunk);
        _heap.reserve(_n_slots);
    }
    idx = _free.back();
    _free.pop_back();
    tcb* t = tcb_at(idx);
    const uint32_t gen = t->gen;
    *t = tcb{};
    t->gen = gen + 1;
    t->self = idx;
    ++_n_conns;
    return t;
}

tcb* stack::impl::lookup(sock_id id) {
    if (id.index >= _n_slots) {
        return nullptr;
    }
    tcb* t = tcb_at(id.index);
    return alive(*t, id.gen) ? t : nullptr;
}

uint64_t stack::impl::conn_hash(uint32_t ip, uint16_t lport, uint16_t rport) const noexcept {
    const uint64_t w[1] = {(uint64_t(ip) << 32) | (uint32_t(lport) << 16) | rport};
    return siphash24(_key, w, 1);
}

tcb* stack::impl::find_conn(uint32_t ip, uint16_t lport, uint16_t rport) {
    conn_slot* s = _conns.find(conn_hash(ip, lport, rport), [&](const conn_slot& c) {
        return c.ip == ip && c.lport == lport && c.rport == rport;
    });
    return s == nullptr ? nullptr : tcb_at(s->idx);
}

bool stack::impl::hash_insert(tcb& t, uint32_t idx) {
    conn_slot* s = _conns.insert(conn_hash(t.remote_ip, t.local_port, t.remote_port));
    if (s == nullptr) {
        return false;
    }
    *s = conn_slot{t.remote_ip, t.local_port, t.remote_port, idx};
    return true;
}

void stack::impl::kill(tcb& t) {
    if (t.state == tcp_state::closed) {
        return;
    }
    if (t.half_open && t.listener < _listeners.size() &&
        _listeners[t.listener].gen == t.listener_gen) {
        --_listeners[t.listener].half_open;
    }
    t.half_open = false;
    conn_slot* s =
        _conns.find(conn_hash(t.remote_ip, t.local_port, t.remote_port), [&](const conn_slot& c) {
            return c.ip == t.remote_ip && c.lport == t.local_port && c.rport == t.remote_port;
        });
    if (s != nullptr) {
        _conns.erase(s, [this](const conn_slot& c) { return conn_hash(c.ip, c.lport, c.rport); });
    }
    t.t_rtx = t.t_delack = t.t_misc = k_never;
    heap_remove(t);
    t.state = tcp_state::closed;
    --_n_conns;
    _reap.push_back(index_of(t));
}

void stack::impl::fail(tcb& t, int err) {
    if (t.state == tcp_state::closed) {
        return;
    }
    const sock_id id = id_of(t);
    const bool report = !t.user_closed && (t.accepted || t.state == tcp_state::syn_sent);
    const bool was_syn_sent = t.state == tcp_state::syn_sent;
    const bool sent_pending = t.send_outstanding;
    const bool rx_open = !t.rx_ended;
    t.user_closed = true; // no further callbacks, whatever the user calls from these
    t.send_outstanding = false;
    t.rx_ended = true;
    kill(t);
    if (!report) {
        return;
    }
    if (was_syn_sent) {
        _ev->on_connect(id, -err);
        return;
    }
    if (sent_pending) {
        _ev->on_sent(id, -err);
    }
    if (rx_open) {
        _ev->on_recv_end(id, -err);
    }
}

void stack::impl::enter_time_wait(tcb& t, uint64_t now) {
    // RFC 9293 3.10.7.4: TIME-WAIT lasts 2 MSL; nothing is left to retransmit.
    t.state = tcp_state::time_wait;
    t.t_rtx = k_never;
    t.t_misc = now + uint64_t(_cfg.tcp.time_wait_ms) * 1'000'000ull;
    bump(counter::tcp_time_wait);
    timer_update(t);
}

void stack::impl::mark_pending(tcb& t) {
    if (!t.in_pending) {
        t.in_pending = true;
        _pending.push_back(index_of(t));
    }
}

bool stack::impl::ensure_ring(tcb& t) {
    if (t.rx.buf) {
        return true;
    }
    t.rx.buf.reset(new (std::nothrow) std::byte[t.rcv_cap]);
    return static_cast<bool>(t.rx.buf);
}

void stack::impl::deliver_pending(tcb& t, uint64_t now) {
    const uint32_t gen = t.gen;
    if (t.user_closed || t.state == tcp_state::closed) {
        return;
    }
    // on_sent. Once every byte of the send has been transmitted, its unACKed bytes move to
    // our ring and the whole send completes: the owner may write more without waiting for the
    // peer's (possibly delayed) ACK, as with a kernel socket's write into its send buffer.
    // Otherwise (window full, or no memory for the ring): the bytes of the send the peer
    // ACKed; with a FIN queued behind the send the buffer is held to its end (nothing would
    // re-send the rest), so only a full report.
    if (send_transmitted(t)) {
        const uint32_t len = t.snd_len;
        if (own_send(t)) {
            _ev->on_sent(id_of(t), static_cast<int>(len));
            if (!alive(t, gen) || t.user_closed) {
                return;
            }
        }
    }
    if (t.send_outstanding) {
        const uint32_t una_data =
            t.fin_queued && detail::seq_gt(t.snd_una, t.fin_seq) ? t.fin_seq : t.snd_una;
        const uint32_t acked = detail::seq_gt(una_data, t.snd_seq)
                                   ? std::min<uint32_t>(una_data - t.snd_seq, t.snd_len)
                                   : 0;
        if (acked > 0 && (!t.fin_queued || acked == t.snd_len)) {
            t.send_outstanding = false;
            t.snd_seq += acked;
            t.snd_data = nullptr;
            t.snd_len = 0;
            _ev->on_sent(id_of(t), static_cast<int>(acked));
            if (!alive(t, gen) || t.user_closed) {
                return;
            }
        }
    }
    const uint32_t before = rcv_space(t);
    while (t.recv_wanted && t.rx.used > 0) {
        const uint32_t n = std::min(t.rx.used, t.rcv_cap - t.rx.head);
        const std::span<const std::byte> chunk(t.rx.buf.get() + t.rx.head, n);
        t.rx.head = (t.rx.head + n) % t.rcv_cap;
        t.rx.used -= n;
        _ev->on_recv(id_of(t), chunk);
        if (!alive(t, gen) || t.user_closed) {
            return;
        }
    }
    // RFC 9293 3.8.6.2.2 (receiver SWS avoidance): announce a reopened window once it grew by
    // at least min(buffer/2, MSS); a sender stalled on a zero window waits for exactly this.
    const uint32_t after = rcv_space(t);
    const uint32_t advertised = t.rcv_adv - t.rcv_nxt;
    if ((after > before || t.win_update) && after > advertised &&
        after - advertised >= std::min<uint32_t>(t.rcv_cap / 2, t.mss) && t.synchronized()) {
        t.win_update = false;
        send_ack(t, now);
    }
    if (t.recv_wanted && t.rx.used == 0 && t.fin_rcvd && !t.rx_ended) {
        t.rx_ended = true;
        _ev->on_recv_end(id_of(t), 0);
    }
}

void stack::impl::flush(uint64_t now) {
    if (_flushing) {
        return;
    }
    _flushing = true;
    // Callbacks may mark more connections pending: index loop, not iterators.
    for (std::size_t i = 0; i < _pending.size(); ++i) {
        tcb& t = *tcb_at(_pending[i]);
        t.in_pending = false;
        deliver_pending(t, now);
    }
    _pending.clear();
    for (const uint32_t idx : _reap) {
        tcb& t = *tcb_at(idx);
        // Release what the connection held; the slot keeps its generation so stale ids fail.
        t.rx.buf.reset();
        t.owned = detail::tx_ring{}; // bytes still owned by a failed connection are dropped
        t.snd_data = nullptr;
        _free.push_back(idx);
    }
    _reap.clear();
    _flushing = false;
}

// ---------------------------------------------------------------------------------------------
// Timers: indexed binary min-heap of connections keyed by their earliest deadline.

void stack::impl::heap_swap(uint32_t a, uint32_t b) {
    std::swap(_heap[a], _heap[b]);
    tcb_at(_heap[a])->heap_pos = a;
    tcb_at(_heap[b])->heap_pos = b;
}

void stack::impl::heap_up(uint32_t pos) {
    while (pos > 0) {
        const uint32_t parent = (pos - 1) / 2;
        if (tcb_at(_heap[parent])->next_deadline() <= tcb_at(_heap[pos])->next_deadline()) {
            break;
        }
        heap_swap(pos, parent);
        pos = parent;
    }
}

void stack::impl::heap_down(uint32_t pos) {
    const auto n = static_cast<uint32_t>(_heap.size());
    for (;;) {
        uint32_t best = pos;
        const uint32_t l = 2 * pos + 1, r = l + 1;
        if (l < n && tcb_at(_heap[l])->next_deadline() < tcb_at(_heap[best])->next_deadline()) {
            best = l;
        }
        if (r < n && tcb_at(_heap[r])->next_deadline() < tcb_at(_heap[best])->next_deadline()) {
            best = r;
        }
        if (best == pos) {
            return;
        }
        heap_swap(pos, best);
        pos = best;
    }
}

void stack::impl::heap_remove(tcb& t) {
    if (t.heap_pos == UINT32_MAX) {
        return;
    }
    const uint32_t pos = t.heap_pos;
    const auto last = static_cast<uint32_t>(_heap.size() - 1);
    if (pos != last) {
        heap_swap(pos, last);
    }
    _heap.pop_back();
    t.heap_pos = UINT32_MAX;
    if (pos < _heap.size()) {
        heap_up(pos);
        heap_down(pos);
    }
}

void stack::impl::timer_update(tcb& t) {
    if (t.next_deadline() == k_never) {
        heap_remove(t);
        return;
    }
    if (t.heap_pos == UINT32_MAX) {
        t.heap_pos = static_cast<uint32_t>(_heap.size());
        _heap.push_back(index_of(t));
        heap_up(t.heap_pos);
        return;
    }
    heap_up(t.heap_pos);
    heap_down(t.heap_pos);
}

// ---------------------------------------------------------------------------------------------
// Public API

stack::stack(const stack_config& cfg, link* out, tcp_events* ev)
    : _impl(std::make_unique<impl>(cfg, out, ev)) {}

stack::~stack() = default;

void stack::input(std::span<const std::byte> frame, uint64_t now_ns) {
    _impl->_now = now_ns;
    _impl->on_frame(frame, now_ns);
    _impl->flush(now_ns);
}

void stack::run_timers(uint64_t now_ns) {
    impl& s = *_impl;
    s._now = now_ns;
    s.arp_timers(now_ns);
    while (!s._heap.empty()) {
        tcb& t = *s.tcb_at(s._heap.front());
        if (t.next_deadline() > now_ns) {
            break;
        }
        s.timer_fire(t, now_ns);
    }
    s.flush(now_ns);
}

uint64_t stack::next_timer_ns() const noexcept {
    const impl& s = *_impl;
    if (!s._pending.empty() || !s._reap.empty()) {
        return 0; // callbacks owed (e.g. after start_recv): run_timers delivers them
    }
    uint64_t d = s._arp_next_ns;
    if (!s._heap.empty()) {
        d = std::min(d, s._chunks[s._heap.front() / k_tcb_chunk][s._heap.front() % k_tcb_chunk]
                            .next_deadline());
    }
    return d;
}

result<sock_id> stack::listen(uint16_t port) {
    impl& s = *_impl;
    if (port == 0) {
        return error(errc::invalid_argument, "listen port 0");
    }
    std::size_t free_slot = s._listeners.size();
    for (std::size_t i = 0; i < s._listeners.size(); ++i) {
        if (s._listeners[i].used && s._listeners[i].port == port) {
            return error(errc::invalid_argument, "port already has a listener");
        }
        if (!s._listeners[i].used && free_slot == s._listeners.size()) {
            free_slot = i;
        }
    }
    if (free_slot == s._listeners.size()) {
        s._listeners.emplace_back();
    }
    impl::listener& l = s._listeners[free_slot];
    l.used = true;
    l.port = port;
    l.half_open = 0;
    ++l.gen;
    return sock_id{k_listener_bit | static_cast<uint32_t>(free_slot), l.gen};
}

result<sock_id> stack::connect(uint32_t ip, uint16_t port, uint64_t now_ns) {
    impl& s = *_impl;
    s._now = now_ns;
    if (port == 0 || is_martian_src(ip) || ip == s._cfg.ipv4) {
        return error(errc::invalid_argument, "connect to an invalid address");
    }
    if (!s.on_link(ip) && s._cfg.gateway == 0) {
        return error(errc::unreachable, "connect off-link without a gateway");
    }
    if (s._n_conns >= s._cfg.tcp.max_connections) {
        s.bump(counter::tcp_conn_limit);
        return error(errc::overloaded, "max_connections reached");
    }
    // Ephemeral port: the next one whose 4-tuple is free (RFC 6056 algorithm 1-like walk from
    // a keyed start).
    uint16_t lport = 0;
    for (uint32_t i = 0; i < 16384; ++i) {
        const uint16_t p = s._next_port;
        s._next_port = p == UINT16_MAX ? k_ephemeral_first : static_cast<uint16_t>(p + 1);
        if (s.find_conn(ip, p, port) == nullptr) {
            lport = p;
            break;
        }
    }
    if (lport == 0) {
        return error(errc::overloaded, "no free ephemeral port for this peer");
    }
    uint32_t idx = 0;
    tcb* t = s.alloc_tcb(idx);
    if (t == nullptr) {
        return error(errc::no_memory, "connection slots exhausted");
    }
    t->remote_ip = ip;
    t->remote_port = port;
    t->local_port = lport;
    if (!s.hash_insert(*t, idx)) {
        t->state = tcp_state::syn_sent; // so kill() balances the count
        s.kill(*t);
        return error(errc::overloaded, "connection table full");
    }
    t->state = tcp_state::syn_sent;
    t->iss = make_isn(s._key, {s._cfg.ipv4, ip, lport, port}, now_ns);
    t->snd_una = t->snd_nxt = t->snd_max = t->iss;
    t->snd_seq = t->iss + 1;
    t->mss = s._cfg.tcp.mss;
    t->rcv_wscale = s._cfg.tcp.wscale;
    t->rcv_cap = s._cfg.tcp.rcv_buf;
    t->rto_us = s._cfg.tcp.rto_initial_ms * 1000;
    t->una_since_ns = now_ns;
    t->last_rx_ns = now_ns;
    s.send_syn(*t, now_ns);
    return s.id_of(*t);
}

void stack::start_recv(sock_id id) {
    impl& s = *_impl;
    tcb* t = s.lookup(id);
    if (t == nullptr || t->user_closed) {
        return;
    }
    t->recv_wanted = true;
    if (t->rx.used > 0 || (t->fin_rcvd && !t->rx_ended)) {
        t->win_update = true;
        s.mark_pending(*t);
    }
}

void stack::pause_recv(sock_id id) {
    tcb* t = _impl->lookup(id);
    if (t != nullptr) {
        t->recv_wanted = false;
    }
}

bool stack::send(sock_id id, std::span<const std::byte> data) {
    impl& s = *_impl;
    tcb* t = s.lookup(id);
    if (t == nullptr || t->user_closed || t->send_outstanding || t->fin_queued || data.empty() ||
        data.size() > (1u << 30) || t->state == tcp_state::syn_sent ||
        t->state == tcp_state::syn_rcvd) {
        return false;
    }
    // The send continues the sequence space after the bytes we own (snd_seq is their end).
    t->send_outstanding = true;
    t->snd_data = data.data();
    t->snd_len = static_cast<uint32_t>(data.size());
    // ACKs that arrived while no send was outstanding are reported against this one.
    if (detail::seq_gt(t->snd_una, t->snd_seq)) {
        s.mark_pending(*t);
    }
    s.output(*t, s._now);
    return true;
}

void stack::shutdown_write(sock_id id) {
    impl& s = *_impl;
    tcb* t = s.lookup(id);
    if (t == nullptr || t->fin_queued || !t->synchronized()) {
        return;
    }
    if (t->state != tcp_state::established && t->state != tcp_state::close_wait) {
        return;
    }
    t->fin_queued = true;
    // The FIN follows everything handed to us, including bytes sent from an earlier buffer.
    t->fin_seq = detail::seq_gt(t->snd_max, t->data_end()) ? t->snd_max : t->data_end();
    t->state = t->state == tcp_state::established ? tcp_state::fin_wait_1 : tcp_state::last_ack;
    s.output(*t, s._now);
}

void stack::close(sock_id id, bool abort) {
    impl& s = *_impl;
    if (id.index & k_listener_bit) {
        const uint32_t li = id.index & ~k_listener_bit;
        if (li < s._listeners.size() && s._listeners[li].used && s._listeners[li].gen == id.gen) {
            s._listeners[li].used = false;
            ++s._listeners[li].gen; // half-open children see a stale listener and are reset
        }
        return;
    }
    tcb* t = s.lookup(id);
    if (t == nullptr || t->user_closed) {
        return;
    }
    t->user_closed = true;
    t->recv_wanted = false;
    t->rx.used = 0;
    t->rx.n_ooo = 0;
    if (abort || !t->synchronized()) {
        // RFC 9293 3.10.4 ABORT: <SEQ=SND.NXT><CTL=RST> in synchronized states.
        if (t->synchronized() && t->state != tcp_state::time_wait) {
            s.emit(*t, t->snd_nxt, 0, tcp_flag::rst, s._now);
            s.bump(counter::tcp_rst_sent);
        }
        s.kill(*t);
        return;
    }
    // Graceful: the caller frees its buffer now; keep the unACKed rest of its send after the
    // bytes we already own (at most the flight plus one send). Without memory for it the
    // stream cannot complete intact: abort rather than end it short with a FIN.
    if (t->send_outstanding && !s.own_send(*t)) {
        s.emit(*t, t->snd_nxt, 0, tcp_flag::rst, s._now);
        s.bump(counter::tcp_rst_sent);
        s.kill(*t);
        return;
    }
    if (!t->fin_queued) {
        shutdown_write(id);
    }
    if (t->state == tcp_state::fin_wait_2) {
        // Orphaned: the peer's FIN may never come (RFC 9293 leaves this to the implementation;
        // Linux tcp_fin_timeout). Bound it by the TIME-WAIT duration.
        t->t_misc = s._now + uint64_t(s._cfg.tcp.time_wait_ms) * 1'000'000ull;
        s.timer_update(*t);
    }
}

uint64_t stack::count(counter c) const noexcept {
    return _impl->_counters[static_cast<std::size_t>(c)];
}

std::size_t stack::connections() const noexcept {
    return _impl->_n_conns;
}

std::size_t stack::bytes_per_connection() const noexcept {
    // The TCB itself, its lookup slot (at load <= 1/2, two slots per connection), its heap entry
    // and free-list entry. Allocated on demand and counted by memory_bytes() instead: the
    // receive ring (rcv_buf bytes) once the application pauses or a segment arrives out of
    // order, and the send ring (transmitted, unACKed bytes of completed sends) once a send
    // completes before its ACK; the latter grows to the largest flight the connection had
    // (min(cwnd, peer window)) and is kept until the connection ends.
    return sizeof(tcb) + 2 * sizeof(impl::conn_slot) + 2 * sizeof(uint32_t);
}

std::size_t stack::memory_bytes() const noexcept {
    const impl& s = *_impl;
    std::size_t n = sizeof(impl) + std::size_t(s._n_slots) * sizeof(tcb) + s._conns.memory_bytes() +
                    s._heap.capacity() * sizeof(uint32_t) + s._free.capacity() * sizeof(uint32_t);
    for (uint32_t i = 0; i < s._n_slots; ++i) {
        const tcb& t = s._chunks[i / k_tcb_chunk][i % k_tcb_chunk];
        n += (t.rx.buf ? t.rcv_cap : 0) + t.owned.cap;
    }
    return n;
}

} // namespace apprelay::net
