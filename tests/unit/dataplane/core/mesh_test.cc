#include "dataplane/core/mesh.hh"

#include <cstdint>
#include <gtest/gtest.h>
#include <set>
#include <thread>
#include <vector>

namespace apprelay::core {
namespace {

TEST(ring_mesh, every_ordered_pair_has_its_own_ring) {
    ring_mesh<int> mesh(4, 8);
    EXPECT_EQ(mesh.participants(), 4u);
    std::set<const spsc_ring<int>*> seen;
    for (std::size_t from = 0; from < 4; ++from) {
        for (std::size_t to = 0; to < 4; ++to) {
            if (from != to) {
                seen.insert(&mesh.ring(from, to));
                EXPECT_EQ(mesh.ring(from, to).capacity(), 8u);
            }
        }
    }
    // 4 participants, 3 peers each.
    EXPECT_EQ(seen.size(), 12u);
}

TEST(ring_mesh, direction_matters) {
    ring_mesh<int> mesh(2, 4);
    ASSERT_TRUE(mesh.ring(0, 1).try_push(7));
    int out = 0;
    EXPECT_FALSE(mesh.ring(1, 0).try_pop(out));
    ASSERT_TRUE(mesh.ring(0, 1).try_pop(out));
    EXPECT_EQ(out, 7);
}

TEST(ring_mesh, items_arrive_only_at_their_addressee) {
    constexpr std::size_t k_n = 3;
    ring_mesh<uint32_t> mesh(k_n, 4);
    // Tag each item with from*10+to and check every ring holds exactly its own tag.
    for (std::size_t from = 0; from < k_n; ++from) {
        for (std::size_t to = 0; to < k_n; ++to) {
            if (from != to) {
                ASSERT_TRUE(mesh.ring(from, to).try_push(uint32_t(from * 10 + to)));
            }
        }
    }
    for (std::size_t from = 0; from < k_n; ++from) {
        for (std::size_t to = 0; to < k_n; ++to) {
            if (from != to) {
                uint32_t v = 0;
                ASSERT_TRUE(mesh.ring(from, to).try_pop(v));
                EXPECT_EQ(v, from * 10 + to);
                EXPECT_FALSE(mesh.ring(from, to).try_pop(v));
            }
        }
    }
}

TEST(ring_mesh, single_participant_has_no_rings) {
    ring_mesh<int> mesh(1, 4);
    EXPECT_EQ(mesh.participants(), 1u);
}

TEST(ring_mesh, threads_exchange_in_both_directions_at_once) {
    // Two threads each send 1 million numbers to the other while receiving; neither blocks the
    // other because each direction has its own ring.
    constexpr uint64_t k_count = 1'000'000;
    ring_mesh<uint64_t> mesh(2, 256);
    uint64_t errors[2] = {0, 0};
    auto run = [&](std::size_t self) {
        const std::size_t peer = 1 - self;
        uint64_t sent = 0;
        uint64_t expected = 0;
        while (sent < k_count || expected < k_count) {
            if (sent < k_count && mesh.ring(self, peer).try_push(sent)) {
                ++sent;
            }
            uint64_t v = 0;
            if (mesh.ring(peer, self).try_pop(v)) {
                errors[self] += v != expected ? 1 : 0;
                expected = v + 1;
            } else {
                std::this_thread::yield();
            }
        }
    };
    std::thread other(run, 1);
    run(0);
    other.join();
    EXPECT_EQ(errors[0], 0u);
    EXPECT_EQ(errors[1], 0u);
}

} // namespace
} // namespace apprelay::core
