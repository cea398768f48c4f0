#pragma once
// stack::impl: the per-core state of the stack, shared by stack.cc (Ethernet, ARP, IPv4, ICMP,
// API, timers) and tcp_input.cc / tcp_output.cc (TCP).
//
// Callbacks and lifetime: TCBs are never freed while a call into the stack is running. A
// connection that ends is unhooked from lookup and timers at once (state CLOSED) and put on the
// reap list, which input() and run_timers() empty on their way out; so a callback that closes
// its own (or another) connection never leaves a dangling pointer behind. on_sent and buffered
// on_recv/on_recv_end are delivered from the pending list at the same points, never from inside
// send()/start_recv() (mirrors io::sink: no callback re-enters a call the owner made).
#include "dataplane/net/arp.hh"
#include "dataplane/net/detail/probe_table.hh"
#include "dataplane/net/detail/tcb.hh"
#include "dataplane/net/stack.hh"
#include "dataplane/net/syn_cookie.hh"
#include "dataplane/net/tcp_wire.hh"

#include <memory>
#include <vector>

namespace apprelay::net {

// Listener slots are told apart from connection slots by this bit in sock_id::index.
inline constexpr uint32_t k_listener_bit = 0x8000'0000u;
inline constexpr std::size_t k_tcb_chunk = 256; // TCBs allocated together (stable addresses)
inline constexpr uint8_t k_synack_retries = 5;  // half-open lifetime ~63 s at rto_initial 1 s
inline constexpr uint8_t k_arp_tries = 3;       // requests before a connect fails
inline constexpr uint64_t k_arp_retry_ns = 1'000'000'000ull;
inline constexpr uint16_t k_min_mss = 64;                   // floor for a peer's MSS option
inline constexpr uint16_t k_default_peer_mss = 536;         // RFC 9293 3.7.1 without an MSS option
inline constexpr uint16_t k_ephemeral_first = 49152;        // RFC 6335 6
inline constexpr uint32_t k_ssthresh_initial = 0x7fffffffu; // RFC 5681 3.1: "arbitrarily high"

struct received_frame {
    mac_addr src_mac{};
    uint32_t src_ip = 0;
    uint32_t dst_ip = 0;
};

struct stack::impl {
    struct listener {
        uint16_t port = 0;
        bool used = false;
        uint32_t gen = 0;
        uint32_t half_open = 0;
    };
    // 4-tuple -> TCB slot. Local address is the stack's own, so the key is 3 fields.
    struct conn_slot {
        uint32_t ip = 0;
        uint16_t lport = 0;
        uint16_t rport = 0;
        uint32_t idx = UINT32_MAX;
        bool used() const noexcept { return idx != UINT32_MAX; }
        void clear() noexcept { *this = conn_slot{}; }
    };

    impl(const stack_config& c, link* l, tcp_events* e);

    // --- layers below TCP (stack.cc) ---
    void on_frame(std::span<const std::byte> frame, uint64_t now);
    void arp_input(const struct eth_header& eth, std::span<const std::byte> payload, uint64_t now);
    void arp_send(uint16_t op, const mac_addr& dst_mac, uint32_t dst_ip);
    void arp_learn(uint32_t ip, const mac_addr& mac, bool create, uint64_t now);
    void arp_timers(uint64_t now);
    void icmp_input(const received_frame& rf, std::span<const std::byte> msg);
    bool on_link(uint32_t ip) const noexcept;
    bool resolve(detail::tcb& t, uint64_t now); // true once t.remote_mac is known

    // Frame buffer for an IPv4 datagram of ip_payload bytes: Ethernet + IPv4 headers written,
    // returns the span of the whole frame (empty: no buffer, counted).
    std::span<std::byte> alloc_ipv4(const mac_addr& dst_mac, uint32_t dst_ip, uint8_t proto,
                                    std::size_t ip_payload);
    void commit(std::size_t len);

    // --- TCP (tcp_input.cc / tcp_output.cc) ---
    void tcp_input(const received_frame& rf, std::span<const std::byte> seg, uint64_t now);
    detail::tcb* new_passive_tcb(listener& l, uint32_t li, const received_frame& rf,
                                 const tcp_segment& s);
    void listen_input(listener& l, uint32_t li, const received_frame& rf, const tcp_segment& s,
                      uint64_t now);
    void syn_sent_input(detail::tcb& t, const tcp_segment& s, uint64_t now);
    void conn_input(detail::tcb& t, const tcp_segment& s, uint64_t now);
    bool ack_input(detail::tcb& t, const tcp_segment& s, uint64_t now);
    void data_input(detail::tcb& t, uint32_t seq, std::span<const std::byte> data, bool push,
                    uint64_t now);
    void fin_input(detail::tcb& t, uint64_t now);
    void send_rst_reply(const received_frame& rf, const tcp_segment& s);
    // A segment that belongs to no TCB (RST replies, SYN-ACK carrying a SYN cookie).
    void send_raw(const received_frame& rf, const tcp_segment& s, uint32_t seq, uint32_t ack,
                  uint8_t flags, uint16_t window, uint16_t mss_option);
    void establish(detail::tcb& t, const tcp_segment& s, uint64_t now);
    void rtx_fire(detail::tcb& t, uint64_t now);
    uint32_t initial_cwnd(const detail::tcb& t) const noexcept;
    // Our timestamp clock (RFC 7323 5.4): milliseconds, with a per-stack random offset.
    uint32_t ts_now(uint64_t now) const noexcept {
        return static_cast<uint32_t>(now / 1'000'000) + static_cast<uint32_t>(_key.k1 >> 32);
    }
    // Peer's SYN offered timestamps and we want them: enable, and make room in every segment.
    void negotiate_ts(detail::tcb& t, const tcp_options& o);
    void timer_fire(detail::tcb& t, uint64_t now);

