#include "dataplane/core/core_map.hh"

#include <algorithm>
#include <gtest/gtest.h>
#include <thread>

namespace apprelay::core {
namespace {

const std::vector<int> k_four_cpus = {0, 1, 2, 3};

// Parses a spec that must be refused and returns the message.
std::string refusal(std::string_view spec, const std::vector<int>& cpus = k_four_cpus) {
    std::string why;
    auto r = parse_core_map(spec, cpus, &why);
    EXPECT_FALSE(r.ok()) << spec;
    if (r.ok()) {
        return "accepted";
    }
    EXPECT_EQ(r.code(), errc::invalid_argument);
    EXPECT_FALSE(why.empty());
    return why;
}

TEST(core_map, parses_control_and_worker_range) {
    std::string why;
    auto r = parse_core_map("control=0,workers=1-3", k_four_cpus, &why);
    ASSERT_TRUE(r.ok()) << why;
    EXPECT_EQ(r->control_cpu, 0);
    EXPECT_EQ(r->worker_cpus, (std::vector<int>{1, 2, 3}));
    EXPECT_FALSE(r->shared);
}

TEST(core_map, bare_tokens_continue_the_workers_list) {
    std::string why;
    auto r = parse_core_map("workers=1,3-5,7,control=0", {0, 1, 2, 3, 4, 5, 6, 7}, &why);
    ASSERT_TRUE(r.ok()) << why;
    EXPECT_EQ(r->control_cpu, 0);
    EXPECT_EQ(r->worker_cpus, (std::vector<int>{1, 3, 4, 5, 7}));
}

TEST(core_map, workers_are_sorted_ascending) {
    std::string why;
    auto r = parse_core_map("control=0,workers=3,1,2", k_four_cpus, &why);
    ASSERT_TRUE(r.ok()) << why;
    EXPECT_EQ(r->worker_cpus, (std::vector<int>{1, 2, 3}));
}

TEST(core_map, shared_allows_control_cpu_as_worker) {
    std::string why;
    auto r = parse_core_map("control=0,workers=0-1,shared=1", {0, 1}, &why);
    ASSERT_TRUE(r.ok()) << why;
    EXPECT_TRUE(r->shared);
    EXPECT_EQ(r->worker_cpus, (std::vector<int>{0, 1}));
}

TEST(core_map, to_string_is_canonical_and_round_trips) {
    std::string why;
    auto r = parse_core_map("workers=5,1,2,3,control=0,shared=1", {0, 1, 2, 3, 4, 5}, &why);
    ASSERT_TRUE(r.ok()) << why;
    EXPECT_EQ(to_string(*r), "control=0,workers=1-3,5,shared=1");
    auto again = parse_core_map(to_string(*r), {0, 1, 2, 3, 4, 5}, &why);
    ASSERT_TRUE(again.ok()) << why;
    EXPECT_EQ(again->control_cpu, r->control_cpu);
    EXPECT_EQ(again->worker_cpus, r->worker_cpus);
    EXPECT_EQ(again->shared, r->shared);
}

TEST(core_map, refuses_unknown_key) {
    EXPECT_EQ(refusal("control=0,workers=1,turbo=1"),
              "unknown key 'turbo' (expected control, workers, shared)");
}

TEST(core_map, refuses_bare_token_outside_workers) {
    EXPECT_EQ(refusal("control=0,1,workers=2"), "item '1' has no key (expected key=value)");
}

TEST(core_map, refuses_malformed_numbers) {
    EXPECT_EQ(refusal("control=x,workers=1"), "malformed cpu number 'x' for control");
    EXPECT_EQ(refusal("control=,workers=1"), "malformed cpu number '' for control");
    EXPECT_EQ(refusal("control=-1,workers=1"), "malformed cpu number '-1' for control");
    EXPECT_EQ(refusal("control=0,workers=1a"), "malformed cpu number '1a' in workers");
    EXPECT_EQ(refusal("control=0,workers=1,+2"), "malformed cpu number '+2' in workers");
    EXPECT_EQ(refusal("control=0,workers=99999999999"),
              "malformed cpu number '99999999999' in workers");
}

TEST(core_map, refuses_malformed_ranges) {
    EXPECT_EQ(refusal("control=0,workers=1-"), "malformed cpu range '1-' in workers");
    EXPECT_EQ(refusal("control=0,workers=-3"), "malformed cpu range '-3' in workers");
    EXPECT_EQ(refusal("control=0,workers=1-2-3"), "malformed cpu range '1-2-3' in workers");
    EXPECT_EQ(refusal("control=0,workers=3-1"),
              "malformed cpu range '3-1' in workers: start is above end");
}

TEST(core_map, refuses_duplicate_cpu) {
    EXPECT_EQ(refusal("control=0,workers=1,1"), "duplicate cpu 1 in workers");
    EXPECT_EQ(refusal("control=0,workers=1-3,2"), "duplicate cpu 2 in workers");
}

TEST(core_map, refuses_duplicate_key) {
    EXPECT_EQ(refusal("control=0,control=1,workers=2"), "duplicate key 'control'");
    EXPECT_EQ(refusal("control=0,workers=1,workers=2"), "duplicate key 'workers'");
    EXPECT_EQ(refusal("control=0,workers=1,shared=1,shared=1"), "duplicate key 'shared'");
}

TEST(core_map, refuses_cpu_that_is_both_control_and_worker) {
    EXPECT_EQ(refusal("control=1,workers=1-2"),
              "cpu 1 is both control and worker (add shared=1 to allow)");
    EXPECT_EQ(refusal("control=1,workers=1-2,shared=0"),
              "cpu 1 is both control and worker (add shared=1 to allow)");
}

TEST(core_map, refuses_unavailable_cpu) {
    EXPECT_EQ(refusal("control=0,workers=1,7", {0, 1}), "cpu 7 is not available (available: 0-1)");
    EXPECT_EQ(refusal("control=5,workers=1", {0, 1, 3}),
              "cpu 5 is not available (available: 0-1,3)");
    EXPECT_EQ(refusal("control=0,workers=1", {}), "cpu 0 is not available (available: none)");
}

TEST(core_map, refuses_missing_workers) {
    EXPECT_EQ(refusal("control=0"), "no workers");
    EXPECT_EQ(refusal("control=0,workers="), "no workers");
}

TEST(core_map, refuses_missing_control) {
    EXPECT_EQ(refusal("workers=1-3"), "control cpu missing");
    EXPECT_EQ(refusal(""), "control cpu missing");
}

TEST(core_map, refuses_empty_items_and_bad_shared_value) {
    EXPECT_EQ(refusal("control=0,,workers=1"), "empty item in core map 'control=0,,workers=1'");
    EXPECT_EQ(refusal("control=0,workers=1,"), "empty item in core map 'control=0,workers=1,'");
    EXPECT_EQ(refusal("control=0,workers=1,shared=yes"),
              "malformed value 'yes' for shared (0 or 1)");
}

TEST(core_map, null_why_is_allowed) {
    auto r = parse_core_map("control=0", k_four_cpus, nullptr);
    EXPECT_EQ(r.code(), errc::invalid_argument);
}

TEST(core_map, available_cpus_lists_at_least_the_current_cpu) {
    auto cpus = available_cpus();
    ASSERT_FALSE(cpus.empty());
    EXPECT_TRUE(std::is_sorted(cpus.begin(), cpus.end()));
}

TEST(core_map, pin_current_thread_to_an_available_cpu_succeeds) {
    auto cpus = available_cpus();
    ASSERT_FALSE(cpus.empty());
    std::string why;
    // Pin in a helper thread so the test runner's own affinity is untouched.
    bool ok = false;
    std::thread t([&] { ok = pin_current_thread(cpus.back(), &why).ok(); });
    t.join();
    EXPECT_TRUE(ok) << why;
}

TEST(core_map, pin_current_thread_refuses_out_of_range_cpu) {
    std::string why;
    auto r = pin_current_thread(-1, &why);
    EXPECT_EQ(r.code(), errc::invalid_argument);
    EXPECT_NE(why.find("cpu -1 is out of range"), std::string::npos) << why;
}

} // namespace
} // namespace apprelay::core
