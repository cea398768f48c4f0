#pragma once
// One io_uring per worker thread (SINGLE_ISSUER | DEFER_TASKRUN: create and run it on the
// worker thread). Multishot accept, multishot recv into a provided buffer ring, batched
// submission (SQEs are only submitted in run_once, or when the SQ is full).
//
// Socket slot state: free -> open (recv armed or not, at most one send in flight) ->
// closing/detaching (owner gets no callbacks; waits for in-flight ops) -> free.
#include "dataplane/base/result.hh"
#include "dataplane/io/loop.hh"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <sys/socket.h>
#include <vector>

struct io_uring;
struct io_uring_buf_ring;

namespace apprelay::io {

struct loop_options {
    unsigned entries = 4096;   // SQ size; CQ is 2x
    unsigned buf_count = 1024; // provided receive buffers (power of two)
    unsigned buf_size = 16384; // one TLS record fits; 16 MiB per worker in all
};

struct loop_stats {
    uint64_t recv_nobufs = 0;     // multishot recv stopped for lack of provided buffers
    uint64_t sq_full_submits = 0; // SQ full: submitted early
    uint64_t cqes = 0;
    uint64_t waits = 0;
    uint64_t coalesce_waits = 0; // second waits for more completions (set_coalescing)
};

class uring_loop final : public loop {
public:
    static result<std::unique_ptr<uring_loop>> create(const loop_options& opts, std::string* why);
    ~uring_loop() override;
    uring_loop(const uring_loop&) = delete;
    uring_loop& operator=(const uring_loop&) = delete;

    std::string_view backend() const noexcept override { return "uring"; }
    // spec.fd: a listening socket prepared by the caller (bound, listening). Multishot accept;
    // accepted sockets get TCP_NODELAY (our framing batches on its own) and their peer address.
    result<conn_id> listen(const listen_spec& spec, sink* owner) override;
    // Take an fd (handed over from another worker) into the loop.
    result<conn_id> adopt(int fd, sink* owner) override;
    result<conn_id> connect(const sockaddr* addr, socklen_t len, sink* owner) override;

    void start_recv(conn_id id) override;
    void pause_recv(conn_id id) override;
    bool recv_wanted(conn_id id) const override;
    // One send in flight; a short completion is a short kernel write.
    bool send(conn_id id, std::span<const std::byte> data) override;
    bool send_in_flight(conn_id id) const override;
    // abort = RST (SO_LINGER 0). A send still in flight is cancelled by the next run_once, and
    // the kernel may read its data until that run_once returns (loop.hh).
    using loop::close;
    void close(conn_id id, bool abort) override;
    // shutdown(SHUT_WR) now (synchronous, cheap).
    void shutdown_write(conn_id id) override;
    bool can_hand_over() const noexcept override { return true; }
    // Stop all operations and give the fd back through on_detached.
    void detach(conn_id id) override;
    void set_owner(conn_id id, sink* owner) override;

    // Submits queued SQEs in one io_uring_submit_and_wait (loop.hh for the contract).
    unsigned run_once(uint64_t timeout_ns) override;
    // Completion coalescing (interrupt moderation): when run_once had to block and woke with
    // fewer than min_events completions, it waits up to window_ns more for min_events before
    // dispatching -- but only while many flows are active (at least k_coalesce_min_flows
    // sockets received bytes in the last period of at least k_flow_period_ns, periods ending at
    // blocking waits): only then can one pass serve several of them (one tunnel send carrying
    // many streams' frames). A single bulk flow is never
    // delayed (measured: 50 us on one bulk stream cost 40% of its throughput). Busy loops never
    // wait (timeout 0 polls); an idle loop still sleeps until its first event. Costs at most
    // window_ns of latency per blocking wait. window_ns = 0 turns it off (the default).
    static constexpr unsigned k_coalesce_events = 16; // the min_events relay and connector use
    void set_coalescing(unsigned min_events, uint64_t window_ns) {
        _coalesce_min = min_events < 2 ? 2 : min_events;
        _coalesce_ns = window_ns;
    }
    void wake() noexcept override;
    void set_wake_handler(std::function<void()> fn) override { _on_wake = std::move(fn); }

    const loop_stats& stats() const noexcept { return _stats; }
    std::size_t open_sockets() const noexcept override { return _open; }

private:
    uring_loop() = default;
    struct slot;
    enum class op : uint8_t;

    result<void> init(const loop_options& opts, std::string* why);
    void* get_sqe();
    void arm_recv(uint32_t index);
    void arm_accept(uint32_t index);
    void arm_wake();
    void submit_cancel(uint32_t index, op o);
    void dispatch(uint64_t user_data, int res, uint32_t flags);
    void maybe_release(uint32_t index);
    void accepted(conn_id listener, int fd);
    result<uint32_t> alloc_slot(int fd, sink* owner);
    slot* live(conn_id id);
    const slot* live(conn_id id) const;

    std::unique_ptr<io_uring> _ring;
    io_uring_buf_ring* _br = nullptr;
    std::byte* _bufs = nullptr;
    std::size_t _br_bytes = 0;
    unsigned _buf_count = 0;
    unsigned _buf_size = 0;
    std::vector<slot> _slots;
    std::vector<uint32_t> _free;
    std::size_t _open = 0;
    int _wake_fd = -1;
    uint64_t _wake_buf = 0;
    std::atomic<bool> _wake_pending{false};
    std::function<void()> _on_wake;
    loop_stats _stats;
    unsigned _coalesce_min = 2;
    uint64_t _coalesce_ns = 0;
    static constexpr unsigned k_coalesce_min_flows = 4;
    static constexpr uint64_t k_flow_period_ns = 1'000'000;
    uint32_t _flow_period = 1;    // stamps slots that received bytes in the current period
    unsigned _period_flows = 0;   // distinct sockets that received bytes this period
    unsigned _recent_flows = 0;   // ... in the last complete period
    uint64_t _period_start_ns = 0;
    void roll_flow_period();
};

} // namespace apprelay::io
