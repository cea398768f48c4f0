// tls_session_mem: heap bytes one idle server-side TLS session holds inside OpenSSL, built with
// the relay's own user-listener settings (tls::server_context: TLS 1.3, ECDSA P-256 leaf, SNI
// table, SSL_MODE_RELEASE_BUFFERS, no tickets).
//
// Issue 5's memory target is "relay memory per idle stream <= 4 KiB beyond the user's TLS
// session"; bench/run measures the relay's RSS per idle stream and subtracts this figure.
//
// Method: every OpenSSL allocation goes through CRYPTO_set_mem_functions hooks that keep the live
// total as malloc sees it (malloc_usable_size + the 8-byte chunk header). N client/server pairs
// handshake and exchange 16 bytes each way (what the idle scenario does); the client sessions are
// freed; the live total is read; the server sessions are freed; the difference / N is the figure.
// Deterministic for a given OpenSSL build (no timing involved).
//
//   build/bench/micro/tls/tls_session_mem [--sessions N] [--json]
#include "bench/micro/tls/tls_pair.hh"
#include "tls/ca.hh"
#include "tls/context.hh"
#include "tls/session.hh"

#include <malloc.h>
#include <openssl/crypto.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace apprelay;

std::atomic<long long> g_live{0};
std::atomic<long long> g_count{0};
// --detail: live allocations by pointer with OpenSSL's file:line (single-threaded tool).
struct site {
    long long bytes;
    const char* file;
    int line;
};
std::map<void*, site>* g_sites = nullptr;
constexpr long long k_chunk_header = 8; // glibc: size field before every chunk

long long charge(void* p) {
    return p == nullptr ? 0 : static_cast<long long>(malloc_usable_size(p)) + k_chunk_header;
}

void* hook_malloc(size_t n, const char* file, int line) {
    void* p = std::malloc(n);
    g_live += charge(p);
    g_count += p != nullptr;
    if (g_sites != nullptr && p != nullptr) {
        (*g_sites)[p] = site{charge(p), file, line};
    }
    return p;
}

void* hook_realloc(void* old, size_t n, const char* file, int line) {
    long long before = charge(old);
    void* p = std::realloc(old, n);
    if (p != nullptr || n == 0) {
        g_live += charge(p) - before;
        g_count += (p != nullptr) - (old != nullptr);
        if (g_sites != nullptr) {
            g_sites->erase(old);
            if (p != nullptr) {
                (*g_sites)[p] = site{charge(p), file, line};
            }
        }
    }
    return p;
}

void hook_free(void* p, const char*, int) {
    g_live -= charge(p);
    g_count -= p != nullptr;
    if (g_sites != nullptr) {
        g_sites->erase(p);
    }
    std::free(p);
}

using apprelay::bench::connect;
using apprelay::bench::transfer;

// 16 bytes each way, read fully on the other side (the idle scenario's one exchange).
bool exchange(tls::session& a, tls::session& b) {
    std::byte msg[16];
    std::memset(msg, 0x5a, sizeof msg);
    std::byte got[64];
    if (!a.write(msg).ok()) {
        return false;
    }
    transfer(a, b);
    auto r = b.read(got);
    return r.ok() && *r == sizeof msg;
}

int usage() {
    std::fprintf(stderr,
                 "usage: tls_session_mem [--sessions N (1..100000)] [--json] [--detail]\n");
    return 2;
}

} // namespace

