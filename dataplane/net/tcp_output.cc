// TCP output: segment construction, sending policy, retransmission and timers.
#include "dataplane/net/checksum.hh"
#include "dataplane/net/detail/stack_impl.hh"
#include "dataplane/net/ether.hh"
#include "dataplane/net/ipv4.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace apprelay::net {

using detail::k_never;
using detail::seq_ge;
using detail::seq_gt;
using detail::seq_le;
using detail::seq_lt;
using detail::tcb;
using detail::tcp_state;

namespace {
constexpr uint8_t k_max_backoff = 16;
} // namespace

uint32_t stack::impl::rcv_space(const tcb& t) const noexcept {
    return t.user_closed ? t.rcv_cap : t.rcv_cap - t.rx.used;
}

uint16_t stack::impl::window_field(tcb& t, bool syn) const noexcept {
    const uint32_t space = rcv_space(t);
    // RFC 7323 2.2: the window in a SYN is never scaled.
    if (syn) {
        return static_cast<uint16_t>(std::min<uint32_t>(space, 0xffff));
    }
    return static_cast<uint16_t>(std::min<uint32_t>(space >> t.rcv_wscale, 0xffff));
}

uint32_t stack::impl::initial_cwnd(const tcb& t) const noexcept {
    // RFC 6928 2: IW = min(10*MSS, max(2*MSS, 14600)).
    return std::min<uint32_t>(10u * t.mss, std::max<uint32_t>(2u * t.mss, 14600));
}

void stack::impl::negotiate_ts(tcb& t, const tcp_options& o) {
    if (!o.has_timestamps || !_cfg.tcp.timestamps) {
        return;
    }
    t.ts_ok = true;
    t.ts_recent = o.ts_val;
    // The option takes 12 bytes of every segment: the payload shrinks so frames stay within
    // the MSS the peer announced (RFC 7323 appendix A, RFC 9293 3.7.1).
    t.mss = static_cast<uint16_t>(std::max<int>(t.mss - int(k_ts_option_len), k_min_mss));
}

uint64_t stack::impl::rto_ns(const tcb& t) const noexcept {
    const uint64_t rto_max_us = uint64_t(_cfg.tcp.rto_max_ms) * 1000;
    const uint64_t us = std::min<uint64_t>(uint64_t(t.rto_us) << t.backoff, rto_max_us);
    return us * 1000;
}

void stack::impl::rtt_sample(tcb& t, uint64_t rtt_ns) {
    // RFC 6298 2.2-2.4 with alpha 1/8, beta 1/4, K 4, clock granularity G = 1 ms.
    const uint32_t r = static_cast<uint32_t>(std::clamp<uint64_t>(rtt_ns / 1000, 1, 1u << 30));
    if (t.srtt_us == 0) {
        t.srtt_us = r;
        t.rttvar_us = r / 2;
    } else {
        const uint32_t diff = t.srtt_us > r ? t.srtt_us - r : r - t.srtt_us;
        t.rttvar_us = t.rttvar_us - t.rttvar_us / 4 + diff / 4;
        t.srtt_us = t.srtt_us - t.srtt_us / 8 + r / 8;
    }
    const uint32_t rto = t.srtt_us + std::max<uint32_t>(1000, 4 * t.rttvar_us);
    t.rto_us = std::clamp<uint32_t>(rto, _cfg.tcp.rto_min_ms * 1000, _cfg.tcp.rto_max_ms * 1000);
}

void stack::impl::arm_rtx(tcb& t, uint64_t now) {
    t.t_rtx = now + rto_ns(t);
    timer_update(t);
}

