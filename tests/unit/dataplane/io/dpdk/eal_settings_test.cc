#include "dataplane/io/dpdk/eal.hh"

#include <gtest/gtest.h>

namespace apprelay::io::dpdk {
namespace {

core::core_map make_map(int control, std::vector<int> workers) {
    core::core_map m;
    m.control_cpu = control;
    m.worker_cpus = std::move(workers);
    return m;
}

TEST(dpdk_eal_settings, argv_lists_every_option_in_order) {
    eal_settings s;
    s.program_name = "relay";
    s.lcores = "0-2";
    s.allow = {"0000:03:00.0"};
    s.vdevs = {"net_tap0,iface=a0", "net_tap1,iface=a1"};
    s.file_prefix = "t1";
    s.no_huge = true;
    s.memory_mb = 256;
    s.no_pci = true;
    s.log_levels = {"lib.eal:error"};
    s.extra = {"--no-telemetry"};
    const std::vector<std::string> want{"relay",
                                        "-l",
                                        "0-2",
                                        "-a",
                                        "0000:03:00.0",
                                        "--vdev",
                                        "net_tap0,iface=a0",
                                        "--vdev",
                                        "net_tap1,iface=a1",
                                        "--file-prefix",
                                        "t1",
                                        "--no-huge",
                                        "-m",
                                        "256",
                                        "--no-pci",
                                        "--log-level=lib.eal:error",
                                        "--no-telemetry"};
    EXPECT_EQ(build_eal_argv(s), want);
}

TEST(dpdk_eal_settings, defaults_pass_only_program_and_quiet_logs) {
    const eal_settings s;
    const auto argv = build_eal_argv(s);
    ASSERT_EQ(argv.size(), 3u);
    EXPECT_EQ(argv[0], "apprelay");
    EXPECT_EQ(argv[1], "--log-level=lib.eal:error");
    EXPECT_EQ(argv[2], "--log-level=pmd.*:warning");
}

TEST(dpdk_eal_settings, lcore_mapping_uses_long_option) {
    eal_settings s;
    s.lcores = "0@0,1@2";
    s.log_levels.clear();
    const auto argv = build_eal_argv(s);
    ASSERT_EQ(argv.size(), 3u);
    EXPECT_EQ(argv[1], "--lcores");
    auto cpus = eal_cpus(s, nullptr);
    ASSERT_TRUE(cpus.ok());
    EXPECT_EQ(*cpus, (std::vector<int>{0, 2}));
}

TEST(dpdk_eal_settings, cpu_list_parses_ranges_and_groups) {
    eal_settings s;
    s.lcores = "3,0-1";
    auto cpus = eal_cpus(s, nullptr);
    ASSERT_TRUE(cpus.ok());
    EXPECT_EQ(*cpus, (std::vector<int>{0, 1, 3}));
    s.lcores = "(0,1)@(2-3),4";
    cpus = eal_cpus(s, nullptr);
    ASSERT_TRUE(cpus.ok());
    EXPECT_EQ(*cpus, (std::vector<int>{2, 3, 4}));
}

TEST(dpdk_eal_settings, malformed_lcores_are_refused_with_the_text) {
    eal_settings s;
    s.lcores = "0-x";
    std::string why;
    auto cpus = eal_cpus(s, &why);
    EXPECT_EQ(cpus.code(), errc::invalid_argument);
    EXPECT_EQ(why, "malformed EAL -l '0-x'");
}

TEST(dpdk_eal_settings, worker_outside_eal_lcores_is_named) {
    eal_settings s;
    s.lcores = "0-2";
    std::string why;
    auto r = check_against_core_map(s, make_map(0, {1, 3}), &why);
    EXPECT_EQ(r.code(), errc::invalid_argument);
    EXPECT_EQ(why, "worker cpu 3 is not in EAL -l 0-2");
}

TEST(dpdk_eal_settings, main_lcore_on_a_worker_cpu_is_refused) {
    eal_settings s;
    s.lcores = "1-3";
    std::string why;
    auto r = check_against_core_map(s, make_map(0, {1, 2, 3}), &why);
    EXPECT_EQ(r.code(), errc::invalid_argument);
    EXPECT_EQ(why, "EAL main lcore runs on cpu 1 (first of -l 1-3) but the control cpu is 0, "
                   "and cpu 1 is a worker cpu: rte_eal_init pins the control thread to the "
                   "main lcore");
}

TEST(dpdk_eal_settings, matching_settings_pass) {
    eal_settings s;
    s.lcores = "0-3";
    std::string why;
    EXPECT_TRUE(check_against_core_map(s, make_map(0, {1, 2, 3}), &why).ok()) << why;
    s.lcores = "0@1,1@0"; // lcore 0 (main) on cpu 1, the control cpu here
    EXPECT_TRUE(check_against_core_map(s, make_map(1, {0}), &why).ok()) << why;
    s.lcores.clear(); // EAL takes every cpu
    EXPECT_TRUE(check_against_core_map(s, make_map(0, {7}), &why).ok()) << why;
}

TEST(dpdk_eal_settings, worker_thread_registration_needs_eal) {
    std::string why;
    EXPECT_EQ(register_worker_thread(&why).code(), errc::not_allowed);
    EXPECT_EQ(why, "cannot register a worker thread with DPDK: EAL is not running");
}

} // namespace
} // namespace apprelay::io::dpdk
