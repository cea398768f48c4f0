// TCP input: segment arrival processing (RFC 9293 3.10.7) with the RFC 5961 checks, receive
// reassembly and congestion control on ACK arrival (RFC 5681, RFC 6582).
#include "dataplane/net/detail/stack_impl.hh"

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

void stack::impl::tcp_input(const received_frame& rf, std::span<const std::byte> seg,
                            uint64_t now) {
    tcp_segment s;
    switch (parse_tcp(seg, rf.src_ip, rf.dst_ip, s)) {
    case tcp_status::ok:
        break;
    case tcp_status::bad_header:
        bump(counter::tcp_bad_header);
        return;
    case tcp_status::bad_checksum:
        bump(counter::tcp_bad_checksum);
        return;
    case tcp_status::bad_options:
        bump(counter::tcp_bad_options);
        return;
    }
    if (tcb* t = find_conn(rf.src_ip, s.dst_port, s.src_port)) {
        if (t->state == tcp_state::syn_sent) {
            syn_sent_input(*t, s, now);
        } else {
            conn_input(*t, s, now);
        }
        return;
    }
    for (std::size_t i = 0; i < _listeners.size(); ++i) {
        if (_listeners[i].used && _listeners[i].port == s.dst_port) {
            listen_input(_listeners[i], static_cast<uint32_t>(i), rf, s, now);
            return;
        }
    }
    // RFC 9293 3.10.7.1: no socket. A RST is never answered.
    if ((s.flags & tcp_flag::rst) == 0 && ctl_allowed(now)) {
        send_rst_reply(rf, s);
        bump(counter::tcp_no_socket_rst);
    }
}

namespace {

uint16_t negotiated_mss(uint16_t ours, const tcp_options& o) noexcept {
    const uint16_t peer = o.mss != 0 ? o.mss : k_default_peer_mss;
    // A tiny peer MSS would make us cut data into tiny segments: floor it (as Linux does).
    return std::max<uint16_t>(std::min(ours, peer), k_min_mss);
}

} // namespace

// A TCB in SYN-RCVD for a segment that reached listener li (a SYN, or the ACK that redeems
// a SYN cookie), in the lookup table; nullptr when the pool or the table is full (counted).
tcb* stack::impl::new_passive_tcb(listener& l, uint32_t li, const received_frame& rf,
                                  const tcp_segment& s) {
    uint32_t idx = 0;
    tcb* t = alloc_tcb(idx);
    if (t == nullptr) {
        bump(counter::tcp_syn_dropped);
        return nullptr;
    }
    t->remote_ip = rf.src_ip;
    t->remote_port = s.src_port;
    t->local_port = s.dst_port;
    t->state = tcp_state::syn_rcvd;
    if (!hash_insert(*t, idx)) {
        kill(*t);
        bump(counter::tcp_syn_dropped);
        return nullptr;
    }
    t->remote_mac = rf.src_mac;
    t->mac_ok = true;
    t->passive = true;
    t->listener = li;
    t->listener_gen = l.gen;
    return t;
}

