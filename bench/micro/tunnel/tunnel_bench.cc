// Micro-benchmarks for the tunnel frame codec (dataplane/tunnel/frame.cc).
//   data_encode_decode/<payload>: one DATA frame per iteration: encode_data_header + payload
//     copy into a send buffer, then frame_decoder feed/next over it (zero-copy path). Time per
//     iteration is ns/frame; bytes/s counts payload bytes.
//   data_decode_split/<payload>: 32 DATA frames decoded from 4 KiB chunks (TLS-record-sized
//     reads), so most frames take the assembly-copy path. Time is per 32 frames.
// Run with --benchmark_repetitions=10 --benchmark_report_aggregates_only=true for medians.
#include "dataplane/tunnel/frame.hh"

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

BENCHMARK(data_encode_decode)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(data_decode_split)->Arg(1024)->Arg(16 * 1024);

} // namespace
} // namespace apprelay::tunnel

BENCHMARK_MAIN();
