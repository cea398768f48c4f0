// Micro-benchmarks for the tunnel frame codec and stream mux (dataplane/tunnel/).
//   data_encode_decode/<payload>: one DATA frame per iteration: encode_data_header + payload
//     copy into a send buffer, then frame_decoder feed/next over it (zero-copy path). Time per
//     iteration is ns/frame; bytes/s counts payload bytes.
//   data_decode_split/<payload>: 32 DATA frames decoded from 4 KiB chunks (TLS-record-sized
//     reads), so most frames take the assembly-copy path. Time is per 32 frames.
//   mux_pair_throughput/<streams>/<max_frame>: a relay mux and a connector mux back to back; per
//   iteration
//     the relay produces one 64 KiB write (DATA round-robin over <streams> always-readable
//     streams), the connector receives it (owner consumes at once) and its WINDOW frames go back.
//     bytes/s counts DATA payload bytes delivered; pull() fills nothing (the app's copy is not
//     the mux's cost).
// Run with --benchmark_repetitions=10 --benchmark_report_aggregates_only=true for medians.
#include "dataplane/tunnel/frame.hh"
#include "dataplane/tunnel/mux.hh"

#include <benchmark/benchmark.h>
#include <cstring>
#include <vector>

namespace apprelay::tunnel {
namespace {

// 32 frames per read burst, as the io loop receives at most 32 completions per pass.
constexpr std::size_t k_burst = 32;
constexpr std::size_t k_read_chunk = 4096;

void data_encode_decode(benchmark::State& state) {
    const auto payload_size = static_cast<uint32_t>(state.range(0));
    std::vector<std::byte> payload(payload_size, std::byte{0x5a});
    std::vector<std::byte> wire(k_header_size + payload_size);
    frame_decoder dec(k_default_max_frame);
    for (auto _ : state) {
        std::size_t n = encode_data_header(wire, 1, payload_size);
        std::memcpy(wire.data() + n, payload.data(), payload_size);
        dec.feed(wire);
        auto f = dec.next();
        benchmark::DoNotOptimize(f.ok());
        benchmark::DoNotOptimize(f->payload.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * payload_size);
    state.SetItemsProcessed(int64_t(state.iterations()));
}

void data_decode_split(benchmark::State& state) {
    const auto payload_size = static_cast<uint32_t>(state.range(0));
    std::vector<std::byte> wire;
    wire.reserve(k_burst * (k_header_size + payload_size));
    std::vector<std::byte> frame(k_header_size + payload_size, std::byte{0x5a});
    for (std::size_t i = 0; i < k_burst; ++i) {
        encode_data_header(frame, 1, payload_size);
        wire.insert(wire.end(), frame.begin(), frame.end());
    }
    frame_decoder dec(k_default_max_frame);
    for (auto _ : state) {
        std::size_t frames = 0;
        for (std::size_t off = 0; off < wire.size(); off += k_read_chunk) {
            dec.feed(std::span<const std::byte>(wire).subspan(
                off, std::min(k_read_chunk, wire.size() - off)));
            for (auto f = dec.next(); f.ok(); f = dec.next()) {
                benchmark::DoNotOptimize(f->payload.data());
                ++frames;
            }
        }
        if (frames != k_burst) {
            state.SkipWithError("decoder lost frames");
            break;
        }
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * k_burst * payload_size);
    state.SetItemsProcessed(int64_t(state.iterations()) * k_burst);
}

struct bench_owner : mux_handler {
    mux* m = nullptr;
    uint64_t received = 0;
    void on_open(uint32_t sid, std::string_view, std::string_view) override { m->open_ack(sid); }
    void on_data(uint32_t sid, std::span<const std::byte> b) override {
        received += b.size();
        m->consumed(sid, b.size());
    }
    void on_fin(uint32_t) override {}
    void on_reset(uint32_t, reason, std::string_view) override {}
    std::size_t pull(uint32_t, std::span<std::byte> dst) override { return dst.size(); }
};

void mux_pair_throughput(benchmark::State& state) {
    const auto streams = static_cast<int>(state.range(0));
    mux_limits l;
    l.max_frame = static_cast<uint32_t>(state.range(1));
    bench_owner rh;
    bench_owner ch;
    mux relay(role::relay, l, rh);
    mux conn(role::connector, l, ch);
    rh.m = &relay;
    ch.m = &conn;
    uint64_t now = 1'000'000'000;
    for (int i = 0; i < streams; ++i) {
        auto sid = relay.open("app", "host:1", now);
        if (!sid.ok()) {
            state.SkipWithError("open failed");
            return;
        }
        relay.mark_readable(*sid);
    }
    std::vector<std::byte> wire(64 * 1024);
    std::vector<std::byte> back(64 * 1024);
    for (auto _ : state) {
        std::size_t n = relay.produce(wire);
        if (!conn.receive(std::span(wire.data(), n), now).ok()) {
            state.SkipWithError("connector rejected relay output");
            break;
        }
        std::size_t b = conn.produce(back);
        if (b > 0 && !relay.receive(std::span(back.data(), b), now).ok()) {
            state.SkipWithError("relay rejected connector output");
            break;
        }
    }
    state.SetBytesProcessed(int64_t(ch.received));
    state.counters["data_frames"] = benchmark::Counter(
        double(relay.counters().get(mux_counter::frames_out)), benchmark::Counter::kIsRate);
}

BENCHMARK(data_encode_decode)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(data_decode_split)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(mux_pair_throughput)->ArgsProduct({{1, 16, 256}, {1024, 16 * 1024}});

} // namespace
} // namespace apprelay::tunnel

BENCHMARK_MAIN();
