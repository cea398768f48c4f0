// Micro-benchmarks for the tunnel frame codec and stream mux (dataplane/tunnel/).
// Frame benchmarks report ns/frame (time per iteration, or items/s) and GB/s of payload
// (bytes_per_second, from SetBytesProcessed).
//   data_encode/<payload>: encode_data_header + payload copy into a send buffer, one frame.
//   data_decode/<payload>: frame_decoder feed/next over one encoded frame (zero-copy path).
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
//   stream_open_roundtrip: the part of routing a new stream that lives outside the relay worker:
//     SNI -> app lookup in a published snapshot, relay mux open() (OPEN frame), connector mux
//     receive + open_ack + FIN, relay receive (OPEN_ACK, FIN) + FIN back, until both muxes have
//     forgotten the stream. The worker's group -> tunnel pick (worker::pick_tunnel) is private to
//     dataplane/relay and not measured here. The mux clock advances 10 ms per iteration so the
//     open/reset token bucket never throttles the loop.
// Run with --benchmark_repetitions=10 --benchmark_report_aggregates_only=true for medians.
#include "dataplane/relay/snapshot.hh"
#include "dataplane/tunnel/frame.hh"
#include "dataplane/tunnel/mux.hh"

#include <benchmark/benchmark.h>
#include <cstring>
#include <string>
#include <vector>

namespace apprelay::tunnel {
namespace {

// 32 frames per read burst, as the io loop receives at most 32 completions per pass.
constexpr std::size_t k_burst = 32;
constexpr std::size_t k_read_chunk = 4096;

void data_encode(benchmark::State& state) {
    const auto payload_size = static_cast<uint32_t>(state.range(0));
    std::vector<std::byte> payload(payload_size, std::byte{0x5a});
    std::vector<std::byte> wire(k_header_size + payload_size);
    for (auto _ : state) {
        std::size_t n = encode_data_header(wire, 1, payload_size);
        std::memcpy(wire.data() + n, payload.data(), payload_size);
        benchmark::DoNotOptimize(wire.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * payload_size);
    state.SetItemsProcessed(int64_t(state.iterations()));
}

void data_decode(benchmark::State& state) {
    const auto payload_size = static_cast<uint32_t>(state.range(0));
    std::vector<std::byte> wire(k_header_size + payload_size, std::byte{0x5a});
    encode_data_header(wire, 1, payload_size);
    frame_decoder dec(k_default_max_frame);
    for (auto _ : state) {
        dec.feed(wire);
        auto f = dec.next();
        if (!f.ok() || f->payload.size() != payload_size) {
            state.SkipWithError("decoder did not return the frame");
            break;
        }
        benchmark::DoNotOptimize(f->payload.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * payload_size);
    state.SetItemsProcessed(int64_t(state.iterations()));
}

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

struct open_owner : mux_handler {
    mux* m = nullptr;
    bool connector = false;
    uint64_t acks = 0;
    void on_open(uint32_t sid, std::string_view, std::string_view) override {
        m->open_ack(sid);
        m->finish(sid);
    }
    void on_open_ack(uint32_t) override { ++acks; }
    void on_data(uint32_t, std::span<const std::byte>) override {}
    void on_fin(uint32_t sid) override {
        if (!connector) {
            m->finish(sid);
        }
    }
    void on_reset(uint32_t, reason, std::string_view) override {}
    std::size_t pull(uint32_t, std::span<std::byte>) override { return 0; }
};

void stream_open_roundtrip(benchmark::State& state) {
    relay::snapshot snap;
    // A snapshot with a realistic number of apps, so the lookup is not a one-entry table.
    constexpr int k_apps = 1000;
    for (int i = 0; i < k_apps; ++i) {
        relay::app_entry a;
        a.name = "app" + std::to_string(i);
        a.hostname = a.name + ".contoso.test";
        a.backend = "10.0.0.1:443";
        snap.app_by_hostname.emplace(a.hostname, uint32_t(snap.apps.size()));
        snap.apps.push_back(std::move(a));
    }
    const std::string sni = "app500.contoso.test";
    mux_limits l;
    open_owner rh;
    open_owner ch;
    ch.connector = true;
    mux relay(role::relay, l, rh);
    mux conn(role::connector, l, ch);
    rh.m = &relay;
    ch.m = &conn;
    uint64_t now = 1'000'000'000;
    constexpr uint64_t k_tick_ns = 10'000'000;
    std::vector<std::byte> wire(4096);
    for (auto _ : state) {
        now += k_tick_ns;
        auto it = snap.app_by_hostname.find(sni);
        const auto& app = snap.apps[it->second];
        auto sid = relay.open(app.name, app.backend, now);
        if (!sid.ok()) {
            state.SkipWithError("open refused");
            break;
        }
        // relay -> connector (OPEN), connector -> relay (OPEN_ACK, FIN), relay -> connector (FIN).
        bool ok = conn.receive(std::span(wire.data(), relay.produce(wire)), now).ok() &&
                  relay.receive(std::span(wire.data(), conn.produce(wire)), now).ok() &&
                  conn.receive(std::span(wire.data(), relay.produce(wire)), now).ok();
        if (!ok || relay.stream_count() != 0 || conn.stream_count() != 0) {
            state.SkipWithError("stream did not open and close cleanly");
            break;
        }
    }
    state.SetItemsProcessed(int64_t(rh.acks));
}

BENCHMARK(data_encode)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(data_decode)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(data_encode_decode)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(data_decode_split)->Arg(1024)->Arg(16 * 1024);
BENCHMARK(mux_pair_throughput)->ArgsProduct({{1, 16, 256}, {1024, 16 * 1024}});
BENCHMARK(stream_open_roundtrip);

} // namespace
} // namespace apprelay::tunnel

BENCHMARK_MAIN();
