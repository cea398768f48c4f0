#include "dataplane/core/spsc_ring.hh"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <gtest/gtest.h>
#include <string>
#include <thread>
#include <vector>

namespace apprelay::core {
namespace {

TEST(spsc_ring, capacity_rounds_up_to_power_of_two) {
    EXPECT_EQ(spsc_ring<int>(5).capacity(), 8u);
    EXPECT_EQ(spsc_ring<int>(8).capacity(), 8u);
    EXPECT_EQ(spsc_ring<int>(0).capacity(), 1u);
}

TEST(spsc_ring, pop_from_empty_fails_and_leaves_output_alone) {
    spsc_ring<int> ring(4);
    int out = 42;
    EXPECT_FALSE(ring.try_pop(out));
    EXPECT_EQ(out, 42);
    EXPECT_EQ(ring.pop_burst(&out, 1), 0u);
    EXPECT_EQ(ring.size_approx(), 0u);
}

TEST(spsc_ring, push_to_full_fails_until_one_is_popped) {
    spsc_ring<int> ring(4);
    for (int i = 0; i < 4; ++i) {
        EXPECT_TRUE(ring.try_push(i));
    }
    EXPECT_EQ(ring.size_approx(), 4u);
    EXPECT_FALSE(ring.try_push(99));
    int out = -1;
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out, 0);
    EXPECT_TRUE(ring.try_push(4));
    EXPECT_FALSE(ring.try_push(5));
}

TEST(spsc_ring, keeps_fifo_order_across_many_wraparounds) {
    spsc_ring<uint32_t> ring(8);
    uint32_t next_in = 0;
    uint32_t next_out = 0;
    // 3 in, 3 out with a capacity of 8 wraps the indices every few rounds.
    for (int round = 0; round < 1000; ++round) {
        for (int i = 0; i < 3; ++i) {
            ASSERT_TRUE(ring.try_push(next_in++));
        }
        for (int i = 0; i < 3; ++i) {
            uint32_t v = 0;
            ASSERT_TRUE(ring.try_pop(v));
            ASSERT_EQ(v, next_out++);
        }
    }
    EXPECT_EQ(ring.size_approx(), 0u);
}

TEST(spsc_ring, push_burst_is_partial_when_space_runs_out) {
    spsc_ring<int> ring(8);
    int in[12];
    for (int i = 0; i < 12; ++i) {
        in[i] = i;
    }
    EXPECT_EQ(ring.push_burst(in, 5), 5u);
    // 3 slots left: only in[5..7] go in.
    EXPECT_EQ(ring.push_burst(in + 5, 7), 3u);
    EXPECT_EQ(ring.push_burst(in + 8, 4), 0u);
    int out[12] = {};
    EXPECT_EQ(ring.pop_burst(out, 12), 8u);
    for (int i = 0; i < 8; ++i) {
        EXPECT_EQ(out[i], i);
    }
    EXPECT_EQ(ring.pop_burst(out, 12), 0u);
}

TEST(spsc_ring, bursts_wrap_around_the_end_of_the_buffer) {
    spsc_ring<int> ring(8);
    int in[6] = {0, 1, 2, 3, 4, 5};
    int out[6] = {};
    ASSERT_EQ(ring.push_burst(in, 6), 6u);
    ASSERT_EQ(ring.pop_burst(out, 6), 6u);
    // Indices now at 6: the next 6 items occupy slots 6,7,0,1,2,3.
    int in2[6] = {10, 11, 12, 13, 14, 15};
    ASSERT_EQ(ring.push_burst(in2, 6), 6u);
    ASSERT_EQ(ring.pop_burst(out, 6), 6u);
    for (int i = 0; i < 6; ++i) {
        EXPECT_EQ(out[i], 10 + i);
    }
}

// A correct ring moves 10 million items in well under a second on two cpus; if the two sides
// stop making progress (lost wakeup, a bug that leaves both waiting) the test fails after this
// long instead of hanging until the meson timeout.
constexpr auto k_two_thread_budget = std::chrono::seconds(30);

// Moves `count` sequence numbers from a producer thread to a consumer thread and checks that
// each arrives exactly once and in order.
void run_two_threads(std::size_t capacity, std::size_t burst, uint64_t count) {
    spsc_ring<uint64_t> ring(capacity);
    std::atomic<bool> give_up{false};
    const auto deadline = std::chrono::steady_clock::now() + k_two_thread_budget;
    std::thread producer([&] {
        std::vector<uint64_t> buf(burst);
        uint64_t next = 0;
        while (next < count && !give_up.load(std::memory_order_relaxed)) {
            std::size_t n = 0;
            for (; n < burst && next + n < count; ++n) {
                buf[n] = next + n;
            }
            std::size_t pushed = ring.push_burst(buf.data(), n);
            next += pushed;
            if (pushed == 0) {
                std::this_thread::yield();
            }
        }
    });
    std::vector<uint64_t> buf(burst);
    uint64_t expected = 0;
    uint64_t mismatches = 0;
    bool timed_out = false;
    while (expected < count) {
        std::size_t n = ring.pop_burst(buf.data(), burst);
        for (std::size_t i = 0; i < n; ++i) {
            if (buf[i] != expected) {
                ++mismatches;
                expected = buf[i];
            }
            ++expected;
        }
        if (n == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                timed_out = true;
                give_up.store(true, std::memory_order_relaxed);
                break;
            }
            std::this_thread::yield();
        }
    }
    producer.join();
    EXPECT_FALSE(timed_out) << "stalled after " << expected << " of " << count << " items";
    EXPECT_EQ(mismatches, 0u);
    EXPECT_EQ(expected, count);
    if (!timed_out) {
        EXPECT_EQ(ring.size_approx(), 0u);
    }
}