void stack::impl::listen_input(listener& l, uint32_t li, const received_frame& rf,
                               const tcp_segment& s, uint64_t now) {
    // RFC 9293 3.10.7.2, LISTEN.
    if ((s.flags & tcp_flag::rst) != 0) {
        return;
    }
    const four_tuple tuple{_cfg.ipv4, rf.src_ip, s.dst_port, s.src_port};
    if ((s.flags & tcp_flag::ack) != 0) {
        if ((s.flags & tcp_flag::syn) == 0) {
            // Possibly the third segment of a handshake answered with a SYN cookie.
            const uint16_t mss = check_syn_cookie(_key, tuple, s.seq - 1, s.ack - 1, now);
            if (mss != 0) {
                if (_n_conns >= _cfg.tcp.max_connections) {
                    bump(counter::tcp_conn_limit);
                    send_rst_reply(rf, s);
                    return;
                }
                tcb* t = new_passive_tcb(l, li, rf, s);
                if (t == nullptr) {
                    return;
                }
                t->iss = s.ack - 1;
                t->snd_una = t->iss; // the ACK below acknowledges the cookie SYN-ACK
                t->snd_nxt = t->snd_max = t->iss + 1;
                t->snd_seq = t->iss + 1;
                t->irs = s.seq - 1;
                t->rcv_nxt = t->rcv_adv = s.seq;
                t->mss = std::min(mss, _cfg.tcp.mss);
                // Cookies carry no window scale: the window stays within 16 bits.
                t->rcv_cap = std::min<uint32_t>(_cfg.tcp.rcv_buf, 0xffff);
                t->rcv_adv = t->rcv_nxt + t->rcv_cap;
                t->rto_us = _cfg.tcp.rto_initial_ms * 1000;
                bump(counter::tcp_syn_cookies_ok);
                conn_input(*t, s, now);
                return;
            }
        }
        // "Any acknowledgment is bad if it arrives on a connection still in the LISTEN state."
        if (ctl_allowed(now)) {
            send_rst_reply(rf, s);
            bump(counter::tcp_no_socket_rst);
        }
        return;
    }
    if ((s.flags & tcp_flag::syn) == 0) {
        return;
    }
    bump(counter::tcp_syn_received);
    if ((s.flags & tcp_flag::fin) != 0) {
        bump(counter::tcp_bad_header); // SYN+FIN: a scan, never a real open
        return;
    }
    if (_n_conns >= _cfg.tcp.max_connections) {
        bump(counter::tcp_conn_limit);
        if (ctl_allowed(now)) {
            send_rst_reply(rf, s);
        }
        return;
    }
    const uint16_t mss = negotiated_mss(_cfg.tcp.mss, s.opt);
    if (l.half_open >= _cfg.tcp.syn_backlog) {
        // RFC 4987 3.6: the backlog is full; answer statelessly.
        const uint32_t cookie = make_syn_cookie(_key, tuple, s.seq, mss, now);
        send_raw(rf, s, cookie, s.seq + 1, tcp_flag::syn | tcp_flag::ack,
                 static_cast<uint16_t>(std::min<uint32_t>(_cfg.tcp.rcv_buf, 0xffff)), _cfg.tcp.mss);
        bump(counter::tcp_syn_cookies_sent);
        return;
    }
    tcb* t = new_passive_tcb(l, li, rf, s);
    if (t == nullptr) {
        return;
    }
    ++l.half_open;
    t->half_open = true;
    t->iss = make_isn(_key, tuple, now);
    t->snd_una = t->snd_nxt = t->snd_max = t->iss;
    t->snd_seq = t->iss + 1;
    t->irs = s.seq;
    t->rcv_nxt = s.seq + 1;
    t->mss = mss;
    if (s.opt.wscale != k_wscale_none) {
        t->ws_ok = true;
        t->snd_wscale = s.opt.wscale;
        t->rcv_wscale = _cfg.tcp.wscale;
    }
    t->sack_ok = s.opt.sack_permitted && _cfg.tcp.sack_permitted;
    negotiate_ts(*t, s.opt);
    t->rcv_cap = std::min<uint32_t>(_cfg.tcp.rcv_buf, uint32_t(0xffff) << t->rcv_wscale);
    t->rto_us = _cfg.tcp.rto_initial_ms * 1000;
    t->una_since_ns = now;
    t->last_rx_ns = now;
    send_syn(*t, now);
}