bool stack::impl::emit(tcb& t, uint32_t seq, uint32_t len, uint8_t flags, uint64_t now) {
    if (!resolve(t, now)) {
        return false; // treated as lost: retransmitted once the address resolves
    }
    std::byte opts[12 + k_ts_option_len];
    std::size_t opt_len = 0;
    const bool syn = (flags & tcp_flag::syn) != 0;
    const bool active = t.state == tcp_state::syn_sent;
    if (syn) {
        opt_len = write_syn_options(
            opts, _cfg.tcp.mss, active ? _cfg.tcp.wscale : (t.ws_ok ? t.rcv_wscale : k_wscale_none),
            active ? _cfg.tcp.sack_permitted : t.sack_ok);
    }
    // RFC 7323 3.2: once negotiated, every segment but a RST carries timestamps; our SYN offers
    // them with TSecr 0.
    if ((flags & tcp_flag::rst) == 0 && (t.ts_ok || (syn && active && _cfg.tcp.timestamps))) {
        opt_len += write_ts_option(opts + opt_len, ts_now(now), t.ts_ok ? t.ts_recent : 0);
    }
    const std::size_t tcp_len = k_tcp_header + opt_len + len;
    std::span<std::byte> f = alloc_ipv4(t.remote_mac, t.remote_ip, k_proto_tcp, tcp_len);
    if (f.empty()) {
        return false;
    }
    std::byte* seg = f.data() + k_eth_header + k_ipv4_header;
    const bool has_ack = (flags & tcp_flag::ack) != 0;
    const uint16_t wnd = (flags & tcp_flag::rst) != 0 ? 0 : window_field(t, syn);
    write_tcp_header(seg, t.local_port, t.remote_port, seq, has_ack ? t.rcv_nxt : 0, flags, wnd,
                     opt_len);
    std::memcpy(seg + k_tcp_header, opts, opt_len);
    if (len > 0) {
        // Straight from the sender's buffer (or, for bytes of a send already completed, our
        // ring) into the frame: the one copy on the send path.
        copy_send(t, seq, len, seg + k_tcp_header + opt_len);
    }
    finish_tcp_checksum(std::span<std::byte>(seg, tcp_len), _cfg.ipv4, t.remote_ip);
    commit(f.size());
    if (has_ack) {
        t.last_ack_sent = t.rcv_nxt;
        t.unacked_segs = 0;
        if (t.t_delack != k_never) {
            t.t_delack = k_never;
            timer_update(t);
        }
        const uint32_t edge = t.rcv_nxt + (syn ? wnd : (uint32_t(wnd) << t.rcv_wscale));
        if (seq_gt(edge, t.rcv_adv)) {
            t.rcv_adv = edge;
        }
    }
    return true;
}

void stack::impl::copy_send(const tcb& t, uint32_t seq, uint32_t len, std::byte* dst) const {
    const detail::tx_ring& r = t.owned;
    if (r.len > 0 && seq_lt(seq, t.snd_seq)) {
        const uint32_t off = seq - t.owned_seq();
        const uint32_t n = std::min(len, r.len - off);
        const uint32_t pos = (r.head + off) % r.cap;
        const uint32_t first = std::min(n, r.cap - pos);
        std::memcpy(dst, r.buf.get() + pos, first);
        std::memcpy(dst + first, r.buf.get(), n - first);
        dst += n;
        seq += n;
        len -= n;
    }
    if (len > 0) {
        std::memcpy(dst, t.snd_data + (seq - t.snd_seq), len);
    }
}

void stack::impl::trim_owned(tcb& t) {
    detail::tx_ring& r = t.owned;
    const uint32_t start = t.owned_seq();
    if (r.len == 0 || !seq_gt(t.snd_una, start)) {
        return;
    }
    const uint32_t n = std::min(t.snd_una - start, r.len);
    r.len -= n;
    r.head = r.len == 0 ? 0 : (r.head + n) % r.cap;
}

bool stack::impl::own_send(tcb& t) {
    detail::tx_ring& r = t.owned;
    const uint32_t end = t.snd_seq + t.snd_len;
    // Bytes below snd_una are ACKed: dropped, not copied. If snd_una is past snd_seq the ring is
    // empty (trim_owned), so the copied bytes stay contiguous with it.
    const uint32_t from = seq_gt(t.snd_una, t.snd_seq) ? t.snd_una : t.snd_seq;
    const uint32_t n = seq_lt(from, end) ? end - from : 0;
    if (n > 0 && uint64_t(r.len) + n > r.cap) {
        // Grow geometrically (a few steps through slow start, then reused), but never beyond
        // what has to be held or the largest flight the windows allow (min(cwnd, peer's)):
        // in steady state the ring holds only bytes in flight.
        const uint64_t need = uint64_t(r.len) + n;
        const uint64_t flight = std::min(t.cwnd, std::max(t.max_snd_wnd, t.snd_wnd));
        const uint64_t cap = std::max(need, std::min(2 * uint64_t(r.cap), flight));
        std::unique_ptr<std::byte[]> buf(new (std::nothrow) std::byte[cap]);
        if (!buf) {
            return false; // keep using the caller's buffer: on_sent waits for the ACK
        }
        const uint32_t first = std::min(r.len, r.cap - r.head);
        if (r.len > 0) {
            std::memcpy(buf.get(), r.buf.get() + r.head, first);
            std::memcpy(buf.get() + first, r.buf.get(), r.len - first);
        }
        r.buf = std::move(buf);
        r.cap = static_cast<uint32_t>(cap);
        r.head = 0;
    }
    if (n > 0) {
        const uint32_t pos = (r.head + r.len) % r.cap;
        const uint32_t first = std::min(n, r.cap - pos);
        const std::byte* src = t.snd_data + (from - t.snd_seq);
        std::memcpy(r.buf.get() + pos, src, first);
        std::memcpy(r.buf.get(), src + first, n - first);
        r.len += n;
    }
    t.send_outstanding = false;
    t.snd_seq = end;
    t.snd_data = nullptr;
    t.snd_len = 0;
    return true;
}