TEST(spsc_ring, two_threads_move_ten_million_sequence_numbers_in_order) {
    run_two_threads(1024, 1, 10'000'000);
}

TEST(spsc_ring, two_threads_in_bursts_through_a_small_ring_stay_in_order) {
    // Burst 32 through 64 slots keeps both sides hitting full/empty constantly.
    run_two_threads(64, 32, 10'000'000);
}

// The shape of relay::tunnel_event (dataplane/relay/worker.hh): a multi-word record whose
// bytes must all arrive as written, not only its index.
struct event_record {
    uint64_t seq = 0;
    char id[40] = {};
    uint64_t check = 0; // checksum(): a record read half-written fails it
};

uint64_t checksum(const event_record& e) {
    uint64_t c = e.seq;
    for (char ch : e.id) {
        c = c * 31 + uint8_t(ch);
    }
    return c;
}

TEST(spsc_ring, worker_events_with_a_backlog_reach_the_control_thread_whole_and_in_order) {
    // As worker::emit/flush_events and control_plane::drain_events use it: the worker never
    // waits for the control thread; when the ring is full it keeps events in a local backlog and
    // retries each loop; the control thread drains the ring on its own clock (here: in bursts
    // with naps, so the ring fills and the backlog is used). 16 slots, 100k events.
    constexpr uint64_t k_events = 100'000;
    spsc_ring<event_record> ring(16);
    std::atomic<bool> give_up{false};
    const auto deadline = std::chrono::steady_clock::now() + k_two_thread_budget;
    uint64_t backlogged = 0;
    std::thread worker([&] {
        std::vector<event_record> backlog;
        for (uint64_t seq = 0; seq < k_events && !give_up.load(std::memory_order_relaxed); ++seq) {
            event_record e;
            e.seq = seq;
            const std::string id = "connector-" + std::to_string(seq % 977);
            id.copy(e.id, sizeof e.id - 1);
            e.check = checksum(e);
            if (!backlog.empty() || !ring.try_push(e)) {
                backlog.push_back(e);
                backlogged = std::max<uint64_t>(backlogged, backlog.size());
            }
            std::size_t i = 0; // flush_events: in order, as many as fit
            while (i < backlog.size() && ring.try_push(backlog[i])) {
                ++i;
            }
            backlog.erase(backlog.begin(), backlog.begin() + long(i));
            // A real worker has a whole loop pass between events: it never piles up more than a
            // few. Waiting here keeps the backlog bounded (erasing from the front of a backlog of
            // tens of thousands made this test quadratic: 30 s under ASan at -O1).
            while (backlog.size() >= 64 && !give_up.load(std::memory_order_relaxed)) {
                std::this_thread::yield();
                std::size_t j = 0;
                while (j < backlog.size() && ring.try_push(backlog[j])) {
                    ++j;
                }
                backlog.erase(backlog.begin(), backlog.begin() + long(j));
            }
        }
        while (!backlog.empty() && !give_up.load(std::memory_order_relaxed)) {
            if (ring.try_push(backlog.front())) {
                backlog.erase(backlog.begin());
            } else {
                std::this_thread::yield();
            }
        }
    });
    uint64_t expected = 0;
    uint64_t next_nap = 0;
    uint64_t bad = 0;
    bool timed_out = false;
    while (expected < k_events) {
        event_record e;
        bool drained = false;
        while (ring.try_pop(e)) {
            bad += (e.seq != expected || e.check != checksum(e)) ? 1 : 0;
            expected = e.seq + 1;
            drained = true;
        }
        if (std::chrono::steady_clock::now() > deadline) {
            timed_out = true;
            give_up.store(true, std::memory_order_relaxed);
            break;
        }
        if (expected >= next_nap) {
            // The control thread's tick sleeps between drains; 1 ms is ample for 16 events.
            next_nap += 5'000;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        } else if (!drained) {
            std::this_thread::yield();
        }
    }
    worker.join();
    EXPECT_FALSE(timed_out) << "stalled after " << expected << " of " << k_events << " events";
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(expected, k_events);
    EXPECT_GT(backlogged, 0u) << "the ring never filled: the backlog path went untested";
}

TEST(spsc_ring, hands_back_the_exact_pointers_pushed) {
    // The relay passes ownership across cores as raw pointers; the ring must hand back exactly
    // the pointer that went in.
    spsc_ring<int*> ring(2);
    int a = 1;
    int b = 2;
    ASSERT_TRUE(ring.try_push(&a));
    ASSERT_TRUE(ring.try_push(&b));
    int* out = nullptr;
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out, &a);
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out, &b);
}

} // namespace
} // namespace apprelay::core
