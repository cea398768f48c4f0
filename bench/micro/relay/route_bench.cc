// Routing a new user stream, the code a relay worker runs once a user's handshake is done
// (dataplane/relay/routing.hh): find the app by SNI among 1,000 apps, then the least-loaded
// tunnel of its group. Streams open on the picked tunnel and close 256 picks later, so the loads
// the choice reads keep changing.
//
//   find_app              hostname lookup only (mixed-case SNI, lowercased on the stack)
//   pick_tunnel/N         least-loaded tunnel of a group of N (scan up to 8, two choices above)
//   route_new_stream/N    both, plus the open/close bookkeeping
#include "dataplane/relay/routing.hh"

#include <benchmark/benchmark.h>

#include <array>
#include <string>
#include <vector>

namespace apprelay::relay {
namespace {

struct bench_tunnel {
    std::size_t streams = 0;
    std::size_t stream_count() const { return streams; }
};

constexpr int k_apps = 1000;
constexpr std::size_t k_open = 256; // streams open at once

snapshot make_snapshot() {
    snapshot s;
    s.tenants.push_back(tenant_entry{"contoso", "", ""});
    s.groups.push_back(group_entry{0, "g", 1, "", {}});
    for (int i = 0; i < k_apps; ++i) {
        app_entry a;
        a.name = "app" + std::to_string(i);
        a.hostname = a.name + ".contoso.test";
        a.backend = "10.0.0.1:443";
        s.apps.push_back(std::move(a));
    }
    finalize(s);
    return s;
}

// SNIs as users send them: mixed case, spread over the apps.
std::vector<std::string> make_snis() {
    std::vector<std::string> v;
    for (int i = 0; i < 64; ++i) {
        v.push_back("App" + std::to_string(i * 15 % k_apps) + ".Contoso.TEST");
    }
    return v;
}

void find_app_bench(benchmark::State& state) {
    const snapshot s = make_snapshot();
    const auto snis = make_snis();
    std::size_t i = 0;
    for (auto _ : state) {
        const app_route* r = find_app(s, snis[i++ % snis.size()]);
        if (r == nullptr) {
            state.SkipWithError("app not found");
            break;
        }
        benchmark::DoNotOptimize(r);
    }
    state.SetItemsProcessed(state.iterations());
}

struct group_fixture {
    std::vector<bench_tunnel> tunnels;
    std::vector<bench_tunnel*> ptrs;
    std::array<bench_tunnel*, k_open> open{};
    std::size_t next = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;

    explicit group_fixture(std::size_t n) : tunnels(n) {
        for (auto& t : tunnels) {
            ptrs.push_back(&t);
        }
    }
    // The stream opened k_open picks ago closes; the new one opens on t.
    void account(bench_tunnel* t) {
        bench_tunnel*& slot = open[next++ % k_open];
        if (slot != nullptr) {
            --slot->streams;
        }
        ++t->streams;
        slot = t;
    }
};

void pick_tunnel_bench(benchmark::State& state) {
    group_fixture g(std::size_t(state.range(0)));
    auto allow = [](const bench_tunnel*) { return true; };
    for (auto _ : state) {
        bench_tunnel* t =
            pick_least_loaded(std::span<bench_tunnel* const>(g.ptrs), g.rng, allow);
        g.account(t);
    }
    state.SetItemsProcessed(state.iterations());
}

void route_new_stream_bench(benchmark::State& state) {
    const snapshot s = make_snapshot();
    const auto snis = make_snis();
    group_fixture g(std::size_t(state.range(0)));
    auto allow = [](const bench_tunnel*) { return true; };
    std::size_t i = 0;
    for (auto _ : state) {
        const app_route* r = find_app(s, snis[i++ % snis.size()]);
        if (r == nullptr || s.apps[r->second].group != 0) {
            state.SkipWithError("app not found");
            break;
        }
        bench_tunnel* t =
            pick_least_loaded(std::span<bench_tunnel* const>(g.ptrs), g.rng, allow);
        g.account(t);
    }
    state.SetItemsProcessed(state.iterations());
}

BENCHMARK(find_app_bench)->Name("find_app");
BENCHMARK(pick_tunnel_bench)->Name("pick_tunnel")->Arg(2)->Arg(8)->Arg(64);
BENCHMARK(route_new_stream_bench)->Name("route_new_stream")->Arg(2)->Arg(8)->Arg(64);

} // namespace
} // namespace apprelay::relay

BENCHMARK_MAIN();
