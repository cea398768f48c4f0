#pragma once
// apprelay's user-space TCP/IP for the dpdk backend: one `stack` per worker, nothing shared, no
// locks, no threads. The stack never touches a NIC: frames come in through input() and go out
// through the `link` its owner gives it (the dpdk backend's queue, or a test that crafts and
// inspects frames). Time is passed in (now_ns, CLOCK_MONOTONIC) so tests drive every timer.
//
// Socket model (mirrors io::sink so io::dpdk_loop can implement io::loop on top of it):
// - listen(port) -> listener; each established passive connection is reported once through
//   tcp_events::on_accept (after the 3-way handshake), owned by no one until the caller uses it.
// - Receive: while recv is wanted, in-order bytes are delivered by on_recv straight from the
//   received frame (the span is valid only during the call: zero copy up to the caller). While
//   paused, bytes are kept in the connection's receive buffer (bounded by the window we
//   advertised) and delivered on resume. EOF (FIN in order) -> on_recv_end(0); RST -> on_recv_end(-ECONNRESET).
// - Send: send(data) with at most one send outstanding; data must stay valid and unchanged until
//   on_sent(n). on_sent(n) means the stack no longer reads the first n bytes of the send; the
//   owner may free or reuse them. It comes as soon as every byte of the send has been
//   transmitted once (not ACKed: like a kernel socket's write into its send buffer): the stack
//   then copies the bytes the peer has not ACKed yet into its own per-connection ring (bounded
//   by the bytes in flight) and reports n = the whole send, so the owner can send more at once
//   without waiting for the peer's (possibly delayed) ACK. A short n can still happen (the
//   window closed before the whole send went out, or no memory for the ring): it reports bytes
//   ACKed, and the next send() must begin with the remaining bytes, unchanged: the stack may
//   already have transmitted some of them (it tracks snd_una/snd_nxt), so segments and
//   retransmissions are built straight from the caller's data (one copy, into the frame).
//   The sequence space is [owned unACKed bytes][caller's send]; new segments come from the
//   caller's data, retransmissions from either.
//   -errno in on_sent = the connection failed (RST, retransmission limit, keepalive) with a
//   send outstanding; bytes the stack owned are then dropped (the failure also shows as
//   on_recv_end(-errno)).
// - close(id, abort=false): every byte handed over and not yet ACKed (owned, plus the rest of an
//   outstanding send, which the stack copies since the caller frees it right after) still goes
//   out, then FIN. abort=true: RST at once. No callbacks for that id after close().
#include "dataplane/base/result.hh"
#include "dataplane/net/addr.hh"

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace apprelay::net {

// Handle of a socket (listener or connection): slot index + generation, like io::conn_id.
struct sock_id {
    uint32_t index = UINT32_MAX;
    uint32_t gen = 0;
    bool valid() const noexcept { return index != UINT32_MAX; }
    friend bool operator==(sock_id, sock_id) = default;
};

// Where frames leave the stack. tx_alloc gives room for one Ethernet frame of up to `len`
// bytes (empty span: no buffer, counted by the stack as tx_nobufs, the segment is treated as
// lost and retransmitted later); tx_commit(len) queues the frame last allocated.
class link {
public:
    virtual ~link() = default;
    virtual std::span<std::byte> tx_alloc(std::size_t len) = 0;
    virtual void tx_commit(std::size_t len) = 0;
};

class tcp_events {
public:
    virtual ~tcp_events() = default;
    // peer_ip/peer_port in host byte order.
    virtual void on_accept(sock_id listener, sock_id conn, uint32_t peer_ip, uint16_t peer_port) = 0;
    virtual void on_connect(sock_id conn, int res) = 0; // active open: 0 or -errno
    virtual void on_recv(sock_id conn, std::span<const std::byte> data) = 0;
    virtual void on_recv_end(sock_id conn, int res) = 0;
    virtual void on_sent(sock_id conn, int res) = 0;
};

struct tcp_config {
    uint16_t mss = 1460;                 // advertised; the effective MSS is min(ours, peer's)
    uint32_t rcv_buf = 4u << 20;         // receive buffer per connection (window we advertise)
    uint8_t wscale = 7;                  // our window scale shift (RFC 7323), if the peer offers one
    bool sack_permitted = true;          // negotiate SACK-permitted (RFC 2018)
    bool timestamps = true;              // negotiate timestamps + PAWS (RFC 7323)
    uint32_t syn_backlog = 1024;         // half-open connections per listener; beyond: SYN cookies
    uint32_t max_connections = 65536;    // per stack; beyond: SYN answered with RST, counted
    uint32_t rto_min_ms = 200, rto_max_ms = 60000, rto_initial_ms = 1000; // RFC 6298
    uint32_t max_retransmits = 12;       // then the connection fails (-ETIMEDOUT)
    uint32_t delayed_ack_ms = 40;        // ACK at least every 2nd full segment, else after this
    uint32_t keepalive_idle_ms = 0;      // 0 = off
    uint32_t keepalive_interval_ms = 10000, keepalive_probes = 6;
    uint32_t time_wait_ms = 60000;       // 2 MSL
    uint32_t user_timeout_ms = 20000;    // TCP_USER_TIMEOUT equivalent (RELIABILITY.md)
    // RSTs to segments for no socket and RFC 5961 challenge ACKs, per stack per second (burst:
    // one second's worth). Beyond it they are not sent (counted): no reflection amplifier.
    uint32_t ctl_replies_per_s = 1000;
};

struct stack_config {
    mac_addr mac{};
    uint32_t ipv4 = 0;        // our address, host byte order
    uint8_t prefix_len = 24;  // on-link subnet
    uint32_t gateway = 0;     // 0 = none (off-link peers unreachable)
    uint16_t mtu = 1500;
    uint32_t arp_timeout_ms = 60000;
    uint32_t arp_max_entries = 4096;
    tcp_config tcp;
};

// Counters: every dropped or refused frame is counted by reason (names are the Prometheus
// suffixes the relay exports).
#define APPRELAY_NET_COUNTERS(X)                                                                   \
    X(rx_frames) X(tx_frames) X(tx_nobufs)                                                         \
    X(rx_bad_eth) X(rx_not_for_us) X(arp_requests_answered) X(arp_replies) X(arp_bad)             \
    X(ip_bad_header) X(ip_bad_checksum) X(ip_fragments_dropped) X(ip_unknown_proto)                \
    X(icmp_echo_answered) X(icmp_bad)                                                              \
    X(tcp_bad_checksum) X(tcp_bad_header) X(tcp_bad_options) X(tcp_no_socket_rst)                  \
    X(tcp_syn_received) X(tcp_syn_cookies_sent) X(tcp_syn_cookies_ok) X(tcp_syn_dropped)           \
    X(tcp_accepted) X(tcp_conn_limit) X(tcp_out_of_window) X(tcp_paws_rejected)                    \
    X(tcp_retransmits) X(tcp_fast_retransmits) X(tcp_rto_expired) X(tcp_dup_acks)                  \
    X(tcp_ooo_segments) X(tcp_rst_received) X(tcp_rst_sent) X(tcp_timeouts)                        \
    X(tcp_zero_window_probes) X(tcp_keepalive_probes) X(tcp_time_wait)                            \
    X(arp_cache_full) X(tcp_ooo_dropped) X(tcp_rcv_nomem) X(tcp_ctl_ratelimited)

enum class counter : uint16_t {
#define APPRELAY_NET_COUNTER_ENUM(n) n,
    APPRELAY_NET_COUNTERS(APPRELAY_NET_COUNTER_ENUM)
#undef APPRELAY_NET_COUNTER_ENUM
        count_
};
const char* counter_name(counter c) noexcept;

class stack {
public:
    stack(const stack_config& cfg, link* out, tcp_events* ev);
    ~stack();
    stack(const stack&) = delete;
    stack& operator=(const stack&) = delete;

    // One received Ethernet frame. Everything is validated; bad frames are dropped and counted.
    void input(std::span<const std::byte> frame, uint64_t now_ns);
    // Retransmissions, delayed ACKs, persist/keepalive probes, TIME_WAIT, ARP expiry.
    void run_timers(uint64_t now_ns);
    // Earliest time run_timers has work (UINT64_MAX = none): the loop may sleep until then.
    uint64_t next_timer_ns() const noexcept;

    result<sock_id> listen(uint16_t port);                        // host byte order
    result<sock_id> connect(uint32_t ip, uint16_t port, uint64_t now_ns); // active open
    void start_recv(sock_id id);
    void pause_recv(sock_id id);
    bool send(sock_id id, std::span<const std::byte> data);   // false: one outstanding, or stale id
    void shutdown_write(sock_id id);                          // FIN after queued data
    void close(sock_id id, bool abort);

    uint64_t count(counter c) const noexcept;
    std::size_t connections() const noexcept;                 // in any state but CLOSED
    std::size_t bytes_per_connection() const noexcept;        // memory of one established TCB
    // Everything the stack holds now: slots, tables, receive rings and send rings.
    std::size_t memory_bytes() const noexcept;

    struct impl;

private:
    std::unique_ptr<impl> _impl;
};

} // namespace apprelay::net
