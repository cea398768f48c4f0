#pragma once
// io::loop over apprelay's user-space TCP/IP (net::stack) and one worker's queue of Ethernet
// frames (a DPDK port queue in production; an in-memory wire in tests). Everything runs on the
// worker thread: no locks, no syscalls on the data path.
//
// One run_once pass: flush frames the owner's sends queued -> poll the queue (bursts of
// k_rx_burst) -> net::stack::input per frame (callbacks to the sinks) -> stack timers -> wake
// handler -> flush. An idle pass polls again; after k_idle_spins empty polls it sleeps in short
// naps (k_idle_nap_ns) until the timeout, the stack's next timer or a wake(): a busy worker
// never sleeps, an idle one does not burn its core on a shared host.
//
// Re-entrancy (loop.hh: callbacks never run inside a call the owner made): the stack may raise
// an event from inside an API call (start_recv delivering buffered bytes, close failing a send).
// Such events are queued (bytes copied) and dispatched at the start of the next run_once.
#include "dataplane/base/counters.hh"
#include "dataplane/io/loop.hh"
#include "dataplane/net/stack.hh"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace apprelay::io {

// One worker's queue of a port.
class frame_port {
public:
    class receiver {
    public:
        virtual ~receiver() = default;
        // One received frame; the span is valid only during the call.
        virtual void on_frame(std::span<const std::byte> frame) = 0;
    };
    virtual ~frame_port() = default;
    // Hands up to max received frames to r; returns how many.
    virtual unsigned rx_burst(receiver& r, unsigned max) = 0;
    // Where the stack writes frames; they leave at flush() (or when a TX burst is full).
    virtual net::link& tx() = 0;
    virtual void flush() = 0;
};

// The loop's own counters (the stack's are net::counter).
#define APPRELAY_STACK_LOOP_COUNTERS(X)                                                            \
    X(rx_frames, "frames handed to the stack")                                                     \
    X(passes, "loop passes")                                                                       \
    X(busy_passes, "passes that received frames or dispatched events")                            \
    X(busy_cycles, "TSC cycles spent in busy passes (clocks per vector, as VPP reports them)")     \
    X(naps, "short sleeps of an idle loop")                                                        \
    X(deferred_events, "stack events raised inside an owner's call, dispatched next pass")       \
    X(tcp_connections, "TCP connections in any state but CLOSED (a level)")
APPRELAY_DECLARE_COUNTERS(stack_loop_counter, APPRELAY_STACK_LOOP_COUNTERS)

class stack_loop final : public loop, private net::tcp_events, private frame_port::receiver {
public:
    // rx_burst of 32: the l3fwd MAX_PKT_BURST; enough to amortise the poll, small enough that
    // one burst's frames stay in L1/L2 while the stack and TLS work on them.
    static constexpr unsigned k_rx_burst = 32;
    static constexpr unsigned k_idle_spins = 64;
    static constexpr uint64_t k_idle_nap_ns = 50'000;

    stack_loop(std::unique_ptr<frame_port> port, const net::stack_config& cfg);
    ~stack_loop() override;

    std::string_view backend() const noexcept override { return "dpdk"; }
    // spec.port on the stack's address; spec.fd is ignored.
    result<conn_id> listen(const listen_spec& spec, sink* owner) override;
    // IPv4 only.
    result<conn_id> connect(const sockaddr* addr, socklen_t len, sink* owner) override;
    void set_owner(conn_id id, sink* owner) override;
    void start_recv(conn_id id) override;
    void pause_recv(conn_id id) override;
    bool recv_wanted(conn_id id) const override;
    bool send(conn_id id, std::span<const std::byte> data) override;
    bool send_in_flight(conn_id id) const override;
    using loop::close;
    void close(conn_id id, bool abort) override;
    void shutdown_write(conn_id id) override;
    // Connections live in this worker's stack: they never move (the flow hash chose the worker).
    bool can_hand_over() const noexcept override { return false; }
    void detach(conn_id id) override;
    result<conn_id> adopt(int fd, sink* owner) override;
    unsigned run_once(uint64_t timeout_ns) override;
    void wake() noexcept override;
    void set_wake_handler(std::function<void()> fn) override { _on_wake = std::move(fn); }
    std::size_t open_sockets() const noexcept override { return _open; }

    // Worker thread only.
    net::stack& stack() noexcept { return *_stack; }
    const net::stack& stack() const noexcept { return *_stack; }
    // Any thread: the loop's counters, and the stack's as published by the worker at most
    // k_publish_ns ago (the stack's own are plain integers of the worker thread).
    const stack_loop_counter_block& counters() const noexcept { return _counters; }
    uint64_t published(net::counter c) const noexcept {
        return _net_published[std::size_t(c)].load(std::memory_order_relaxed);
    }
    static constexpr uint64_t k_publish_ns = 10'000'000;

private:
    struct slot {
        uint32_t gen = 0;
        sink* owner = nullptr;
        bool in_use = false;
        bool recv_wanted = false;
        bool send_in_flight = false;
    };
    enum class ev_kind : uint8_t { connect, recv, recv_end, sent };
    struct deferred {
        ev_kind kind;
        net::sock_id id;
        int res;
        std::vector<std::byte> data;
    };

    // net::tcp_events
    void on_accept(net::sock_id listener, net::sock_id conn, uint32_t ip, uint16_t port) override;
    void on_connect(net::sock_id conn, int res) override;
    void on_recv(net::sock_id conn, std::span<const std::byte> data) override;
    void on_recv_end(net::sock_id conn, int res) override;
    void on_sent(net::sock_id conn, int res) override;
    // frame_port::receiver
    void on_frame(std::span<const std::byte> frame) override;

    static constexpr uint32_t k_listener_bit = 0x8000'0000u;
    std::vector<slot>& table(uint32_t index);
    slot* live(conn_id id);
    const slot* live(conn_id id) const;
    slot& take(net::sock_id id, sink* owner);
    void release(conn_id id);
    // The owner of a live socket, or nullptr (closed, or not yet owned).
    sink* owner_of(net::sock_id id);
    bool defer(ev_kind k, net::sock_id id, int res, std::span<const std::byte> data = {});
    unsigned dispatch_deferred();
    void dispatch(ev_kind k, net::sock_id id, int res, std::span<const std::byte> data);

    std::unique_ptr<frame_port> _port;
    std::unique_ptr<net::stack> _stack;
    std::vector<slot> _slots;          // connections, indexed like the stack's
    std::vector<slot> _listener_slots; // listeners (index without the listener bit)
    std::size_t _open = 0;
    uint64_t _now = 0;
    bool _from_loop = false;  // inside input()/run_timers() and not inside an owner callback
    unsigned _events = 0;     // callbacks dispatched this pass
    std::vector<deferred> _deferred;
    std::atomic<bool> _wake_pending{false};
    std::function<void()> _on_wake;
    stack_loop_counter_block _counters;
    std::array<std::atomic<uint64_t>, std::size_t(net::counter::count_)> _net_published{};
    uint64_t _published_ns = 0;
    void publish();
};

} // namespace apprelay::io