    void output(detail::tcb& t, uint64_t now);
    // One segment from sequence seq: payload from the send buffer, SYN/FIN as flags say.
    bool emit(detail::tcb& t, uint32_t seq, uint32_t len, uint8_t flags, uint64_t now);
    void send_ack(detail::tcb& t, uint64_t now) { emit(t, t.snd_nxt, 0, tcp_flag::ack, now); }
    void send_syn(detail::tcb& t, uint64_t now);
    void retransmit_head(detail::tcb& t, uint64_t now); // one segment at snd_una
    // Send-side buffering (tcp_output.cc). copy_send: bytes [seq, seq + len) of the send
    // sequence space (owned ring, then the user's send) to dst.
    void copy_send(const detail::tcb& t, uint32_t seq, uint32_t len, std::byte* dst) const;
    // Releases the user's outstanding send: its unACKed bytes move to the owned ring and the
    // send is no longer outstanding. false (nothing changed): no memory for the ring.
    bool own_send(detail::tcb& t);
    void trim_owned(detail::tcb& t); // drops owned bytes below snd_una
    // Every byte of the outstanding send has been transmitted at least once: the owner may
    // have its buffer back (on_sent), the stack keeps what is not ACKed.
    static bool send_transmitted(const detail::tcb& t) noexcept {
        return t.send_outstanding && detail::seq_ge(t.snd_max, t.snd_seq + t.snd_len);
    }
    uint16_t window_field(detail::tcb& t, bool syn) const noexcept;
    uint32_t rcv_space(const detail::tcb& t) const noexcept;
    void maybe_ack(detail::tcb& t, uint64_t now);
    void arm_rtx(detail::tcb& t, uint64_t now);
    uint64_t rto_ns(const detail::tcb& t) const noexcept;
    void rtt_sample(detail::tcb& t, uint64_t rtt_ns);

    // --- connection lifecycle (stack.cc) ---
    detail::tcb* alloc_tcb(uint32_t& idx);
    detail::tcb* tcb_at(uint32_t idx) { return &_chunks[idx / k_tcb_chunk][idx % k_tcb_chunk]; }
    detail::tcb* lookup(sock_id id);
    detail::tcb* find_conn(uint32_t ip, uint16_t lport, uint16_t rport);
    bool hash_insert(detail::tcb& t, uint32_t idx);
    uint64_t conn_hash(uint32_t ip, uint16_t lport, uint16_t rport) const noexcept;
    uint32_t index_of(const detail::tcb& t) const noexcept { return t.self; }
    sock_id id_of(const detail::tcb& t) const noexcept { return {index_of(t), t.gen}; }
    // Ends the connection: err != 0 reports -err to the user (if it still owns the id).
    void fail(detail::tcb& t, int err);
    void kill(detail::tcb& t); // unhook, no callbacks
    void enter_time_wait(detail::tcb& t, uint64_t now);
    void mark_pending(detail::tcb& t);
    void flush(uint64_t now); // pending callbacks, then reap
    void deliver_pending(detail::tcb& t, uint64_t now);
    bool alive(const detail::tcb& t, uint32_t gen) const noexcept {
        return t.gen == gen && t.state != detail::tcp_state::closed;
    }
    bool ensure_ring(detail::tcb& t);

    // Indexed min-heap over TCB slots by next_deadline().
    void timer_update(detail::tcb& t);
    void heap_swap(uint32_t a, uint32_t b);
    void heap_up(uint32_t pos);
    void heap_down(uint32_t pos);
    void heap_remove(detail::tcb& t);

    // Budget for unsolicited control replies (RST to no socket, challenge ACKs; RFC 5961 7).
    bool ctl_allowed(uint64_t now) noexcept;
    void challenge_ack(detail::tcb& t, uint64_t now) {
        if (ctl_allowed(now)) {
            send_ack(t, now);
        }
    }

    void bump(counter c, uint64_t n = 1) noexcept { _counters[static_cast<std::size_t>(c)] += n; }

    stack_config _cfg;
    link* _link;
    tcp_events* _ev;
    uint32_t _mask; // on-link netmask
    siphash_key _key;
    uint16_t _ip_id = 0;
    uint16_t _next_port = k_ephemeral_first;

    arp_cache _arp;
    uint64_t _arp_next_ns = detail::k_never;
    uint32_t _arp_pending = 0;
    uint64_t _now = 0;       // latest time passed in: API calls without a clock use it
    int64_t _ctl_tokens = 0; // nanotokens (dataplane/base/token_bucket.hh)
    uint64_t _ctl_refill_ns = 0;

    std::vector<listener> _listeners;
    std::vector<std::unique_ptr<detail::tcb[]>> _chunks;
    std::vector<uint32_t> _free;
    uint32_t _n_slots = 0;
    std::size_t _n_conns = 0; // not CLOSED
    detail::probe_table<conn_slot> _conns;
    std::vector<uint32_t> _heap;
    std::vector<uint32_t> _pending;
    std::vector<uint32_t> _reap;
    bool _flushing = false;

    std::array<uint64_t, static_cast<std::size_t>(counter::count_)> _counters{};
};

} // namespace apprelay::net
