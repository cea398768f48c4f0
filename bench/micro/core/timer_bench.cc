// Timer wheel costs on one thread (no cross-core traffic involved).
//   timer_schedule_expire/<n>: schedule n timers spread over the next 100 ticks, then one
//     advance() that fires them all; ns_per_timer = (schedule + expire) / n.
//   timer_schedule_cancel/<n>: schedule n timers and cancel them before they expire, the common
//     life of an idle timeout that traffic keeps pushing back; ns_per_timer = (schedule+cancel)/n.
// Run with --benchmark_repetitions=10 --benchmark_report_aggregates_only=true for medians.
#include "dataplane/base/time.hh"
#include "dataplane/core/core_map.hh"
#include "dataplane/core/timer_wheel.hh"

#include <benchmark/benchmark.h>
#include <cstdint>
#include <string>
#include <vector>

namespace apprelay::core {
namespace {

constexpr uint64_t k_tick_ns = 1'000;
constexpr std::size_t k_slots = 512;
// Idle and handshake timeouts land well inside one revolution; spread them like that.
constexpr uint64_t k_spread_ticks = 100;

void count_fired(timer*, void* ctx) {
    ++*static_cast<uint64_t*>(ctx);
}

void timer_schedule_expire(benchmark::State& state) {
    const std::size_t batch = std::size_t(state.range(0));
    timer_wheel wheel(k_tick_ns, 0, k_slots);
    std::vector<timer> timers(batch);
    uint64_t fired = 0;
    for (timer& t : timers) {
        t.fn = &count_fired;
        t.ctx = &fired;
    }
    uint64_t now = 0;
    const uint64_t start_ns = mono_ns();
    for (auto _ : state) {
        for (std::size_t i = 0; i < batch; ++i) {
            wheel.schedule(timers[i], now + (1 + i % k_spread_ticks) * k_tick_ns);
        }
        now += k_spread_ticks * k_tick_ns;
        benchmark::DoNotOptimize(wheel.advance(now));
    }
    const uint64_t elapsed_ns = mono_ns() - start_ns;
    if (fired != state.iterations() * batch) {
        state.SkipWithError("not every timer fired");
    }
    state.SetItemsProcessed(int64_t(fired));
    state.counters["ns_per_timer"] = fired == 0 ? 0.0 : double(elapsed_ns) / double(fired);
}
BENCHMARK(timer_schedule_expire)->Arg(64)->Arg(1024)->Arg(16384);

void timer_schedule_cancel(benchmark::State& state) {
    const std::size_t batch = std::size_t(state.range(0));
    timer_wheel wheel(k_tick_ns, 0, k_slots);
    std::vector<timer> timers(batch);
    uint64_t ops = 0;
    const uint64_t start_ns = mono_ns();
    for (auto _ : state) {
        for (std::size_t i = 0; i < batch; ++i) {
            wheel.schedule(timers[i], (1 + i % k_spread_ticks) * k_tick_ns);
        }
        for (std::size_t i = 0; i < batch; ++i) {
            wheel.cancel(timers[i]);
        }
        ops += batch;
    }
    const uint64_t elapsed_ns = mono_ns() - start_ns;
    state.SetItemsProcessed(int64_t(ops));
    state.counters["ns_per_timer"] = ops == 0 ? 0.0 : double(elapsed_ns) / double(ops);
}
BENCHMARK(timer_schedule_cancel)->Arg(1024);

} // namespace
} // namespace apprelay::core

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 1;
    }
    const std::vector<int> cpus = apprelay::core::available_cpus();
    // One thread: pin it so migrations do not show up as noise.
    if (!cpus.empty()) {
        apprelay::core::pin_current_thread(cpus.back(), nullptr).ok();
    }
    benchmark::AddCustomContext("pinned_cpu", cpus.empty() ? "none" : std::to_string(cpus.back()));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
