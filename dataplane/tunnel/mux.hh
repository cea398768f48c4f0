#pragma once
// The stream multiplexer of one tunnel: an I/O-free state machine shared by relay and connector.
// The owner feeds decrypted tunnel bytes in (receive) and takes whole frames out (produce); the
// mux enforces the protocol, per-stream credit flow control, the RELIABILITY.md limits, and
// schedules streams fairly on the write path.
//
// Stream states (relay opens, odd ids, strictly increasing):
//   open_sent/open_received -> open (after OPEN_ACK) -> half-closed (FIN one way) -> closed
//   (FIN both ways: on_stream_closed) ; RST or OPEN_FAIL at any point -> gone.
// DATA may follow OPEN at once (pipelining); the connector MUST NOT send DATA before OPEN_ACK.
#include "dataplane/base/counters.hh"
#include "dataplane/base/result.hh"
#include "dataplane/tunnel/frame.hh"

#include <memory>

namespace apprelay::tunnel {

enum class role : uint8_t { relay, connector };

struct mux_limits {
    uint32_t max_frame = k_default_max_frame;
    // What this side grants per stream (announced in HELLO / HELLO_ACK; the peer's own value
    // bounds what this side sends). 4 MiB: a stream must fill a WAN path (4 MiB / 30 ms RTT
    // = 1.1 Gbit/s), and on loopback 256 KiB held a download to 0.6x HAProxy's rate
    // (bench/run dl_1). Credit is only returned once the user's socket took the bytes, so
    // a slow reader holds at most this much at the relay.
    uint32_t initial_window = 4 * 1024 * 1024;
    uint32_t max_streams = 4096;
    // Token bucket per tunnel: RSTs received (never fails the tunnel; empty = new streams
    // refused, SPEC M20); opens are bounded by max_streams instead. A backstop only: a tunnel
    // carries many users, whose opens and aborts the relay charges to their source address
    // ([limits] source_*), so this is sized for the sum of many users' aborts.
    uint32_t open_reset_rate = 10'000;
    uint32_t open_reset_burst = 20'000;
    uint32_t max_control_queue = 1000;  // queued outbound control frames (PONG, WINDOW, RST...)
    uint32_t max_consecutive_empty = 1; // empty DATA frames in a row
    uint32_t max_window_per_data = 10;  // WINDOW frames received per DATA frame sent (+ slack)
};

// Per-type counters follow frame_type order (in_hello + type - 1), see in_counter()/out_counter().
#define APPRELAY_MUX_COUNTERS(X)                                                                   \
    X(frames_in, "frames received")                                                                \
    X(frames_out, "frames sent")                                                                   \
    X(in_hello, "HELLO frames received")                                                           \
    X(in_hello_ack, "HELLO_ACK frames received")                                                   \
    X(in_open, "OPEN frames received")                                                             \
    X(in_open_ack, "OPEN_ACK frames received")                                                     \
    X(in_open_fail, "OPEN_FAIL frames received")                                                   \
    X(in_data, "DATA frames received")                                                             \
    X(in_window, "WINDOW frames received")                                                         \
    X(in_fin, "FIN frames received")                                                               \
    X(in_rst, "RST frames received")                                                               \
    X(in_ping, "PING frames received")                                                             \
    X(in_pong, "PONG frames received")                                                             \
    X(in_goaway, "GOAWAY frames received")                                                         \
    X(in_config, "CONFIG frames received")                                                         \
    X(out_hello, "HELLO frames sent")                                                              \
    X(out_hello_ack, "HELLO_ACK frames sent")                                                      \
    X(out_open, "OPEN frames sent")                                                                \
    X(out_open_ack, "OPEN_ACK frames sent")                                                        \
    X(out_open_fail, "OPEN_FAIL frames sent")                                                      \
    X(out_data, "DATA frames sent")                                                                \
    X(out_window, "WINDOW frames sent")                                                            \
    X(out_fin, "FIN frames sent")                                                                  \
    X(out_rst, "RST frames sent")                                                                  \
    X(out_ping, "PING frames sent")                                                                \
    X(out_pong, "PONG frames sent")                                                                \
    X(out_goaway, "GOAWAY frames sent")                                                            \
    X(out_config, "CONFIG frames sent")                                                            \
    X(data_bytes_in, "DATA payload bytes received")                                                \
    X(data_bytes_out, "DATA payload bytes sent")                                                   \
    X(streams_opened, "streams opened")                                                            \
    X(streams_reset_in, "RST received")                                                            \
    X(streams_reset_out, "RST sent")                                                               \
    X(window_updates_in, "WINDOW frames received")                                                 \
    X(window_updates_out, "WINDOW frames sent")                                                    \
    X(closed_stream_frames, "frames for closed streams (ignored, charged to the reset budget)")    \
    X(flow_control_errors, "DATA beyond credit or window overflow")                                \
    X(protocol_errors, "protocol violations")                                                      \
    X(rate_limited, "open/reset budget or control queue exhausted")

APPRELAY_DECLARE_COUNTERS(mux_counter, APPRELAY_MUX_COUNTERS)
using mux_counters_block = mux_counter_block; // the name the integration brief uses

constexpr mux_counter in_counter(frame_type t) noexcept {
    return mux_counter(uint32_t(mux_counter::in_hello) + uint32_t(t) - 1);
}
constexpr mux_counter out_counter(frame_type t) noexcept {
    return mux_counter(uint32_t(mux_counter::out_hello) + uint32_t(t) - 1);
}
static_assert(in_counter(frame_type::config) == mux_counter::in_config);
static_assert(out_counter(frame_type::config) == mux_counter::out_config);

class mux_handler {
public:
    virtual ~mux_handler() = default;
    virtual void on_hello(const hello&) {}
    virtual void on_hello_ack(const hello_ack&) {}
    // Connector side: the relay opened sid. Answer with open_ack() or open_fail() (now or later).
    virtual void on_open(uint32_t /*sid*/, std::string_view /*app*/, std::string_view /*target*/) {}
    virtual void on_open_ack(uint32_t /*sid*/) {}
    // Relay side: stream refused; it is gone after this call.
    virtual void on_open_fail(uint32_t /*sid*/, reason, std::string_view /*msg*/) {}
    // Stream bytes. The owner calls consumed(sid, n) once the application really took them.
    virtual void on_data(uint32_t sid, std::span<const std::byte> bytes) = 0;
    virtual void on_fin(uint32_t sid) = 0; // peer half-closed
    // Peer reset the stream, or the mux reset it for a stream-level violation; gone afterwards.
    virtual void on_reset(uint32_t sid, reason r, std::string_view msg) = 0;
    // FIN both ways; the stream is removed.
    virtual void on_stream_closed(uint32_t /*sid*/) {}
    virtual void on_goaway(uint32_t /*last_sid*/, reason, std::string_view /*msg*/) {}
    virtual void on_pong(uint64_t /*opaque*/) {}
    virtual void on_config(uint64_t /*version*/, std::span<const std::byte> /*body*/) {}
    // Outbound data source: copy up to dst.size() bytes of sid's data into dst (dst.size() is
    // already ≤ credit and ≤ max_frame). Return 0 when nothing is available now: the mux stops
    // asking until mark_readable(sid). The owner must not call back into the mux from pull()
    // except mark_readable/finish/consumed (those only queue work).
    virtual std::size_t pull(uint32_t sid, std::span<std::byte> dst) = 0;
};

// The GOAWAY reason for a tunnel error returned by mux::receive(): protocol_error and
// frame_too_large -> protocol_error, flow_control -> flow_control, overloaded (open/reset budget
// or control queue) -> rate_limited, anything else -> internal.
constexpr reason goaway_reason(errc c) noexcept {
    switch (c) {
    case errc::protocol_error:
    case errc::frame_too_large:
        return reason::protocol_error;
    case errc::flow_control:
        return reason::flow_control;
    case errc::overloaded:
        return reason::rate_limited;
    default:
        return reason::internal;
    }
}

class mux {
public:
    mux(role r, const mux_limits& l, mux_handler& h);
    ~mux();
    mux(const mux&) = delete;
    mux& operator=(const mux&) = delete;

