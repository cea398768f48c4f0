#pragma once
// Transmission control block: everything one connection needs, kept compact (one cache-line
// group of hot fields; the receive ring is allocated only when the application pauses reading
// or a segment arrives out of order, and kept until the connection ends).
//
// States (RFC 9293 3.3.2, figure 5):
//
//   passive: LISTEN -SYN/SYN-ACK-> SYN-RCVD -ACK-> ESTABLISHED        (on_accept)
//   active:  SYN-SENT -SYN-ACK/ACK-> ESTABLISHED                      (on_connect(0))
//            SYN-SENT -SYN/SYN-ACK-> SYN-RCVD                         (simultaneous open)
//   we close first:  ESTABLISHED -FIN-> FIN-WAIT-1 -ACK-> FIN-WAIT-2 -FIN/ACK-> TIME-WAIT
//                    FIN-WAIT-1 -FIN/ACK-> CLOSING -ACK-> TIME-WAIT   (simultaneous close)
//   peer closes first: ESTABLISHED -FIN/ACK-> CLOSE-WAIT -FIN-> LAST-ACK -ACK-> CLOSED
//   TIME-WAIT -2MSL-> CLOSED; RST (RFC 5961 checked) or a failure -> CLOSED from anywhere.
//
// Sequence variables follow RFC 9293 3.3.1, plus snd_max (highest sequence sent: after an RTO
// snd_nxt goes back to snd_una and climbs again). The bytes the stack can (re)send are one
// sequence space in two parts: [snd_seq - owned.len, snd_seq) in the stack's own ring (sent but
// not yet ACKed bytes of sends already reported complete, or kept at close()), then the user's
// outstanding send at [snd_seq, snd_seq + snd_len). A FIN, once queued, sits at fin_seq.
#include "dataplane/net/addr.hh"

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace apprelay::net::detail {

inline constexpr uint64_t k_never = UINT64_MAX;
// Out-of-order ranges kept per connection; a segment that would need more is dropped (and
// retransmitted by the peer): bounds the bookkeeping, the bytes are bounded by the window.
inline constexpr std::size_t k_max_ooo_ranges = 8;

enum class tcp_state : uint8_t {
    closed,
    syn_sent,
    syn_rcvd,
    established,
    fin_wait_1,
    fin_wait_2,
    closing,
    time_wait,
    close_wait,
    last_ack,
};

// Modular sequence comparisons (RFC 9293 3.4).
constexpr bool seq_lt(uint32_t a, uint32_t b) noexcept {
    return int32_t(a - b) < 0;
}
constexpr bool seq_le(uint32_t a, uint32_t b) noexcept {
    return int32_t(a - b) <= 0;
}
constexpr bool seq_gt(uint32_t a, uint32_t b) noexcept {
    return int32_t(a - b) > 0;
}
constexpr bool seq_ge(uint32_t a, uint32_t b) noexcept {
    return int32_t(a - b) >= 0;
}

// Receive ring: in-order bytes not yet delivered start at `head` (`used` of them); the byte for
// sequence s >= rcv_nxt lives at (head + used + (s - rcv_nxt)) % cap, so delivering straight
// from a frame (head += n with rcv_nxt += n) keeps stored out-of-order bytes where they are.
struct rx_ring {
    std::unique_ptr<std::byte[]> buf;
    uint32_t head = 0;
    uint32_t used = 0;
    struct range {
        uint32_t begin; // sequence numbers, [begin, end)
        uint32_t end;
    };
    std::array<range, k_max_ooo_ranges> ooo{};
    uint8_t n_ooo = 0;
};

// Send-side retention ring: bytes of completed sends that are not ACKed yet, oldest first at
// `head`. Its storage grows to the largest flight it had to hold and is then reused (no
// allocation per send); it is freed with the connection.
struct tx_ring {
    std::unique_ptr<std::byte[]> buf;
    uint32_t cap = 0;
    uint32_t head = 0;
    uint32_t len = 0;
};

struct tcb {
    // Identity and state.
    uint32_t gen = 0;
    uint32_t self = 0; // slot index
    tcp_state state = tcp_state::closed;
    uint8_t snd_wscale = 0; // shift applied to the peer's window field
    uint8_t rcv_wscale = 0; // shift applied to the window we advertise
    uint8_t dupacks = 0;
    uint32_t remote_ip = 0;
    uint16_t local_port = 0;
    uint16_t remote_port = 0;
    mac_addr remote_mac{};
    uint16_t mss = 536;             // effective send MSS
    uint32_t listener = UINT32_MAX; // passive: listener slot until accepted
    uint32_t listener_gen = 0;

    // Flags.
    bool mac_ok : 1 = false;
    bool passive : 1 = false;
    bool half_open : 1 = false;   // counted in its listener's half_open
    bool accepted : 1 = false;    // reported to the user (on_accept / on_connect(0))
    bool user_closed : 1 = false; // close() called: no more callbacks
    bool recv_wanted : 1 = false;
    bool rx_ended : 1 = false; // on_recv_end delivered
    bool fin_rcvd : 1 = false;
    bool fin_queued : 1 = false;
    bool send_outstanding : 1 = false;
    bool in_pending : 1 = false;
    bool in_recovery : 1 = false; // NewReno fast recovery (RFC 6582)
    bool rtt_timing : 1 = false;
    bool sack_ok : 1 = false;
    bool ws_ok : 1 = false;      // window scaling negotiated (RFC 7323 2.2)
    bool ts_ok : 1 = false;      // timestamps negotiated (RFC 7323 3.2): on every segment
    bool win_update : 1 = false; // advertise the reopened window at the next flush

    // Send sequence space.
    uint32_t iss = 0, snd_una = 0, snd_nxt = 0, snd_max = 0;
    uint32_t snd_wnd = 0, max_snd_wnd = 0, snd_wl1 = 0, snd_wl2 = 0;
    uint32_t cwnd = 0, ssthresh = 0, recover = 0;
    uint32_t fin_seq = 0;
    const std::byte* snd_data = nullptr; // the user's outstanding send
    uint32_t snd_seq = 0;                // sequence of snd_data[0] = end of `owned`
    uint32_t snd_len = 0;

    // Receive sequence space.
    uint32_t irs = 0, rcv_nxt = 0, rcv_adv = 0; // rcv_adv: right edge we advertised
    uint32_t ts_recent = 0;                     // RFC 7323 4.3 TS.Recent
    uint32_t last_ack_sent = 0;                 // RFC 7323 4.3 Last.ACK.sent
    uint32_t rcv_cap = 0;                       // receive buffer = maximum window
    uint8_t unacked_segs = 0;                   // in-order segments not yet ACKed

    // Retransmission (RFC 6298), microseconds.
    uint8_t backoff = 0;
    uint8_t rtx_count = 0;
    uint8_t ka_probes = 0;
    uint32_t srtt_us = 0, rttvar_us = 0, rto_us = 0;
    uint32_t rtt_seq = 0;
    uint64_t rtt_start_ns = 0;
    uint64_t una_since_ns = 0; // oldest unACKed data outstanding since (user timeout)
    uint64_t last_rx_ns = 0;

    // Timers: the heap is keyed by the earliest of the three.
    uint64_t t_rtx = k_never;    // retransmission, SYN(-ACK) retry or persist probe
    uint64_t t_delack = k_never; // delayed ACK
    uint64_t t_misc = k_never;   // TIME-WAIT, FIN-WAIT-2 orphan limit, keepalive
    uint32_t heap_pos = UINT32_MAX;

    rx_ring rx;
    tx_ring owned; // unACKed bytes of completed sends, ending at snd_seq

    uint64_t next_deadline() const noexcept {
        uint64_t d = t_rtx < t_delack ? t_rtx : t_delack;
        return d < t_misc ? d : t_misc;
    }
    bool synchronized() const noexcept {
        return state != tcp_state::closed && state != tcp_state::syn_sent &&
               state != tcp_state::syn_rcvd;
    }
    // End of the data the stack can send: the user's buffer, or what it already holds.
    uint32_t data_end() const noexcept { return send_outstanding ? snd_seq + snd_len : snd_seq; }
    // Sequence of the first byte in `owned`.
    uint32_t owned_seq() const noexcept { return snd_seq - owned.len; }
};

} // namespace apprelay::net::detail
