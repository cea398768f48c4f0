#pragma once
// One worker's RX/TX queue pair on a dpdk port. Owned and used by exactly one worker thread
// (after register_worker_thread()); only counters() may be read from another thread.
//
// Per loop pass (l3fwd shape):
//   rx_batch batch;
//   q.rx_burst(batch);                       // <= k_rx_burst frames, already steered
//   for (i...) stack.input(batch.frame(i), now);
//   batch.release();                         // mbufs back to the pool (bulk)
//   stack.run_timers(now);                   // the stack writes through q.tx() (a net::link)
//   q.flush();                               // one rte_eth_tx_burst for what is left
//
// RX steering, when the port has several workers:
// - software mode (no RSS): unfragmented IPv4 TCP goes to the worker owner_of(symmetric hash);
//   a frame for another worker is enqueued on the SP/SC rte_ring from this worker to that one,
//   and the owner takes it in its next rx_burst. Both directions of a flow land on one worker.
// - rss mode: the NIC spreads TCP by a symmetric Toeplitz key; nothing moves between workers.
// - both modes: ARP is copied (rte_pktmbuf_copy) to every other worker, because each worker's
//   stack keeps its own ARP table; a request is then answered by every worker (duplicate
//   replies are harmless to the asker). Anything else stays on the receiving worker.
// Every frame that cannot be forwarded (ring full, pool empty for a copy) is freed and counted.
#include "dataplane/base/counters.hh"
#include "dataplane/net/stack.hh"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

struct rte_mbuf;
struct rte_mempool;
struct rte_ring;

namespace apprelay::io::dpdk {

// Frames per rx_burst and per tx flush. 32 as in l3fwd's MAX_PKT_BURST: it amortises the PMD
// call, the descriptor ring doorbell and the steering ring's head/tail updates over enough
// frames (rte_ring: ~164 ns one at a time vs ~7.5 ns each in bursts of 32 on this machine),
// while the burst's 32 mbuf headers still fit in L1 next to the stack's state.
inline constexpr uint16_t k_rx_burst = 32;
inline constexpr uint16_t k_tx_burst = 32;

#define APPRELAY_DPDK_QUEUE_COUNTERS(X)                                                            \
    X(rx_frames, "frames handed to this worker's stack (from the NIC or steered here)")            \
    X(rx_bytes, "bytes of rx_frames")                                                              \
    X(rx_multiseg_dropped, "multi-segment frames dropped (the MTU is set to fit one mbuf)")        \
    X(steered_out, "frames this worker forwarded to their owner worker")                           \
    X(steered_in, "frames received from other workers' steering rings")                            \
    X(steer_ring_full, "frames dropped because the owner's steering ring was full")                \
    X(arp_copies, "ARP frames copied to other workers")                                            \
    X(arp_copy_failed, "ARP copies lost (mbuf pool empty or ring full)")                           \
    X(tx_frames, "frames the NIC accepted")                                                        \
    X(tx_bytes, "bytes of tx_frames")                                                              \
    X(tx_nobufs, "tx_alloc found the mbuf pool empty")                                             \
    X(tx_too_large, "tx_alloc asked for more bytes than one mbuf holds")                           \
    X(tx_dropped, "frames the NIC did not take at flush (TX ring full), freed")                   \
    X(rx_loss_dropped, "received frames dropped by the loss mode (port_settings::loss_every)")     \
    X(tx_loss_dropped, "frames to send dropped by the loss mode (port_settings::loss_every)")
APPRELAY_DECLARE_COUNTERS(queue_counter, APPRELAY_DPDK_QUEUE_COUNTERS)

// Up to k_rx_burst received frames. frame(i) points into the mbuf: valid until release().
class rx_batch {
public:
    rx_batch() = default;
    rx_batch(const rx_batch&) = delete;
    rx_batch& operator=(const rx_batch&) = delete;
    ~rx_batch() { release(); }

