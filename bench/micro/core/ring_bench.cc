// SPSC handoff cost between two threads: ns per message moved producer -> consumer.
//   spsc_handoff/<burst>: the producer pushes bursts of <burst> as fast as the ring takes them;
//     the consumer (the benchmark thread) pops bursts of up to <burst>. Each side is pinned to its
//     own cpu when the machine has two; `two_cpus` records whether it did.
// ns_per_msg is measured over the whole run (wall clock / messages received), so it includes
// the cache-line transfers of slots and indices, which is the cost a worker actually pays.
// Run with --benchmark_repetitions=10 --benchmark_report_aggregates_only=true for medians.
#include "dataplane/base/time.hh"
#include "dataplane/core/core_map.hh"
#include "dataplane/core/spsc_ring.hh"

#include <atomic>
#include <benchmark/benchmark.h>
#include <cstdint>
#include <thread>
#include <vector>

namespace apprelay::core {
namespace {

// 1024 slots: deep enough that the producer rarely waits at burst 32, small enough to stay in L2.
constexpr std::size_t k_ring_slots = 1024;

const std::vector<int>& machine_cpus() {
    // Read once, before the first run pins this thread and narrows its affinity to one cpu.
    static const std::vector<int> cpus = available_cpus();
    return cpus;
}

void spsc_handoff(benchmark::State& state) {
    const std::size_t burst = std::size_t(state.range(0));
    const std::vector<int>& cpus = machine_cpus();
    const bool two_cpus = cpus.size() >= 2;
    if (two_cpus) {
        pin_current_thread(cpus[0], nullptr).ok();
    }
    spsc_ring<uint64_t> ring(k_ring_slots);
    std::atomic<bool> stop{false};
    std::thread producer([&] {
        if (two_cpus) {
            pin_current_thread(cpus[1], nullptr).ok();
        }
        std::vector<uint64_t> buf(burst);
        uint64_t seq = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            for (std::size_t i = 0; i < burst; ++i) {
                buf[i] = seq + i;
            }
            seq += ring.push_burst(buf.data(), burst);
        }
    });
    std::vector<uint64_t> buf(burst);
    uint64_t received = 0;
    uint64_t out_of_order = 0;
    const uint64_t start_ns = mono_ns();
    for (auto _ : state) {
        std::size_t n = 0;
        while (n == 0) {
            n = ring.pop_burst(buf.data(), burst);
        }
        // One compare per burst keeps the consumer honest without dominating the cost.
        out_of_order += buf[0] != received ? 1 : 0;
        received += n;
        benchmark::DoNotOptimize(buf.data());
    }
    const uint64_t elapsed_ns = mono_ns() - start_ns;
    stop.store(true, std::memory_order_relaxed);
    producer.join();
    if (out_of_order != 0) {
        state.SkipWithError("messages arrived out of order");
    }
    state.SetItemsProcessed(int64_t(received));
    state.counters["ns_per_msg"] = received == 0 ? 0.0 : double(elapsed_ns) / double(received);
    state.counters["two_cpus"] = two_cpus ? 1 : 0;
}
BENCHMARK(spsc_handoff)->Arg(1)->Arg(32)->UseRealTime();

} // namespace
} // namespace apprelay::core

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 1;
    }
    benchmark::AddCustomContext("available_cpus",
                                apprelay::core::cpu_list_to_string(apprelay::core::machine_cpus()));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
