#include "dataplane/core/rcu_cell.hh"

#include <atomic>
#include <gtest/gtest.h>
#include <thread>

namespace apprelay::core {
namespace {

// Each value counts its live instances, so reclamation can be observed.
struct tracked {
    static std::atomic<int> live;
    explicit tracked(uint64_t v) : value(v), check(~v) { live.fetch_add(1); }
    ~tracked() {
        check = 0; // a reader touching a freed value would most likely see check != ~value
        live.fetch_sub(1);
    }
    uint64_t value;
    uint64_t check;
};
std::atomic<int> tracked::live{0};

TEST(rcu_cell, reader_sees_published_value_after_refresh) {
    rcu_cell<tracked> cell(1, std::make_unique<tracked>(1));
    rcu_cell<tracked>::reader r(&cell, 0);
    EXPECT_EQ(r->value, 1u);
    EXPECT_FALSE(r.refresh());
    cell.publish(std::make_unique<tracked>(2));
    EXPECT_EQ(r->value, 1u); // unchanged until the reader refreshes
    EXPECT_TRUE(r.refresh());
    EXPECT_EQ(r->value, 2u);
}

TEST(rcu_cell, old_value_lives_until_every_reader_moved_on) {
    tracked::live = 0;
    {
        rcu_cell<tracked> cell(2, std::make_unique<tracked>(1));
        rcu_cell<tracked>::reader a(&cell, 0), b(&cell, 1);
        cell.publish(std::make_unique<tracked>(2));
        EXPECT_EQ(cell.reclaim(), 1u); // neither reader refreshed: value 1 kept
        EXPECT_EQ(tracked::live.load(), 2);
        a.refresh();
        EXPECT_EQ(cell.reclaim(), 1u); // b may still hold value 1
        EXPECT_EQ(b->value, 1u);
        b.refresh();
        EXPECT_EQ(cell.reclaim(), 0u);
        EXPECT_EQ(tracked::live.load(), 1);
    }
    EXPECT_EQ(tracked::live.load(), 0);
}

TEST(rcu_cell, readers_never_see_freed_values_under_concurrent_publish) {
    tracked::live = 0;
    constexpr int k_readers = 2;
    constexpr uint64_t k_publishes = 20000;
    rcu_cell<tracked> cell(k_readers, std::make_unique<tracked>(0));
    std::atomic<bool> done{false};
    std::atomic<uint64_t> bad{0};
    std::vector<std::thread> readers;
    for (int i = 0; i < k_readers; ++i) {
        readers.emplace_back([&, i] {
            rcu_cell<tracked>::reader r(&cell, std::size_t(i));
            uint64_t last = 0;
            while (!done.load(std::memory_order_relaxed)) {
                r.refresh();
                if (r->check != ~r->value || r->value < last) {
                    bad.fetch_add(1);
                }
                last = r->value;
            }
        });
    }
    for (uint64_t v = 1; v <= k_publishes; ++v) {
        cell.publish(std::make_unique<tracked>(v));
        cell.reclaim();
    }
    done = true;
    for (auto& t : readers) {
        t.join();
    }
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_EQ(cell.writer_view()->value, k_publishes);
}

} // namespace
} // namespace apprelay::core