void stack::impl::send_syn(tcb& t, uint64_t now) {
    const uint8_t flags =
        t.state == tcp_state::syn_sent ? tcp_flag::syn : (tcp_flag::syn | tcp_flag::ack);
    if (t.state == tcp_state::syn_rcvd && t.rcv_adv == 0) {
        t.rcv_adv = t.rcv_nxt;
    }
    emit(t, t.iss, 0, flags, now);
    t.snd_nxt = t.iss + 1;
    if (seq_gt(t.snd_nxt, t.snd_max)) {
        t.snd_max = t.snd_nxt;
    }
    // Karn: only a SYN sent once gives an RTT sample.
    t.rtt_timing = t.rtx_count == 0;
    t.rtt_seq = t.iss + 1;
    t.rtt_start_ns = now;
    arm_rtx(t, now);
}

void stack::impl::send_raw(const received_frame& rf, const tcp_segment& s, uint32_t seq,
                           uint32_t ack, uint8_t flags, uint16_t window, uint16_t mss_option) {
    std::byte opts[12];
    const std::size_t opt_len =
        mss_option != 0 ? write_syn_options(opts, mss_option, k_wscale_none, false) : 0;
    const std::size_t tcp_len = k_tcp_header + opt_len;
    std::span<std::byte> f = alloc_ipv4(rf.src_mac, rf.src_ip, k_proto_tcp, tcp_len);
    if (f.empty()) {
        return;
    }
    std::byte* seg = f.data() + k_eth_header + k_ipv4_header;
    write_tcp_header(seg, s.dst_port, s.src_port, seq, ack, flags, window, opt_len);
    std::memcpy(seg + k_tcp_header, opts, opt_len);
    finish_tcp_checksum(std::span<std::byte>(seg, tcp_len), _cfg.ipv4, rf.src_ip);
    commit(f.size());
}

void stack::impl::send_rst_reply(const received_frame& rf, const tcp_segment& s) {
    // RFC 9293 3.10.7.1: if ACK, <SEQ=SEG.ACK><CTL=RST>; else <SEQ=0><ACK=SEG.SEQ+SEG.LEN>
    // <CTL=RST,ACK>.
    if ((s.flags & tcp_flag::ack) != 0) {
        send_raw(rf, s, s.ack, 0, tcp_flag::rst, 0, 0);
    } else {
        const uint32_t seg_len = static_cast<uint32_t>(s.payload.size()) +
                                 ((s.flags & tcp_flag::syn) ? 1 : 0) +
                                 ((s.flags & tcp_flag::fin) ? 1 : 0);
        send_raw(rf, s, 0, s.seq + seg_len, tcp_flag::rst | tcp_flag::ack, 0, 0);
    }
    bump(counter::tcp_rst_sent);
}

