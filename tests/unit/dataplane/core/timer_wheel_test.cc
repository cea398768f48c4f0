#include "dataplane/core/timer_wheel.hh"

#include <algorithm>
#include <gtest/gtest.h>
#include <memory>
#include <random>
#include <vector>

namespace apprelay::core {
namespace {

constexpr uint64_t k_tick = 1'000; // 1 us ticks keep the arithmetic readable
constexpr uint64_t k_start = 1'000'000;

// Records the order in which timers fire: each timer's ctx points at one of these.
struct probe {
    std::vector<int>* log = nullptr;
    int id = 0;
    timer t;
    probe(std::vector<int>* l, int i) : log(l), id(i), t(&on_fire, this) {}
    static void on_fire(timer*, void* ctx) {
        auto* p = static_cast<probe*>(ctx);
        p->log->push_back(p->id);
    }
};

TEST(timer_wheel, fires_in_deadline_order_not_schedule_order) {
    timer_wheel wheel(k_tick, k_start, 64);
    std::vector<int> fired;
    probe a(&fired, 1);
    probe b(&fired, 2);
    probe c(&fired, 3);
    wheel.schedule(c.t, k_start + 30 * k_tick);
    wheel.schedule(a.t, k_start + 10 * k_tick);
    wheel.schedule(b.t, k_start + 20 * k_tick);
    EXPECT_EQ(wheel.advance(k_start + 100 * k_tick), 3u);
    EXPECT_EQ(fired, (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(wheel.size(), 0u);
}

TEST(timer_wheel, never_fires_before_the_deadline) {
    timer_wheel wheel(k_tick, k_start, 64);
    std::vector<int> fired;
    probe a(&fired, 1);
    // Deadline 1 ns past a tick boundary rounds up to the next tick (tick 6).
    wheel.schedule(a.t, k_start + 5 * k_tick + 1);
    EXPECT_EQ(wheel.advance(k_start + 5 * k_tick), 0u);
    EXPECT_EQ(wheel.advance(k_start + 6 * k_tick - 1), 0u);
    EXPECT_TRUE(wheel.scheduled(a.t));
    EXPECT_EQ(wheel.advance(k_start + 6 * k_tick), 1u);
    EXPECT_FALSE(wheel.scheduled(a.t));
    EXPECT_EQ(fired, (std::vector<int>{1}));
}

TEST(timer_wheel, same_tick_fires_in_schedule_order) {
    timer_wheel wheel(k_tick, k_start, 64);
    std::vector<int> fired;
    probe a(&fired, 1);
    probe b(&fired, 2);
    wheel.schedule(a.t, k_start + 3 * k_tick);
    wheel.schedule(b.t, k_start + 3 * k_tick);
    wheel.advance(k_start + 3 * k_tick);
    EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

TEST(timer_wheel, cancelled_timer_does_not_fire) {
    timer_wheel wheel(k_tick, k_start, 64);
    std::vector<int> fired;
    probe a(&fired, 1);
    probe b(&fired, 2);
    wheel.schedule(a.t, k_start + 5 * k_tick);
    wheel.schedule(b.t, k_start + 5 * k_tick);
    wheel.cancel(a.t);
    EXPECT_FALSE(wheel.scheduled(a.t));
    wheel.cancel(a.t); // cancelling twice is a no-op
    EXPECT_EQ(wheel.advance(k_start + 10 * k_tick), 1u);
    EXPECT_EQ(fired, (std::vector<int>{2}));
}

TEST(timer_wheel, rescheduling_moves_the_deadline) {
    timer_wheel wheel(k_tick, k_start, 64);
    std::vector<int> fired;
    probe a(&fired, 1);
    wheel.schedule(a.t, k_start + 5 * k_tick);
    wheel.schedule(a.t, k_start + 50 * k_tick);
    EXPECT_EQ(wheel.size(), 1u);
    EXPECT_EQ(wheel.advance(k_start + 49 * k_tick), 0u);
    EXPECT_EQ(wheel.advance(k_start + 50 * k_tick), 1u);
}

TEST(timer_wheel, destroyed_timer_leaves_the_wheel) {
    timer_wheel wheel(k_tick, k_start, 64);
    std::vector<int> fired;
    {
        probe a(&fired, 1);
        wheel.schedule(a.t, k_start + 5 * k_tick);
        EXPECT_EQ(wheel.size(), 1u);
    }
    EXPECT_EQ(wheel.size(), 0u);
    EXPECT_EQ(wheel.advance(k_start + 10 * k_tick), 0u);
    EXPECT_TRUE(fired.empty());
}

TEST(timer_wheel, deadlines_beyond_one_revolution_fire_on_their_tick) {
    // 8 slots: a deadline 8*3+2 = 26 ticks out shares slot 2 with tick 2, 10, 18.
    timer_wheel wheel(k_tick, k_start, 8);
    std::vector<int> fired;
    probe near(&fired, 1);
    probe far(&fired, 2);
    wheel.schedule(far.t, k_start + 26 * k_tick);
    wheel.schedule(near.t, k_start + 2 * k_tick);
    for (uint64_t tick = 1; tick < 26; ++tick) {
        wheel.advance(k_start + tick * k_tick);
    }
    EXPECT_EQ(fired, (std::vector<int>{1}));
    EXPECT_TRUE(wheel.scheduled(far.t));
    EXPECT_EQ(wheel.advance(k_start + 26 * k_tick), 1u);
    EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

TEST(timer_wheel, one_big_advance_fires_far_timers_in_order) {
    timer_wheel wheel(k_tick, k_start, 8);
    std::vector<int> fired;
    probe a(&fired, 1);
    probe b(&fired, 2);
    probe c(&fired, 3);
    // Far apart and out of slot order; a single jump of ten million ticks must not walk every tick
    // and must keep deadline order.
    wheel.schedule(c.t, k_start + 9'000'000 * k_tick);
    wheel.schedule(a.t, k_start + 1'000 * k_tick);
    wheel.schedule(b.t, k_start + 5'000'003 * k_tick);
    EXPECT_EQ(wheel.advance(k_start + 10'000'000 * k_tick), 3u);
    EXPECT_EQ(fired, (std::vector<int>{1, 2, 3}));
}

TEST(timer_wheel, past_deadline_fires_on_next_advance) {
    timer_wheel wheel(k_tick, k_start, 64);
    wheel.advance(k_start + 10 * k_tick);
    std::vector<int> fired;
    probe a(&fired, 1);
    wheel.schedule(a.t, k_start); // already in the past
    EXPECT_EQ(wheel.next_deadline_hint(k_start + 10 * k_tick), k_start + 10 * k_tick);
    EXPECT_EQ(wheel.advance(k_start + 10 * k_tick), 1u);
    EXPECT_EQ(fired, (std::vector<int>{1}));
}

struct periodic {
    timer_wheel* wheel = nullptr;
    uint64_t period = 0;
    uint64_t deadline = 0;
    int count = 0;
    timer t;
    periodic(timer_wheel* w, uint64_t p) : wheel(w), period(p), t(&on_fire, this) {}
    static void on_fire(timer* self, void* ctx) {
        auto* p = static_cast<periodic*>(ctx);
        ++p->count;
        p->deadline += p->period;
        p->wheel->schedule(*self, p->deadline);
    }
};

TEST(timer_wheel, callback_can_reschedule_itself) {
    timer_wheel wheel(k_tick, k_start, 16);
    periodic p(&wheel, 10 * k_tick);
    p.deadline = k_start + 10 * k_tick;
    wheel.schedule(p.t, p.deadline);
    // One advance over 100 ticks: fires at 10, 20, ... 100 = 10 times, crossing 6 revolutions.
    EXPECT_EQ(wheel.advance(k_start + 100 * k_tick), 10u);
    EXPECT_EQ(p.count, 10);
    EXPECT_TRUE(wheel.scheduled(p.t));
    EXPECT_EQ(wheel.next_deadline_hint(k_start + 100 * k_tick), k_start + 110 * k_tick);
}

TEST(timer_wheel, callback_rescheduling_for_now_does_not_livelock) {
    timer_wheel wheel(k_tick, k_start, 16);
    periodic p(&wheel, 0); // reschedules at the deadline it just fired at
    p.deadline = k_start + k_tick;
    wheel.schedule(p.t, p.deadline);
    EXPECT_EQ(wheel.advance(k_start + k_tick), 1u);
    EXPECT_EQ(wheel.advance(k_start + k_tick), 1u);
    EXPECT_EQ(p.count, 2);
}

struct canceller {
    timer_wheel* wheel = nullptr;
    timer* victim = nullptr;
    timer t;
    canceller(timer_wheel* w, timer* v) : wheel(w), victim(v), t(&on_fire, this) {}
    static void on_fire(timer*, void* ctx) {
        auto* c = static_cast<canceller*>(ctx);
        c->wheel->cancel(*c->victim);
    }
};

TEST(timer_wheel, callback_can_cancel_a_timer_due_in_the_same_tick) {
    timer_wheel wheel(k_tick, k_start, 16);
    std::vector<int> fired;
    probe victim(&fired, 1);
    probe later(&fired, 2);
    canceller c(&wheel, &victim.t);
    wheel.schedule(c.t, k_start + 4 * k_tick);
    wheel.schedule(victim.t, k_start + 4 * k_tick);
    wheel.schedule(later.t, k_start + 4 * k_tick);
    EXPECT_EQ(wheel.advance(k_start + 4 * k_tick), 2u);
    EXPECT_EQ(fired, (std::vector<int>{2}));
    EXPECT_EQ(wheel.size(), 0u);
}

TEST(timer_wheel, callback_can_cancel_a_timer_in_a_later_tick) {
    timer_wheel wheel(k_tick, k_start, 16);
    std::vector<int> fired;
    probe victim(&fired, 1);
    canceller c(&wheel, &victim.t);
    wheel.schedule(c.t, k_start + 2 * k_tick);
    wheel.schedule(victim.t, k_start + 3 * k_tick);
    EXPECT_EQ(wheel.advance(k_start + 10 * k_tick), 1u);
    EXPECT_TRUE(fired.empty());
}

TEST(timer_wheel, callback_can_destroy_its_own_timer) {
    timer_wheel wheel(k_tick, k_start, 16);
    struct owned {
        std::unique_ptr<timer> t;
        int fired = 0;
    } o;
    o.t = std::make_unique<timer>(
        [](timer*, void* ctx) {
            auto* self = static_cast<owned*>(ctx);
            ++self->fired;
            self->t.reset();
        },
        &o);
    wheel.schedule(*o.t, k_start + k_tick);
    EXPECT_EQ(wheel.advance(k_start + 2 * k_tick), 1u);
    EXPECT_EQ(o.fired, 1);
    EXPECT_EQ(o.t, nullptr);
}

TEST(timer_wheel, next_deadline_hint_reports_earliest_timer) {
    timer_wheel wheel(k_tick, k_start, 8);
    EXPECT_EQ(wheel.next_deadline_hint(k_start), timer_wheel::k_no_deadline);
    std::vector<int> fired;
    probe far(&fired, 1);
    probe near(&fired, 2);
    // 100 ticks is beyond the 8-slot revolution: the hint must still be exact.
    wheel.schedule(far.t, k_start + 100 * k_tick);
    EXPECT_EQ(wheel.next_deadline_hint(k_start), k_start + 100 * k_tick);
    wheel.schedule(near.t, k_start + 3 * k_tick + 500);
    // Rounded up to the tick at which advance() will fire it.
    EXPECT_EQ(wheel.next_deadline_hint(k_start), k_start + 4 * k_tick);
}

// Shared by many `stamped` timers: the time of the previous and the current advance() call and
// the expiry tick of every timer in firing order.
struct fire_clock {
    uint64_t prev_now = 0;
    uint64_t now = 0;
    std::vector<uint64_t> expiry_ticks;
};

struct stamped {
    fire_clock* clock = nullptr;
    uint64_t deadline = 0;
    uint64_t fired_at = 0;
    uint64_t fired_after = 0;
    int fired = 0;
    timer t;
    stamped() : t(&on_fire, this) {}
    static void on_fire(timer*, void* ctx) {
        auto* s = static_cast<stamped*>(ctx);
        s->fired_at = s->clock->now;
        s->fired_after = s->clock->prev_now;
        ++s->fired;
        s->clock->expiry_ticks.push_back((s->deadline - k_start + k_tick - 1) / k_tick);
    }
};

TEST(timer_wheel, many_timers_across_many_revolutions_each_fire_once_on_time) {
    constexpr std::size_t k_timers = 100'000;
    constexpr uint64_t k_span_ticks = 10'000; // about 39 revolutions of 256 slots
    timer_wheel wheel(k_tick, k_start, 256);
    fire_clock clock;
    clock.prev_now = clock.now = k_start;
    std::vector<stamped> timers(k_timers);
    std::mt19937_64 rng(42);
    for (std::size_t i = 0; i < k_timers; ++i) {
        timers[i].clock = &clock;
        timers[i].deadline = k_start + 1 + rng() % (k_span_ticks * k_tick);
        wheel.schedule(timers[i].t, timers[i].deadline);
    }
    std::size_t cancelled = 0;
    for (std::size_t i = 0; i < k_timers; i += 7) {
        wheel.cancel(timers[i].t);
        ++cancelled;
    }
    EXPECT_EQ(wheel.size(), k_timers - cancelled);

    // Uneven steps of 1..600 ticks: some stay inside a revolution, some skip more than two.
    std::size_t fired = 0;
    while (clock.now <= k_start + (k_span_ticks + 1) * k_tick) {
        clock.prev_now = clock.now;
        clock.now += (1 + rng() % 600) * k_tick;
        fired += wheel.advance(clock.now);
    }
    EXPECT_EQ(fired, k_timers - cancelled);
    EXPECT_EQ(wheel.size(), 0u);
    EXPECT_TRUE(std::is_sorted(clock.expiry_ticks.begin(), clock.expiry_ticks.end()));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < k_timers; ++i) {
        const stamped& s = timers[i];
        if (i % 7 == 0) {
            wrong += s.fired != 0 ? 1 : 0;
            continue;
        }
        // Fired exactly once, in the first advance() whose time reached the deadline's tick.
        const uint64_t tick_time = k_start + (s.deadline - k_start + k_tick - 1) / k_tick * k_tick;
        const bool on_time = s.fired == 1 && s.fired_at >= tick_time && s.fired_after < tick_time;
        wrong += on_time ? 0 : 1;
    }
    EXPECT_EQ(wrong, 0u);
}

TEST(timer_wheel, wheel_destruction_unschedules_timers) {
    std::vector<int> fired;
    probe a(&fired, 1);
    {
        timer_wheel wheel(k_tick, k_start, 8);
        wheel.schedule(a.t, k_start + 5 * k_tick);
    }
    // a's destructor runs after the wheel's and must not touch it.
    EXPECT_TRUE(fired.empty());
}

} // namespace
} // namespace apprelay::core