    // Decrypted tunnel bytes, any split. A tunnel-level violation returns an error whose detail
    // names it; the owner then calls goaway() + produce() + closes. Stream-level violations reset
    // that stream (on_reset + RST queued) and return ok.
    result<void> receive(std::span<const std::byte> bytes, uint64_t now_ns);

    // Relay: open a stream (OPEN queued). errc::stream_limit at max_streams, errc::overloaded
    // when the open/reset budget is spent, errc::shutting_down after GOAWAY either way.
    result<uint32_t> open(std::string_view app, std::string_view target, uint64_t now_ns);
    // Connector: answer an OPEN. open_fail removes the stream.
    void open_ack(uint32_t sid);
    void open_fail(uint32_t sid, reason r, std::string_view msg);

    void mark_readable(uint32_t sid);
    // Half-close: FIN goes out once the stream's source is drained (pull returned 0 after
    // mark_readable) — never before bytes already readable.
    void finish(uint32_t sid);
    // RST now; the stream is removed (no on_reset for resets the owner asked for).
    void reset(uint32_t sid, reason r, std::string_view msg);
    // Return credit for n bytes of sid the application took. WINDOW frames are batched (sent
    // once the unreturned credit reaches a quarter of the window).
    void consumed(uint32_t sid, std::size_t n);

    void send_hello(const hello& h);
    void send_hello_ack(const hello_ack& h);
    void ping(uint64_t opaque);
    void goaway(reason r, std::string_view msg);
    void send_config(uint64_t version, std::span<const std::byte> body);

    // Fill out with whole frames: control frames first, then DATA round-robin over readable
    // streams with credit (a quantum of at most one max_frame per stream per round), each FIN
    // after its stream's data. Returns bytes written; 0 = nothing to send now.
    std::size_t produce(std::span<std::byte> out);
    bool wants_produce() const noexcept;

    std::size_t stream_count() const noexcept;
    bool going_away() const noexcept;                  // GOAWAY sent or received
    uint32_t send_window(uint32_t sid) const noexcept; // credit we may still send on sid
    uint32_t recv_window(uint32_t sid) const noexcept; // credit the peer may still use on sid
    const mux_counter_block& counters() const noexcept;

    struct impl;

private:
    std::unique_ptr<impl> _impl;
};

} // namespace apprelay::tunnel