void stack::impl::output(tcb& t, uint64_t now) {
    switch (t.state) {
    case tcp_state::established:
    case tcp_state::close_wait:
    case tcp_state::fin_wait_1:
    case tcp_state::closing:
    case tcp_state::last_ack:
        break;
    default:
        return;
    }
    const uint32_t end = t.data_end();
    for (;;) {
        const uint32_t avail = seq_lt(t.snd_nxt, end) ? end - t.snd_nxt : 0;
        const uint32_t inflight = t.snd_nxt - t.snd_una;
        const uint32_t win = std::min(t.snd_wnd, t.cwnd);
        const uint32_t usable = win > inflight ? win - inflight : 0;
        uint32_t len = std::min({avail, usable, uint32_t(t.mss)});
        // Sender SWS avoidance (RFC 9293 3.8.6.2.1): no runt while data is in flight and more
        // is waiting; the ACKs in flight will open room for a full segment.
        if (len > 0 && len < avail && len < t.mss && inflight > 0) {
            len = 0;
        }
        const bool fin = t.fin_queued && t.snd_nxt + len == t.fin_seq;
        if (len == 0 && !fin) {
            break;
        }
        uint8_t flags = tcp_flag::ack;
        if (fin) {
            flags |= tcp_flag::fin;
        }
        if (len > 0 && len == avail) {
            flags |= tcp_flag::psh;
        }
        if (t.snd_una == t.snd_max) {
            t.una_since_ns = now; // a new flight starts: the user timeout counts from here
        }
        const bool fresh = seq_ge(t.snd_nxt, t.snd_max);
        const bool sent = emit(t, t.snd_nxt, len, flags, now);
        if (fresh && len > 0 && !t.rtt_timing) {
            t.rtt_timing = true;
            t.rtt_seq = t.snd_nxt + len;
            t.rtt_start_ns = now;
        }
        t.snd_nxt += len + (fin ? 1 : 0);
        if (seq_gt(t.snd_nxt, t.snd_max)) {
            t.snd_max = t.snd_nxt;
        }
        if (!sent) {
            break; // no buffer: the retransmission timer recovers it
        }
    }
    if (send_transmitted(t) && !t.user_closed) {
        mark_pending(t); // on_sent at the next flush: the owner may send more at once
    }
    if (t.t_rtx == k_never) {
        const bool outstanding = t.snd_max != t.snd_una;
        const bool blocked =
            t.snd_wnd == 0 && (seq_lt(t.snd_nxt, end) || (t.fin_queued && t.snd_nxt == t.fin_seq));
        if (outstanding || blocked) {
            arm_rtx(t, now); // retransmission, or the persist timer (RFC 9293 3.8.6.1)
        }
    }
}

void stack::impl::retransmit_head(tcb& t, uint64_t now) {
    const uint32_t end = t.data_end();
    const uint32_t avail = seq_lt(t.snd_una, end) ? end - t.snd_una : 0;
    const uint32_t len = std::min<uint32_t>(avail, t.mss);
    const bool fin = t.fin_queued && t.snd_una + len == t.fin_seq && seq_gt(t.snd_max, t.fin_seq);
    if (len == 0 && !fin) {
        return;
    }
    t.rtt_timing = false; // Karn (RFC 6298 3)
    emit(t, t.snd_una, len, tcp_flag::ack | (fin ? tcp_flag::fin : 0), now);
    bump(counter::tcp_retransmits);
}