void stack::impl::syn_sent_input(tcb& t, const tcp_segment& s, uint64_t now) {
    // RFC 9293 3.10.7.3, SYN-SENT.
    const bool has_ack = (s.flags & tcp_flag::ack) != 0;
    if (has_ack && (seq_le(s.ack, t.iss) || seq_gt(s.ack, t.snd_max))) {
        if ((s.flags & tcp_flag::rst) == 0) {
            emit(t, s.ack, 0, tcp_flag::rst, now);
            bump(counter::tcp_rst_sent);
        }
        return;
    }
    if ((s.flags & tcp_flag::rst) != 0) {
        // RFC 5961 3.2: in SYN-SENT a RST is acceptable only if it ACKs our SYN.
        if (has_ack) {
            bump(counter::tcp_rst_received);
            fail(t, ECONNREFUSED);
        }
        return;
    }
    if ((s.flags & tcp_flag::syn) == 0) {
        return;
    }
    t.irs = s.seq;
    t.rcv_nxt = s.seq + 1;
    t.mss = negotiated_mss(_cfg.tcp.mss, s.opt);
    if (s.opt.wscale != k_wscale_none) {
        t.ws_ok = true;
        t.snd_wscale = s.opt.wscale;
    } else {
        t.rcv_wscale = 0; // RFC 7323 2.2: both sides must send the option
    }
    t.sack_ok = s.opt.sack_permitted && _cfg.tcp.sack_permitted;
    negotiate_ts(t, s.opt);
    t.rcv_cap = std::min<uint32_t>(_cfg.tcp.rcv_buf, uint32_t(0xffff) << t.rcv_wscale);
    t.rcv_adv = t.rcv_nxt;
    t.last_rx_ns = now;
    if (!has_ack) {
        // Simultaneous open: SYN-RCVD, answer with SYN-ACK (same ISS).
        t.state = tcp_state::syn_rcvd;
        t.rtx_count = 0;
        t.backoff = 0;
        send_syn(t, now);
        return;
    }
    establish(t, s, now);
    send_ack(t, now);
    t.accepted = true;
    _ev->on_connect(id_of(t), 0);
}

void stack::impl::establish(tcb& t, const tcp_segment& s, uint64_t now) {
    if (t.rtt_timing && seq_ge(s.ack, t.rtt_seq)) {
        rtt_sample(t, now - t.rtt_start_ns);
    }
    t.rtt_timing = false;
    t.state = tcp_state::established;
    t.snd_una = s.ack;
    if (seq_lt(t.snd_nxt, t.snd_una)) {
        t.snd_nxt = t.snd_una;
    }
    // RFC 7323 2.2: the window of a SYN is unscaled; every later one is scaled.
    t.snd_wnd = (s.flags & tcp_flag::syn) != 0 ? s.window : uint32_t(s.window) << t.snd_wscale;
    t.max_snd_wnd = t.snd_wnd;
    t.snd_wl1 = s.seq;
    t.snd_wl2 = s.ack;
    t.cwnd = initial_cwnd(t);
    t.ssthresh = k_ssthresh_initial;
    t.recover = t.snd_una;
    t.rtx_count = 0;
    t.backoff = 0;
    t.una_since_ns = now;
    t.last_rx_ns = now;
    t.t_rtx = k_never;
    if (_cfg.tcp.keepalive_idle_ms != 0) {
        t.t_misc = now + uint64_t(_cfg.tcp.keepalive_idle_ms) * 1'000'000ull;
    }
    timer_update(t);
}

