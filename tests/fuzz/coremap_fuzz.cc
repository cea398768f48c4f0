// libFuzzer target: the core map spec (dataplane/core/core_map.*), from `--core-map` or
// `[relay] core_map`. Input: two bytes of available-cpu mask (bit i = cpu i, cpus 0-15; a zero
// mask stands for a big machine with cpus 0-1023), then the spec text. Whatever the bytes, the
// parser either refuses with a reason or yields a map that keeps its documented invariants and
// survives to_string -> parse_core_map unchanged.
#include "dataplane/core/core_map.hh"

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace {

// Specs are a few dozen characters; bigger inputs only slow the fuzzer down.
constexpr size_t k_max_input = 4096;
constexpr int k_big_machine_cpus = 1024;

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace apprelay;
    using namespace apprelay::core;
    if (size < 2 || size > k_max_input) {
        return 0;
    }
    const unsigned mask = unsigned(data[0]) | unsigned(data[1]) << 8;
    std::vector<int> available;
    for (int cpu = 0; cpu < (mask == 0 ? k_big_machine_cpus : 16); ++cpu) {
        if (mask == 0 || (mask >> cpu & 1u) != 0) {
            available.push_back(cpu);
        }
    }
    const std::string_view spec(reinterpret_cast<const char*>(data + 2), size - 2);
    std::string why;
    auto m = parse_core_map(spec, available, &why);
    if (!m) {
        if (m.code() != errc::invalid_argument || why.empty()) {
            std::abort(); // a refusal is always invalid_argument with a reason
        }
        return 0;
    }
    auto is_available = [&](int cpu) {
        return std::find(available.begin(), available.end(), cpu) != available.end();
    };
    const auto& w = m->worker_cpus;
    if (w.empty() || !is_available(m->control_cpu) ||
        !std::all_of(w.begin(), w.end(), is_available) ||
        std::adjacent_find(w.begin(), w.end(), [](int a, int b) { return a >= b; }) != w.end()) {
        std::abort(); // workers: non-empty, ascending, no duplicates, all available
    }
    if (!m->shared && std::binary_search(w.begin(), w.end(), m->control_cpu)) {
        std::abort();
    }
    const std::string canonical = to_string(*m);
    std::string why_again;
    auto again = parse_core_map(canonical, available, &why_again);
    if (!again || again->control_cpu != m->control_cpu || again->worker_cpus != w ||
        again->shared != m->shared || to_string(*again) != canonical) {
        std::abort();
    }
    return 0;
}