void stack::impl::rtx_fire(tcb& t, uint64_t now) {
    const uint64_t user_timeout = uint64_t(_cfg.tcp.user_timeout_ms) * 1'000'000ull;
    if (t.state == tcp_state::syn_sent || t.state == tcp_state::syn_rcvd) {
        // A half-open passive connection gives up sooner: it holds memory for an unproven peer.
        const uint32_t limit = t.state == tcp_state::syn_rcvd
                                   ? std::min<uint32_t>(k_synack_retries, _cfg.tcp.max_retransmits)
                                   : _cfg.tcp.max_retransmits;
        if (t.rtx_count >= limit ||
            (t.state == tcp_state::syn_sent && now - t.una_since_ns >= user_timeout)) {
            bump(counter::tcp_timeouts);
            fail(t, ETIMEDOUT);
            return;
        }
        ++t.rtx_count;
        t.backoff = std::min<uint8_t>(t.backoff + 1, k_max_backoff);
        bump(counter::tcp_retransmits);
        send_syn(t, now);
        return;
    }
    const uint32_t end = t.data_end();
    const bool fin_unacked = t.fin_queued && seq_le(t.snd_una, t.fin_seq);
    const bool have_data = seq_lt(t.snd_una, end);
    if (t.snd_wnd == 0 && (have_data || fin_unacked)) {
        // Persist (RFC 9293 3.8.6.1): probe the zero window with one byte (or the FIN) for as
        // long as the receiver keeps answering; silence for the user timeout ends it.
        if (now - t.last_rx_ns >= user_timeout) {
            bump(counter::tcp_timeouts);
            fail(t, ETIMEDOUT);
            return;
        }
        if (have_data) {
            emit(t, t.snd_una, 1, tcp_flag::ack, now);
            if (seq_lt(t.snd_nxt, t.snd_una + 1)) {
                t.snd_nxt = t.snd_una + 1;
            }
            if (seq_gt(t.snd_nxt, t.snd_max)) {
                t.snd_max = t.snd_nxt;
            }
            if (send_transmitted(t) && !t.user_closed) {
                mark_pending(t); // a one-byte send went out as the probe
            }
        } else {
            emit(t, t.fin_seq, 0, tcp_flag::ack | tcp_flag::fin, now);
            t.snd_nxt = t.snd_max = t.fin_seq + 1;
        }
        t.rtt_timing = false;
        t.backoff = std::min<uint8_t>(t.backoff + 1, k_max_backoff);
        bump(counter::tcp_zero_window_probes);
        arm_rtx(t, now);
        return;
    }
    if (t.snd_una == t.snd_max) {
        return; // nothing outstanding
    }
    if (t.rtx_count >= _cfg.tcp.max_retransmits || now - t.una_since_ns >= user_timeout) {
        // RFC 9293 3.8.3 R2 / RFC 5482: give up; the peer learns by RST if it is still there.
        bump(counter::tcp_timeouts);
        emit(t, t.snd_nxt, 0, tcp_flag::rst, now);
        bump(counter::tcp_rst_sent);
        fail(t, ETIMEDOUT);
        return;
    }
    if (!have_data && !fin_unacked && t.user_closed) {
        // Bytes sent from a buffer the owner dropped (close() after a short on_sent without
        // re-sending them): nothing to retransmit from, so the stream cannot complete intact.
        // (While the owner still holds the id, its next send() supplies them: wait for it.)
        emit(t, t.snd_nxt, 0, tcp_flag::rst, now);
        bump(counter::tcp_rst_sent);
        fail(t, ECONNRESET);
        return;
    }
    bump(counter::tcp_rto_expired);
    bump(counter::tcp_retransmits);
    // RFC 5681 3.1 (4): ssthresh = max(FlightSize / 2, 2*SMSS) on the first timeout of this
    // data, cwnd = 1 segment; RFC 6582 4: recovery ends, recover = highest sent.
    if (t.rtx_count == 0) {
        t.ssthresh = std::max<uint32_t>((t.snd_max - t.snd_una) / 2, 2u * t.mss);
    }
    t.cwnd = t.mss;
    t.in_recovery = false;
    t.dupacks = 0;
    t.recover = t.snd_max;
    ++t.rtx_count;
    t.backoff = std::min<uint8_t>(t.backoff + 1, k_max_backoff); // RFC 6298 5.5
    t.rtt_timing = false;
    t.snd_nxt = t.snd_una; // go back: the segments after the first are resent as ACKs return
    output(t, now);
}

void stack::impl::timer_fire(tcb& t, uint64_t now) {
    const uint32_t gen = t.gen;
    if (t.t_delack <= now) {
        t.t_delack = k_never;
        if (t.synchronized() && t.state != tcp_state::time_wait) {
            send_ack(t, now);
        }
    }
    if (t.t_misc <= now) {
        t.t_misc = k_never;
        if (t.state == tcp_state::time_wait && !t.user_closed && (t.rx.used > 0 || !t.rx_ended)) {
            // Undelivered bytes or EOF: the owner still has to read them (or close()).
            t.t_misc = now + uint64_t(_cfg.tcp.time_wait_ms) * 1'000'000ull;
        } else if (t.state == tcp_state::time_wait || t.state == tcp_state::fin_wait_2) {
            kill(t); // 2 MSL over, or an orphan whose peer never sent its FIN
            return;
        }
        const uint32_t idle_ms = _cfg.tcp.keepalive_idle_ms;
        if (idle_ms != 0 &&
            (t.state == tcp_state::established || t.state == tcp_state::close_wait)) {
            const uint64_t idle_at = t.last_rx_ns + uint64_t(idle_ms) * 1'000'000ull;
            if (now < idle_at) {
                t.t_misc = idle_at;
            } else if (t.ka_probes >= _cfg.tcp.keepalive_probes) {
                bump(counter::tcp_timeouts);
                fail(t, ETIMEDOUT);
                return;
            } else {
                // RFC 9293 3.8.4: a keepalive is an ACK with SEQ = SND.NXT - 1 (outside the
                // window) so the peer must answer with an ACK.
                emit(t, t.snd_una - 1, 0, tcp_flag::ack, now);
                ++t.ka_probes;
                bump(counter::tcp_keepalive_probes);
                t.t_misc = now + uint64_t(_cfg.tcp.keepalive_interval_ms) * 1'000'000ull;
            }
        }
    }
    if (t.t_rtx <= now && alive(t, gen)) {
        t.t_rtx = k_never;
        rtx_fire(t, now);
    }
    if (alive(t, gen)) {
        timer_update(t);
    }
}

} // namespace apprelay::net