void stack::impl::conn_input(tcb& t, const tcp_segment& s, uint64_t now) {
    const uint32_t gen = t.gen;
    const bool syn = (s.flags & tcp_flag::syn) != 0;
    const bool rst = (s.flags & tcp_flag::rst) != 0;
    const bool fin = (s.flags & tcp_flag::fin) != 0;
    const auto plen = static_cast<uint32_t>(s.payload.size());

    // A retransmitted SYN in SYN-RCVD: our SYN-ACK was lost; answer again.
    if (t.state == tcp_state::syn_rcvd && syn && (s.flags & tcp_flag::ack) == 0 && s.seq == t.irs) {
        emit(t, t.iss, 0, tcp_flag::syn | tcp_flag::ack, now);
        return;
    }

    // RFC 7323 5.3 R1 (PAWS): a segment whose timestamp is older than TS.Recent is an old
    // duplicate (or forged); drop it, ACK unless it is a RST. TS.Recent is not aged (a
    // connection idle for 24 days is closed by keepalive/user timeout long before).
    if (t.ts_ok && s.opt.has_timestamps && !rst && seq_lt(s.opt.ts_val, t.ts_recent)) {
        bump(counter::tcp_paws_rejected);
        send_ack(t, now);
        return;
    }

    // 1. Acceptability (RFC 9293 3.10.7.4, first check), against the window we advertised.
    const uint32_t rcv_wnd = seq_gt(t.rcv_adv, t.rcv_nxt) ? t.rcv_adv - t.rcv_nxt : 0;
    const uint32_t seg_len = plen + (syn ? 1 : 0) + (fin ? 1 : 0);
    const auto in_window = [&](uint32_t x) {
        return seq_le(t.rcv_nxt, x) && seq_lt(x, t.rcv_nxt + rcv_wnd);
    };
    bool acceptable;
    if (seg_len == 0) {
        acceptable = rcv_wnd == 0 ? s.seq == t.rcv_nxt : in_window(s.seq);
    } else {
        acceptable = rcv_wnd != 0 && (in_window(s.seq) || in_window(s.seq + seg_len - 1));
        // "Special allowance" for a zero window: take the ACK (and RST) of a segment at
        // RCV.NXT, e.g. a window probe, and drop its data below.
        if (rcv_wnd == 0 && s.seq == t.rcv_nxt) {
            acceptable = true;
        }
    }
    if (!acceptable) {
        if (!rst) {
            bump(counter::tcp_out_of_window);
            send_ack(t, now);
        }
        return;
    }

    // RFC 7323 4.3 (2): remember the newest timestamp of a segment that covers Last.ACK.sent.
    if (t.ts_ok && s.opt.has_timestamps && seq_ge(s.opt.ts_val, t.ts_recent) &&
        seq_le(s.seq, t.last_ack_sent)) {
        t.ts_recent = s.opt.ts_val;
    }

    // 2. RST (RFC 5961 3.2): exact RCV.NXT resets, anything else in the window is challenged.
    if (rst) {
        if (s.seq != t.rcv_nxt) {
            challenge_ack(t, now); // a genuine peer answers with an exact RST
            return;
        }
        bump(counter::tcp_rst_received);
        if (t.state == tcp_state::syn_rcvd && t.passive) {
            kill(t); // back to LISTEN: the user never saw this connection
        } else if (t.state == tcp_state::syn_rcvd) {
            fail(t, ECONNREFUSED);
        } else {
            fail(t, ECONNRESET);
        }
        return;
    }

    // 4. SYN in a synchronized state (RFC 5961 4.2): challenge ACK, drop.
    if (syn) {
        challenge_ack(t, now);
        return;
    }

    // 5. ACK.
    if ((s.flags & tcp_flag::ack) == 0) {
        return;
    }
    t.last_rx_ns = now;
    t.ka_probes = 0;
    if (t.state == tcp_state::syn_rcvd) {
        if (!(seq_lt(t.snd_una, s.ack) && seq_le(s.ack, t.snd_max))) {
            emit(t, s.ack, 0, tcp_flag::rst, now);
            bump(counter::tcp_rst_sent);
            return;
        }
        establish(t, s, now);
        if (t.passive) {
            const bool listener_ok = t.listener < _listeners.size() &&
                                     _listeners[t.listener].used &&
                                     _listeners[t.listener].gen == t.listener_gen;
            if (t.half_open) {
                t.half_open = false;
                if (listener_ok) {
                    --_listeners[t.listener].half_open;
                }
            }
            if (!listener_ok) {
                emit(t, t.snd_nxt, 0, tcp_flag::rst, now);
                bump(counter::tcp_rst_sent);
                kill(t);
                return;
            }
            t.accepted = true;
            bump(counter::tcp_accepted);
            _ev->on_accept(sock_id{k_listener_bit | t.listener, t.listener_gen}, id_of(t),
                           t.remote_ip, t.remote_port);
        } else {
            t.accepted = true;
            _ev->on_connect(id_of(t), 0);
        }
        if (!alive(t, gen)) {
            return;
        }
    } else if (!ack_input(t, s, now)) {
        return;
    }
    if (!alive(t, gen)) {
        return;
    }

    // 7. Segment text, trimmed to what is new and inside the window.
    std::span<const std::byte> data = s.payload;
    uint32_t seq = s.seq;
    bool fin_in = fin;
    if (seq_lt(seq, t.rcv_nxt)) {
        const uint32_t skip = std::min<uint32_t>(t.rcv_nxt - seq, plen);
        data = data.subspan(skip);
        seq += skip;
        if (seq_lt(seq, t.rcv_nxt)) {
            fin_in = false; // the FIN itself is old
        }
    }
    const uint32_t room = std::min(rcv_wnd, rcv_space(t));
    const uint32_t off = seq - t.rcv_nxt;
    bool trimmed = false; // part of the segment lay beyond the window: tell the sender at once
    if (off >= room) {
        // Nothing fits (zero window): a bare FIN at RCV.NXT still counts, it needs no buffer.
        fin_in = fin_in && off == 0 && data.empty();
        data = {};
    } else if (data.size() > room - off) {
        data = data.first(room - off);
        fin_in = false;
        trimmed = true;
    }
    const bool can_receive = t.state == tcp_state::established ||
                             t.state == tcp_state::fin_wait_1 || t.state == tcp_state::fin_wait_2;
    if (!data.empty() && can_receive) {
        data_input(t, seq, data, (s.flags & tcp_flag::psh) != 0, now);
        if (!alive(t, gen)) {
            return;
        }
        if (trimmed && t.unacked_segs > 0) {
            send_ack(t, now);
        }
    } else if (plen > 0) {
        send_ack(t, now); // duplicate, beyond the window, or after the peer's FIN
    }

    // 8. FIN, once everything before it has arrived.
    if (fin_in && seq + data.size() == t.rcv_nxt && !t.fin_rcvd) {
        fin_input(t, now);
        if (!alive(t, gen)) {
            return;
        }
    } else if (fin_in && t.fin_rcvd && t.state == tcp_state::time_wait) {
        send_ack(t, now);
    }
    output(t, now);
    if (alive(t, gen) && t.unacked_segs > 0 && t.t_delack == k_never) {
        t.t_delack = now + uint64_t(_cfg.tcp.delayed_ack_ms) * 1'000'000ull;
        timer_update(t);
    }
}