    std::size_t size() const noexcept { return _count; }
    bool empty() const noexcept { return _count == 0; }
    std::span<const std::byte> frame(std::size_t i) const noexcept { return _frames[i]; }
    // Returns every mbuf to its pool (one bulk call).
    void release() noexcept;

private:
    friend class queue;
    std::array<rte_mbuf*, k_rx_burst> _mbufs{};
    std::array<std::span<const std::byte>, k_rx_burst> _frames{};
    uint16_t _count = 0;
};

// The stack's way out: one mbuf per tx_alloc, buffered up to k_tx_burst and sent by one
// rte_eth_tx_burst when the buffer is full or at flush().
class tx_link final : public net::link {
public:
    tx_link(uint16_t port_id, uint16_t queue_id, rte_mempool* pool, queue_counter_block* counters,
            uint32_t loss_every = 0);
    ~tx_link() override;
    tx_link(const tx_link&) = delete;
    tx_link& operator=(const tx_link&) = delete;

    // Empty span when the pool is empty (counted tx_nobufs) or len exceeds one mbuf's room
    // (tx_too_large). Calling tx_alloc again before tx_commit reuses the same mbuf.
    std::span<std::byte> tx_alloc(std::size_t len) override;
    // len <= the len given to tx_alloc.
    void tx_commit(std::size_t len) override;
    // Sends what is buffered; what the NIC does not take is freed and counted (tx_dropped).
    void flush() noexcept;
    std::size_t pending() const noexcept { return _count; }

private:
    uint16_t _port_id;
    uint16_t _queue_id;
    uint16_t _count = 0;
    rte_mempool* _pool;
    queue_counter_block* _counters;
    uint32_t _loss_every;
    uint32_t _loss_count = 0;
    rte_mbuf* _current = nullptr; // allocated by tx_alloc, not yet committed
    std::size_t _current_len = 0;
    std::array<rte_mbuf*, k_tx_burst> _pending{};
};

enum class steering : uint8_t {
    single,   // one worker: nothing to steer
    rss,      // the NIC hashes flows onto queues (symmetric key)
    software, // classify_frame + per-pair rings
};

class queue {
public:
    struct wiring {
        uint16_t port_id = 0;
        uint16_t worker = 0; // == queue id
        uint16_t workers = 1;
        steering mode = steering::single;
        rte_mempool* pool = nullptr;
        std::vector<rte_ring*> to;   // [w]: ring this worker -> w (nullptr for w == worker)
        std::vector<rte_ring*> from; // rings w -> this worker (workers - 1 of them)
        uint32_t loss_every = 0;     // loss mode: drop every Nth frame each way (0 = off)
    };
    explicit queue(wiring w);
    ~queue();
    queue(const queue&) = delete;
    queue& operator=(const queue&) = delete;

    uint16_t worker() const noexcept { return _w.worker; }

    // Fills `out` (which must be empty) with up to k_rx_burst frames for this worker: at most
    // half from the steering rings, the rest from the NIC queue, so neither source starves the
    // other under load. Returns the number of frames.
    std::size_t rx_burst(rx_batch& out) noexcept;

    // rx_burst + f(frame) for each + release.
    template <class F> std::size_t poll(F&& f) {
        rx_batch batch;
        const std::size_t n = rx_burst(batch);
        for (std::size_t i = 0; i < n; ++i) {
            f(batch.frame(i));
        }
        return n;
    }

    tx_link& tx() noexcept { return _tx; }
    void flush() noexcept { _tx.flush(); }

    // Any thread.
    const queue_counter_block& counters() const noexcept { return _counters; }

private:
    // Moves NIC frames at [first, first + n) that belong elsewhere to their owners' rings,
    // copies ARP to every other worker; returns how many stay, compacted at `first`.
    uint16_t steer(rte_mbuf** mbufs, uint16_t n) noexcept;
    bool forward_copy(rte_mbuf* m, uint16_t to) noexcept;

    wiring _w;
    queue_counter_block _counters;
    tx_link _tx;
    uint16_t _next_ring = 0; // round-robin start over `from`, for fairness between senders
    uint32_t _rx_loss_count = 0;
    // Per destination worker: frames to enqueue at the end of the burst (one ring op each).
    std::vector<std::array<rte_mbuf*, k_rx_burst>> _out;
    std::vector<uint16_t> _out_count;
};

} // namespace apprelay::io::dpdk