int main(int argc, char** argv) {
    // Before any other OpenSSL call, or the hooks are refused.
    if (CRYPTO_set_mem_functions(hook_malloc, hook_realloc, hook_free) != 1) {
        std::fprintf(stderr, "tls_session_mem: cannot install OpenSSL memory hooks\n");
        return 1;
    }
    long sessions = 500;
    bool json = false;
    bool detail = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--json") {
            json = true;
        } else if (a == "--detail") {
            detail = true;
        } else if (a == "--sessions" && i + 1 < argc) {
            char* end = nullptr;
            sessions = std::strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || sessions < 1 || sessions > 100000) {
                return usage();
            }
        } else {
            return usage();
        }
    }

    char tmpl[] = "/tmp/apprelay_tls_mem.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
        std::perror("tls_session_mem: mkdtemp");
        return 1;
    }
    std::string dir = tmpl;
    struct cleanup {
        std::string d;
        ~cleanup() { std::filesystem::remove_all(d); }
    } cleanup_dir{dir};

    std::string why;
    auto ca = tls::make_ca("mem-ca", 2, &why);
    if (!ca.ok()) {
        std::fprintf(stderr, "tls_session_mem: %s\n", why.c_str());
        return 1;
    }
    tls::leaf_options lo;
    lo.common_name = "web.contoso.test";
    lo.dns_names = {"web.contoso.test"};
    auto leaf = tls::issue_leaf(*ca, lo, &why);
    if (!leaf.ok() || !tls::write_pem_file(dir + "/ca.crt", ca->cert_pem, false, &why).ok() ||
        !tls::write_pem_file(dir + "/web.crt", leaf->cert_pem, false, &why).ok() ||
        !tls::write_pem_file(dir + "/web.key", leaf->key_pem, true, &why).ok()) {
        std::fprintf(stderr, "tls_session_mem: %s\n", why.c_str());
        return 1;
    }
    // The relay's user listener: an SNI table, unknown names refused, no tickets.
    tls::server_options so;
    so.default_cert = {dir + "/web.crt", dir + "/web.key"};
    so.sni.push_back({"web.contoso.test", {dir + "/web.crt", dir + "/web.key"}, 0});
    so.unknown_sni_fails = true;
    auto server = tls::server_context::create(so, &why);
    tls::client_options co;
    co.ca_pem_path = dir + "/ca.crt";
    co.server_name = "web.contoso.test";
    auto client = tls::client_context::create(co, &why);
    if (!server.ok() || !client.ok()) {
        std::fprintf(stderr, "tls_session_mem: %s\n", why.c_str());
        return 1;
    }

    std::vector<std::unique_ptr<tls::session>> servers;
    std::vector<std::unique_ptr<tls::session>> clients;
    servers.reserve(std::size_t(sessions));
    clients.reserve(std::size_t(sessions));
    std::map<void*, site> sites;
    for (long i = 0; i < sessions; ++i) {
        if (detail && i == sessions - 1) {
            g_sites = &sites; // the last pair's allocations, by call site
        }
        clients.push_back((*client)->new_session());
        servers.push_back((*server)->new_session());
        if (!connect(*clients.back(), *servers.back()) ||
            !exchange(*clients.back(), *servers.back()) ||
            !exchange(*servers.back(), *clients.back())) {
            std::fprintf(stderr, "tls_session_mem: handshake or exchange %ld failed\n", i);
            return 1;
        }
    }
    clients.clear();
    g_sites = nullptr;
    if (detail) { // what the last server session still holds, by call site
        std::map<std::string, std::pair<long long, int>> by_site;
        for (const auto& [p, st] : sites) {
            auto& e = by_site[std::string(st.file ? st.file : "?") + ":" + std::to_string(st.line)];
            e.first += st.bytes;
            e.second += 1;
        }
        for (const auto& [where, e] : by_site) {
            std::printf("%6lld bytes %3d allocs  %s\n", e.first, e.second, where.c_str());
        }
    }
    long long live_with = g_live.load();
    long long count_with = g_count.load();
    servers.clear();
    long long per_session = (live_with - g_live.load()) / sessions;
    long long allocs = (count_with - g_count.load()) / sessions;
    if (per_session <= 0) {
        std::fprintf(stderr, "tls_session_mem: no allocation seen (hooks not in effect?)\n");
        return 1;
    }
    if (json) {
        std::printf("{\"sessions\": %ld, \"bytes_per_session\": %lld, "
                    "\"allocations_per_session\": %lld}\n",
                    sessions, per_session, allocs);
    } else {
        std::printf("idle server TLS session (OpenSSL heap, %ld sessions): %lld bytes in %lld "
                    "allocations each\n",
                    sessions, per_session, allocs);
    }
    return 0;
}
