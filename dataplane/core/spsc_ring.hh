#pragma once
// Single-producer single-consumer ring for handing items between two threads (control -> worker,
// worker -> worker). Lock-free, no allocation after construction.
//
// Indices are free-running 64-bit counters (never wrap in practice); slot = index & _mask, so
// the ring holds exactly capacity() items. The producer owns _tail and a cached copy of _head;
// the consumer owns _head and a cached copy of _tail. Each side re-reads the other's index (one
// shared cache-line transfer) only when its cached copy says the ring is full/empty, so a burst
// costs one acquire load and one release store at most.
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

namespace apprelay::core {

template <class T> class spsc_ring {
    static_assert(std::is_default_constructible_v<T> && std::is_copy_assignable_v<T>,
                  "spsc_ring slots are pre-constructed and copied into");

public:
    // capacity is rounded up to a power of two (minimum 1).
    explicit spsc_ring(std::size_t capacity)
        : _mask(std::bit_ceil(capacity == 0 ? std::size_t(1) : capacity) - 1),
          _slots(std::make_unique<T[]>(_mask + 1)) {}

    spsc_ring(const spsc_ring&) = delete;
    spsc_ring& operator=(const spsc_ring&) = delete;

    std::size_t capacity() const noexcept { return _mask + 1; }

    // Producer side.
    bool try_push(const T& item) { return push_burst(&item, 1) == 1; }

    // Pushes up to n items in order; returns how many were pushed (0 when full).
    std::size_t push_burst(const T* items, std::size_t n) {
        const uint64_t tail = _tail.load(std::memory_order_relaxed);
        std::size_t free_slots = capacity() - std::size_t(tail - _cached_head);
        if (free_slots < n) {
            _cached_head = _head.load(std::memory_order_acquire);
            free_slots = capacity() - std::size_t(tail - _cached_head);
        }
        const std::size_t count = n < free_slots ? n : free_slots;
        for (std::size_t i = 0; i < count; ++i) {
            _slots[(tail + i) & _mask] = items[i];
        }
        if (count != 0) {
            _tail.store(tail + count, std::memory_order_release);
        }
        return count;
    }

    // Consumer side.
    bool try_pop(T& out) { return pop_burst(&out, 1) == 1; }

    // Pops up to n items in order; returns how many were popped (0 when empty).
    std::size_t pop_burst(T* out, std::size_t n) {
        const uint64_t head = _head.load(std::memory_order_relaxed);
        std::size_t ready = std::size_t(_cached_tail - head);
        if (ready < n) {
            _cached_tail = _tail.load(std::memory_order_acquire);
            ready = std::size_t(_cached_tail - head);
        }
        const std::size_t count = n < ready ? n : ready;
        for (std::size_t i = 0; i < count; ++i) {
            out[i] = _slots[(head + i) & _mask];
        }
        if (count != 0) {
            _head.store(head + count, std::memory_order_release);
        }
        return count;
    }

    // Either side or a third thread; exact only when both sides are quiescent.
    std::size_t size_approx() const noexcept {
        // head first: tail is read later and can only be >= the head we saw.
        const uint64_t head = _head.load(std::memory_order_acquire);
        const uint64_t tail = _tail.load(std::memory_order_acquire);
        const std::size_t n = std::size_t(tail - head);
        return n > capacity() ? capacity() : n;
    }

private:
    static constexpr std::size_t k_cache_line = 64;

    // Read-only after construction, shared by both sides.
    alignas(k_cache_line) const std::size_t _mask;
    const std::unique_ptr<T[]> _slots;

    // Consumer's line.
    alignas(k_cache_line) std::atomic<uint64_t> _head{0};
    uint64_t _cached_tail = 0;

    // Producer's line.
    alignas(k_cache_line) std::atomic<uint64_t> _tail{0};
    uint64_t _cached_head = 0;
    // alignof(spsc_ring) == 64 pads sizeof to a whole line, so neighbours stay off this one.
};

} // namespace apprelay::core