bool stack::impl::ack_input(tcb& t, const tcp_segment& s, uint64_t now) {
    // RFC 5961 5.2: acceptable ACKs lie in [SND.UNA - MAX.SND.WND, SND.NXT] (SND.NXT here is
    // snd_max: after a timeout snd_nxt went back).
    if (seq_gt(s.ack, t.snd_max)) {
        send_ack(t, now);
        return false;
    }
    if (seq_lt(s.ack, t.snd_una - t.max_snd_wnd)) {
        send_ack(t, now);
        return false;
    }
    const uint32_t wnd = uint32_t(s.window) << t.snd_wscale;
    if (seq_gt(s.ack, t.snd_una)) {
        const uint32_t acked = s.ack - t.snd_una;
        if (t.rtt_timing && seq_ge(s.ack, t.rtt_seq)) {
            rtt_sample(t, now - t.rtt_start_ns);
            t.rtt_timing = false;
        }
        t.snd_una = s.ack;
        if (seq_lt(t.snd_nxt, t.snd_una)) {
            t.snd_nxt = t.snd_una;
        }
        trim_owned(t);
        t.rtx_count = 0;
        t.backoff = 0;
        t.una_since_ns = now;
        if (t.in_recovery) {
            if (seq_ge(s.ack, t.recover)) {
                // RFC 6582 3.2 (3), full acknowledgment: deflate to ssthresh.
                const uint32_t flight = t.snd_max - t.snd_una;
                t.cwnd = std::min(t.ssthresh, std::max<uint32_t>(flight, t.mss) + t.mss);
                t.in_recovery = false;
                t.dupacks = 0;
            } else {
                // Partial acknowledgment: retransmit the next hole, deflate by the amount
                // ACKed, add back one segment.
                retransmit_head(t, now);
                t.cwnd = t.cwnd > acked ? t.cwnd - acked : 0;
                t.cwnd = std::max<uint32_t>(t.cwnd + (acked >= t.mss ? t.mss : 0), t.mss);
            }
        } else {
            t.dupacks = 0;
            if (t.cwnd < t.ssthresh) {
                t.cwnd += std::min<uint32_t>(acked, t.mss); // RFC 5681 3.1 slow start
            } else {
                t.cwnd += std::max<uint32_t>(1, uint32_t(uint64_t(t.mss) * t.mss / t.cwnd));
            }
        }
        t.t_rtx = t.snd_una == t.snd_max ? k_never : now + rto_ns(t);
        timer_update(t);
        if (t.send_outstanding && !t.user_closed) {
            mark_pending(t);
        }
    } else if (s.ack == t.snd_una && s.payload.empty() &&
               (s.flags & (tcp_flag::syn | tcp_flag::fin)) == 0 && wnd == t.snd_wnd &&
               t.snd_max != t.snd_una) {
        // RFC 5681 2 "duplicate acknowledgment".
        ++t.dupacks;
        bump(counter::tcp_dup_acks);
        if (t.dupacks == 3 && !t.in_recovery && seq_gt(s.ack, t.recover - 1)) {
            // RFC 6582 3.2 (2): fast retransmit, enter fast recovery.
            const uint32_t flight = t.snd_max - t.snd_una;
            t.ssthresh = std::max<uint32_t>(flight / 2, 2u * t.mss);
            t.recover = t.snd_max;
            t.in_recovery = true;
            t.cwnd = t.ssthresh + 3u * t.mss;
            bump(counter::tcp_fast_retransmits);
            retransmit_head(t, now);
            t.t_rtx = now + rto_ns(t);
            timer_update(t);
        } else if (t.in_recovery) {
            t.cwnd += t.mss; // RFC 6582 3.2 (4): inflate for each segment that left
        }
    }
    // Window update (RFC 9293 3.10.7.4 step 5): only from a segment newer than the last one.
    if (seq_lt(t.snd_wl1, s.seq) || (t.snd_wl1 == s.seq && seq_le(t.snd_wl2, s.ack))) {
        t.snd_wnd = wnd;
        t.snd_wl1 = s.seq;
        t.snd_wl2 = s.ack;
        t.max_snd_wnd = std::max(t.max_snd_wnd, wnd);
    }

    const bool fin_acked = t.fin_queued && seq_gt(t.snd_una, t.fin_seq);
    switch (t.state) {
    case tcp_state::fin_wait_1:
        if (fin_acked) {
            t.state = tcp_state::fin_wait_2;
            if (t.user_closed) {
                t.t_misc = now + uint64_t(_cfg.tcp.time_wait_ms) * 1'000'000ull;
                timer_update(t);
            }
        }
        break;
    case tcp_state::closing:
        if (fin_acked) {
            enter_time_wait(t, now);
        }
        break;
    case tcp_state::last_ack:
        if (fin_acked) {
            // Report the last send before the id goes away.
            const uint32_t gen = t.gen;
            deliver_pending(t, now);
            if (!alive(t, gen)) {
                return false;
            }
            if (!t.user_closed && (t.rx.used > 0 || !t.rx_ended)) {
                // The reader is paused on bytes (or the EOF) it has not seen: hold them in
                // TIME-WAIT, which answers a retransmitted FIN and expires once they are read.
                enter_time_wait(t, now);
            } else {
                kill(t);
            }
            return false;
        }
        break;
    default:
        break;
    }
    return true;
}

