// tls/ micro benchmarks, one core, everything in memory:
//   tls_seal_open/16384   one 16 KiB record: client write (seal) -> server read (open)
//   tls_seal_open/65536   one 64 KiB write (4 records), as the tunnel pump writes a burst
//   evp_aes128gcm/16384   the same bytes through raw EVP AES-128-GCM seal + open (the floor)
//   tls_handshake         full TLS 1.3 handshake with certificate verification, handshakes/s
//   tls_server_handshake/0  the server's share of it only (manual timing around the server's
//                         calls): default certificate
//   tls_server_handshake/1  ... with the relay's user-listener SNI table (unknown names refused,
//                         the app's certificate picked in the servername callback)
//   tls_session_new       creating and freeing one server session (SSL_new + BIOs + SSL_free)
// The gap between tls_seal_open/16384 and evp_aes128gcm is the per-record overhead of SSL and the
// session's BIOs.
// Run: build/bench/micro/tls/tls_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only
#include "bench/micro/tls/tls_pair.hh"
#include "tls/ca.hh"
#include "tls/context.hh"
#include "tls/session.hh"

#include <benchmark/benchmark.h>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <openssl/evp.h>
#include <string>
#include <vector>

namespace {

using namespace apprelay;
using namespace apprelay::tls;

// TLS 1.3 maximum plaintext per record (RFC 8446 section 5.1).
constexpr std::size_t k_record = 16384;

struct bench_pki {
    std::string dir;
    std::shared_ptr<server_context> server;
    std::shared_ptr<server_context> sni_server; // the relay's user listener shape
    std::shared_ptr<client_context> client;

    bench_pki() {
        char tmpl[] = "/tmp/apprelay_tls_bench.XXXXXX";
        dir = ::mkdtemp(tmpl);
        std::string why;
        auto ca = make_ca("bench-ca", 2, &why);
        leaf_options lo;
        lo.common_name = "relay.bench";
        lo.dns_names = {"relay.bench"};
        auto leaf = issue_leaf(*ca, lo, &why);
        (void)write_pem_file(dir + "/ca.crt", ca->cert_pem, false, &why);
        (void)write_pem_file(dir + "/relay.crt", leaf->cert_pem, false, &why);
        (void)write_pem_file(dir + "/relay.key", leaf->key_pem, true, &why);
        server_options so;
        so.default_cert = {dir + "/relay.crt", dir + "/relay.key"};
        server = *server_context::create(so, &why);
        server_options uo;
        uo.default_cert = so.default_cert;
        uo.sni.push_back({"relay.bench", so.default_cert, 0});
        uo.unknown_sni_fails = true;
        sni_server = *server_context::create(uo, &why);
        client_options co;
        co.ca_pem_path = dir + "/ca.crt";
        co.server_name = "relay.bench";
        client = *client_context::create(co, &why);
    }
    ~bench_pki() { std::filesystem::remove_all(dir); }
};

bench_pki& pki() {
    static bench_pki p;
    return p;
}

using apprelay::bench::connect;
using apprelay::bench::transfer;

void tls_seal_open(benchmark::State& state) {
    auto client = pki().client->new_session();
    auto server = pki().server->new_session();
    if (!connect(*client, *server)) {
        state.SkipWithError("handshake failed");
        return;
    }
    const auto size = static_cast<std::size_t>(state.range(0));
    std::vector<std::byte> in(size, std::byte{0x5a});
    std::vector<std::byte> out(size);
    for (auto _ : state) {
        (void)client->write(in);
        transfer(*client, *server);
        std::size_t got = 0;
        while (got < size) {
            auto r = server->read(std::span(out).subspan(got));
            if (!r.ok()) {
                state.SkipWithError("read failed");
                return;
            }
            got += *r;
        }
        benchmark::DoNotOptimize(out.data());
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(size));
}
BENCHMARK(tls_seal_open)->Arg(k_record)->Arg(4 * k_record);

void evp_aes128gcm(benchmark::State& state) {
    const auto size = static_cast<std::size_t>(state.range(0));
    unsigned char key[16] = {1};
    unsigned char iv[12] = {2};
    unsigned char tag[16];
    std::vector<unsigned char> plain(size, 0x5a);
    std::vector<unsigned char> sealed(size);
    std::vector<unsigned char> opened(size);
    EVP_CIPHER_CTX* enc = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX* dec = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(enc, EVP_aes_128_gcm(), nullptr, key, nullptr);
    EVP_DecryptInit_ex(dec, EVP_aes_128_gcm(), nullptr, key, nullptr);
    uint64_t seq = 0;
    for (auto _ : state) {
        // Per-record nonce as in TLS 1.3: IV xor sequence number.
        ++seq;
        std::memcpy(iv + 4, &seq, sizeof seq);
        int len = 0;
        EVP_EncryptInit_ex(enc, nullptr, nullptr, nullptr, iv);
        EVP_EncryptUpdate(enc, sealed.data(), &len, plain.data(), static_cast<int>(size));
        EVP_EncryptFinal_ex(enc, sealed.data() + len, &len);
        EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_GCM_GET_TAG, sizeof tag, tag);
        EVP_DecryptInit_ex(dec, nullptr, nullptr, nullptr, iv);
        EVP_DecryptUpdate(dec, opened.data(), &len, sealed.data(), static_cast<int>(size));
        EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_GCM_SET_TAG, sizeof tag, tag);
        if (EVP_DecryptFinal_ex(dec, opened.data() + len, &len) != 1) {
            state.SkipWithError("tag mismatch");
            break;
        }
        benchmark::DoNotOptimize(opened.data());
    }
    EVP_CIPHER_CTX_free(enc);
    EVP_CIPHER_CTX_free(dec);
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(size));
}
BENCHMARK(evp_aes128gcm)->Arg(k_record);

void tls_handshake(benchmark::State& state) {
    for (auto _ : state) {
        auto client = pki().client->new_session();
        auto server = pki().server->new_session();
        if (!connect(*client, *server)) {
            state.SkipWithError("handshake failed");
            return;
        }
    }
    state.counters["handshakes/s"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(tls_handshake)->Unit(benchmark::kMicrosecond);

void tls_server_handshake(benchmark::State& state) {
    const auto& ctx = state.range(0) == 0 ? pki().server : pki().sni_server;
    for (auto _ : state) {
        auto client = pki().client->new_session();
        double server_s = 0;
        auto t0 = std::chrono::steady_clock::now();
        auto server = ctx->new_session();
        server_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!connect(*client, *server, &server_s)) {
            state.SkipWithError("handshake failed");
            return;
        }
        t0 = std::chrono::steady_clock::now();
        server.reset();
        server_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        state.SetIterationTime(server_s);
    }
}
BENCHMARK(tls_server_handshake)->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond);

// SSL_new + SSL_free of a server session (part of every user connection's cost).
void tls_session_new(benchmark::State& state) {
    for (auto _ : state) {
        auto s = pki().sni_server->new_session();
        benchmark::DoNotOptimize(s.get());
    }
}
BENCHMARK(tls_session_new)->Unit(benchmark::kMicrosecond);

} // namespace
BENCHMARK_MAIN();
