#pragma once
// Hashed timing wheel (Varghese & Lauck, scheme 6) for per-core timeouts: idle streams, handshake
// deadlines, retransmit. Timers are intrusive nodes owned by the caller; schedule/cancel are O(1)
// and never allocate.
//
// Time is cut into ticks of tick_ns from the origin given at construction. A timer expires at
// tick T = ceil((deadline - origin) / tick_ns), so it never fires before its deadline and at most
// one tick after it (given advance() is called on time). It sits in slot T % slots with T stored
// in the node; deadlines beyond one revolution simply stay in their slot until their tick comes.
// Within one tick, timers fire in the order they were scheduled.
//
// A timer whose tick has already been reached when it is scheduled (deadline in the past, or a
// callback rescheduling for "now") is kept on a due list and fires on the next advance() call,
// never inside the current one: a callback that reschedules itself cannot livelock advance().
//
// Callbacks run inside advance() with the timer already unscheduled; they may reschedule their own
// timer, schedule or cancel any other timer (including one due in the same tick), or destroy
// their own timer. They must not call advance() of the same wheel.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace apprelay::core {

class timer_wheel;

struct timer {
    void (*fn)(timer*, void* ctx) = nullptr;
    void* ctx = nullptr;

    timer() = default;
    timer(void (*f)(timer*, void*), void* c) : fn(f), ctx(c) {}
    // Intrusive node: the wheel points at it, so it cannot be copied or moved.
    timer(const timer&) = delete;
    timer& operator=(const timer&) = delete;
    // A scheduled timer removes itself from its wheel, so the wheel never holds a freed node.
    ~timer();

private:
    friend class timer_wheel;
    timer* _prev = nullptr;
    timer* _next = nullptr;
    timer_wheel* _wheel = nullptr; // non-null exactly while scheduled
    uint64_t _expiry_tick = 0;
};

class timer_wheel {
public:
    // Returned by next_deadline_hint() when no timer is scheduled.
    static constexpr uint64_t k_no_deadline = std::numeric_limits<uint64_t>::max();

    // slots is rounded up to a power of two (minimum 1); tick_ns must be > 0.
    timer_wheel(uint64_t tick_ns, uint64_t now_ns, std::size_t slots = 512);
    timer_wheel(const timer_wheel&) = delete;
    timer_wheel& operator=(const timer_wheel&) = delete;
    // Unschedules every remaining timer (without firing it).
    ~timer_wheel();

    // Schedules (or reschedules, if already scheduled on this wheel) t for deadline_ns.
    void schedule(timer& t, uint64_t deadline_ns);
    // No-op if t is not scheduled.
    void cancel(timer& t);
    bool scheduled(const timer& t) const { return t._wheel == this; }

    // Fires every timer whose tick is <= the tick of now_ns; returns how many fired.
    std::size_t advance(uint64_t now_ns);

    // Earliest time advance() would fire something, clamped to >= now_ns; now_ns if something is
    // already due; k_no_deadline if nothing is scheduled. Scans at most one revolution of slots
    // plus, when only far timers remain, every scheduled timer: call once per loop, not per item.
    uint64_t next_deadline_hint(uint64_t now_ns) const;

    std::size_t size() const { return _count; }
    uint64_t tick_ns() const { return _tick_ns; }

private:
    static void link_tail(timer& list, timer& t);
    static void unlink(timer& t);
    static bool empty(const timer& list) { return list._next == &list; }

    uint64_t tick_of_deadline(uint64_t deadline_ns) const; // ceil
    uint64_t tick_of_now(uint64_t now_ns) const;           // floor
    uint64_t time_of_tick(uint64_t tick) const;
    uint64_t min_slot_expiry() const;
    std::size_t fire_list(timer& list);
    void release_all(timer& list);

    uint64_t _tick_ns;
    uint64_t _origin_ns;
    uint64_t _current_tick = 0; // every tick <= this one has been processed
    std::size_t _mask;
    std::size_t _count = 0;
    bool _in_advance = false;
    std::vector<timer> _slots; // list heads (sentinels), never resized
    timer _due;                // expired when scheduled: fires on the next advance()
    timer _firing;             // expired in the tick being processed
};

} // namespace apprelay::core