void stack::impl::data_input(tcb& t, uint32_t seq, std::span<const std::byte> data, bool push,
                             uint64_t now) {
    const auto len = static_cast<uint32_t>(data.size());
    detail::rx_ring& rx = t.rx;
    if (t.user_closed) {
        // Orphan: the reader is gone; accept in-order bytes so the close handshake can finish.
        if (seq == t.rcv_nxt) {
            t.rcv_nxt += len;
            ++t.unacked_segs;
        } else {
            send_ack(t, now);
        }
        return;
    }
    if (seq != t.rcv_nxt) {
        // Out of order: keep it (bounded by the window and k_max_ooo_ranges), ACK at once so
        // the sender sees duplicate ACKs (RFC 5681 4.2).
        bump(counter::tcp_ooo_segments);
        if (!ensure_ring(t)) {
            bump(counter::tcp_rcv_nomem);
        } else {
            uint32_t b = seq, e = seq + len;
            std::size_t n = 0;
            std::array<detail::rx_ring::range, detail::k_max_ooo_ranges> merged{};
            bool fits = true;
            for (std::size_t i = 0; i < rx.n_ooo; ++i) {
                const auto r = rx.ooo[i];
                if (seq_le(r.begin, e) && seq_le(b, r.end)) {
                    b = seq_lt(r.begin, b) ? r.begin : b;
                    e = seq_gt(r.end, e) ? r.end : e;
                } else if (n < merged.size()) {
                    merged[n++] = r;
                } else {
                    fits = false;
                }
            }
            if (fits && n < merged.size()) {
                const uint32_t pos = (rx.head + rx.used + (seq - t.rcv_nxt)) % t.rcv_cap;
                const uint32_t first = std::min(len, t.rcv_cap - pos);
                std::memcpy(rx.buf.get() + pos, data.data(), first);
                std::memcpy(rx.buf.get(), data.data() + first, len - first);
                merged[n++] = {b, e};
                std::sort(merged.begin(), merged.begin() + n,
                          [](const auto& x, const auto& y) { return seq_lt(x.begin, y.begin); });
                rx.ooo = merged;
                rx.n_ooo = static_cast<uint8_t>(n);
            } else {
                bump(counter::tcp_ooo_dropped); // too many holes: the peer resends it
            }
        }
        send_ack(t, now);
        return;
    }
    const uint32_t gen = t.gen;
    const bool had_ooo = rx.n_ooo > 0;
    if (t.recv_wanted && rx.used == 0) {
        // Zero copy: hand the frame's bytes to the reader while they are still in the frame.
        t.rcv_nxt += len;
        if (rx.buf) {
            rx.head = (rx.head + len) % t.rcv_cap;
        }
        _ev->on_recv(id_of(t), data);
        if (!alive(t, gen) || t.user_closed) {
            return;
        }
    } else {
        if (!ensure_ring(t)) {
            bump(counter::tcp_rcv_nomem);
            return; // as if lost: the peer retransmits
        }
        const uint32_t pos = (rx.head + rx.used) % t.rcv_cap;
        const uint32_t first = std::min(len, t.rcv_cap - pos);
        std::memcpy(rx.buf.get() + pos, data.data(), first);
        std::memcpy(rx.buf.get(), data.data() + first, len - first);
        rx.used += len;
        t.rcv_nxt += len;
    }
    // Ranges that now continue the in-order data join it (RFC 9293 3.10.7.4 step 7).
    std::size_t keep = 0;
    for (std::size_t i = 0; i < rx.n_ooo; ++i) {
        const auto r = rx.ooo[i];
        if (seq_le(r.begin, t.rcv_nxt)) {
            if (seq_gt(r.end, t.rcv_nxt)) {
                rx.used += r.end - t.rcv_nxt;
                t.rcv_nxt = r.end;
            }
        } else {
            rx.ooo[keep++] = r;
        }
    }
    rx.n_ooo = static_cast<uint8_t>(keep);
    ++t.unacked_segs;
    if (rx.used > 0 && t.recv_wanted) {
        // Bytes that joined from the ring go to the reader now, so the ACK below carries the
        // window they free.
        deliver_pending(t, now);
        if (!alive(t, gen) || t.user_closed) {
            return;
        }
    }
    // RFC 5681 4.2 / RFC 9293 3.8.6.3: ACK at least every second full segment, and at once
    // when the segment filled a hole. Also at once on PSH: it ends the sender's write, and a
    // sender that waits for the ACK before writing more (a peer whose window is full, or one
    // that completes writes only on ACK) would otherwise lose delayed_ack_ms per write.
    if (t.unacked_segs > 0 && (had_ooo || push || t.unacked_segs >= 2)) {
        send_ack(t, now);
    }
}

void stack::impl::fin_input(tcb& t, uint64_t now) {
    t.rcv_nxt += 1;
    t.fin_rcvd = true;
    const bool fin_acked = t.fin_queued && seq_gt(t.snd_una, t.fin_seq);
    switch (t.state) {
    case tcp_state::established:
        t.state = tcp_state::close_wait;
        break;
    case tcp_state::fin_wait_1:
        if (fin_acked) {
            enter_time_wait(t, now);
        } else {
            t.state = tcp_state::closing; // simultaneous close
        }
        break;
    case tcp_state::fin_wait_2:
        enter_time_wait(t, now);
        break;
    default:
        break;
    }
    send_ack(t, now);
    if (!t.user_closed) {
        mark_pending(t); // EOF after any buffered bytes
    }
}

} // namespace apprelay::net
