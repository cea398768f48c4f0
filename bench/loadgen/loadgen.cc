// apprelay-loadgen: end-to-end load generator for the user side of the relay.
//
//   --connect 127.0.0.1:PORT --sni web.contoso.test --ca ca.crt --streams N --concurrency C
//   --bytes B --mode echo [--threads T] [--half-close] [--timeout SECONDS] [--json]
//
// Each stream: TCP connect, TLS handshake (SNI + verification against --ca), send B bytes of the
// stream's pattern, read the echo back and compare it byte for byte, then close_notify + close.
// With --half-close the client sends close_notify right after its last byte and expects the full
// echo followed by the peer's close (clean end of both directions).
//
// Stream pattern: byte i of stream s is ((i + s) * 31 + 7) & 0xff, so bytes that land on the
// wrong stream or at the wrong offset are caught (period 256, shifted per stream).
//
// Each thread runs one epoll loop over nonblocking sockets and owns its streams and TLS sessions
// (tls::session on memory BIOs: this file moves ciphertext between the socket and the session).
// State per stream: connecting -> handshaking -> transferring -> done | failed.
#include "tls/context.hh"
#include "tls/session.hh"

#include <algorithm>
#include <arpa/inet.h>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <string>
#include <string_view>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using apprelay::errc;

constexpr std::size_t k_chunk = 16 * 1024;             // one TLS record of plaintext per write
constexpr std::size_t k_max_pending_out = 256 * 1024;  // stop encrypting while the socket lags
constexpr std::size_t k_max_buffered_in = 1024 * 1024; // stop reading the socket past this
constexpr std::size_t k_pattern_period = 256;
constexpr int k_max_events = 256;
constexpr int k_max_rounds = 64; // bound of the per-event drive loop

struct options {
    sockaddr_in addr{};
    std::string connect;
    std::string sni;
    std::string ca;
    uint64_t streams = 1;
    uint64_t concurrency = 1;
    uint64_t bytes = 64 * 1024;
    unsigned threads = 1;
    bool half_close = false;
    bool json = false;
    double timeout_s = 120; // whole run; a stream alone may not exceed it either
};

enum class state { connecting, handshaking, transferring, done, failed };

struct stream {
    uint64_t id = 0;
    int fd = -1;
    std::unique_ptr<apprelay::tls::session> tls;
    state st = state::connecting;
    uint64_t sent = 0;
    uint64_t received = 0;
    bool close_notify_sent = false;
    bool peer_closed = false; // close_notify or TCP EOF
    clock_type::time_point start;
    std::string why;
    uint32_t events = 0;
};

struct thread_result {
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t bytes_sent = 0;
    uint64_t bytes_received = 0;
    std::vector<double> durations_ms;
    std::vector<std::string> failures; // first few reasons
};

struct shared_state {
    std::mutex mu;
    std::vector<std::string> failures;
};

std::vector<uint8_t> make_pattern() {
    std::vector<uint8_t> p(k_chunk + k_pattern_period);
    for (std::size_t i = 0; i < p.size(); ++i) {
        p[i] = uint8_t((i * 31 + 7) & 0xff);
    }
    return p;
}

const std::vector<uint8_t> g_pattern = make_pattern();

const uint8_t* pattern_at(uint64_t stream_id, uint64_t offset) {
    return g_pattern.data() + ((offset + stream_id) % k_pattern_period);
}

class runner {
public:
    runner(const options& o, std::shared_ptr<apprelay::tls::client_context> ctx, uint64_t first,
           uint64_t count, uint64_t concurrency, clock_type::time_point deadline)
        : _o(o), _ctx(std::move(ctx)), _next_id(first), _end_id(first + count),
          _concurrency(std::max<uint64_t>(1, concurrency)), _deadline(deadline) {}

    thread_result run() {
        _ep = epoll_create1(EPOLL_CLOEXEC);
        std::array<epoll_event, k_max_events> evs;
        std::vector<uint8_t> rbuf(64 * 1024);
        _rbuf = rbuf.data();
        _rbuf_size = rbuf.size();
        while (true) {
            while (_active.size() < _concurrency && _next_id < _end_id) {
                start_stream(_next_id++);
            }
            if (_active.empty()) {
                break;
            }
            auto now = clock_type::now();
            if (now >= _deadline) {
                std::vector<int> fds;
                for (auto& [fd, s] : _active) {
                    fds.push_back(fd);
                }
                for (int fd : fds) {
                    auto& s = *_active[fd];
                    fail(s, "timed out after " + std::to_string(s.sent) + " bytes sent, " +
                                std::to_string(s.received) + " received");
                    finish(fd);
                }
                // Streams never started count as failed too.
                while (_next_id < _end_id) {
                    ++_next_id;
                    ++_res.failed;
                }
                break;
            }
            int n = epoll_wait(_ep, evs.data(), k_max_events, 100);
            for (int i = 0; i < n; ++i) {
                int fd = evs[i].data.fd;
                auto it = _active.find(fd);
                if (it == _active.end()) {
                    continue;
                }
                drive(*it->second, evs[i].events);
                auto st = it->second->st;
                if (st == state::done || st == state::failed) {
                    finish(fd);
                }
            }
        }
        ::close(_ep);
        return std::move(_res);
    }

private:
    void fail(stream& s, std::string why) {
        if (s.st != state::failed) {
            s.st = state::failed;
            s.why = "stream " + std::to_string(s.id) + ": " + why;
        }
    }

    void start_stream(uint64_t id) {
        auto s = std::make_unique<stream>();
        s->id = id;
        s->start = clock_type::now();
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            ++_res.failed;
            note_failure("stream " + std::to_string(id) + ": socket: " + std::strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s->fd = fd;
        int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&_o.addr), sizeof _o.addr);
        if (rc != 0 && errno != EINPROGRESS) {
            ++_res.failed;
            note_failure("stream " + std::to_string(id) + ": connect: " + std::strerror(errno));
            ::close(fd);
            return;
        }
        s->tls = _ctx->new_session();
        s->st = rc == 0 ? state::handshaking : state::connecting;
        s->events = EPOLLIN | EPOLLOUT;
        epoll_event e{};
        e.events = s->events;
        e.data.fd = fd;
        epoll_ctl(_ep, EPOLL_CTL_ADD, fd, &e);
        _active.emplace(fd, std::move(s));
    }

    void note_failure(std::string why) {
        if (_res.failures.size() < 5) {
            _res.failures.push_back(std::move(why));
        }
    }

    void finish(int fd) {
        auto it = _active.find(fd);
        stream& s = *it->second;
        _res.bytes_sent += s.sent;
        _res.bytes_received += s.received;
        if (s.st == state::done) {
            ++_res.ok;
            _res.durations_ms.push_back(
                std::chrono::duration<double, std::milli>(clock_type::now() - s.start).count());
        } else {
            ++_res.failed;
            note_failure(s.why);
        }
        epoll_ctl(_ep, EPOLL_CTL_DEL, fd, nullptr);
        if (s.st == state::failed) {
            // Abortive close: a failed stream must not look like a clean end to the relay.
            linger lg{1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        ::close(fd);
        _active.erase(it);
    }

    // Socket -> session. Returns false on a socket error (stream failed).
    bool pull(stream& s) {
        for (int r = 0; r < k_max_rounds && s.tls->buffered_input() < k_max_buffered_in; ++r) {
            ssize_t n = ::recv(s.fd, _rbuf, _rbuf_size, 0);
            if (n > 0) {
                s.tls->feed(std::span<const std::byte>(reinterpret_cast<std::byte*>(_rbuf),
                                                       std::size_t(n)));
                continue;
            }
            if (n == 0) {
                s.peer_closed = true;
                return true;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                return true;
            }
            fail(s, std::string("recv: ") + std::strerror(errno) + " after " +
                        std::to_string(s.received) + " of " + std::to_string(_o.bytes) +
                        " bytes echoed");
            return false;
        }
        return true;
    }

    // Session -> socket. Returns false on a socket error.
    bool flush(stream& s) {
        for (int r = 0; r < k_max_rounds && s.tls->pending_output_size() > 0; ++r) {
            auto out = s.tls->pending_output();
            ssize_t n = ::send(s.fd, out.data(), out.size(), MSG_NOSIGNAL);
            if (n > 0) {
                s.tls->consume_output(std::size_t(n));
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                return true;
            }
            fail(s, std::string("send: ") + std::strerror(errno));
            return false;
        }
        return true;
    }

    // Decrypt and verify the echo. Returns false when the stream ended (done or failed).
    bool read_plain(stream& s) {
        std::array<std::byte, k_chunk> buf;
        for (int r = 0; r < k_max_rounds; ++r) {
            auto res = s.tls->read(buf);
            if (!res) {
                if (res.code() == errc::again) {
                    return true;
                }
                if (res.code() == errc::closed) {
                    s.peer_closed = true;
                    return true;
                }
                fail(s, "TLS read failed: " + s.tls->last_error());
                return false;
            }
            std::size_t n = *res;
            if (s.received + n > _o.bytes) {
                fail(s, "received " + std::to_string(s.received + n) + " bytes, more than the " +
                            std::to_string(_o.bytes) + " sent");
                return false;
            }
            std::size_t off = 0;
            while (off < n) {
                std::size_t len = std::min(n - off, k_chunk);
                if (std::memcmp(buf.data() + off, pattern_at(s.id, s.received + off), len) != 0) {
                    std::size_t bad = 0;
                    while (bad < len &&
                           uint8_t(buf[off + bad]) == pattern_at(s.id, s.received + off)[bad]) {
                        ++bad;
                    }
                    fail(s, "echo mismatch at byte " + std::to_string(s.received + off + bad));
                    return false;
                }
                off += len;
            }
            s.received += n;
        }
        return true;
    }

    void write_plain(stream& s) {
        for (int r = 0; r < k_max_rounds && s.sent < _o.bytes &&
                        s.tls->pending_output_size() < k_max_pending_out;
             ++r) {
            std::size_t len = std::size_t(std::min<uint64_t>(k_chunk, _o.bytes - s.sent));
            auto res = s.tls->write(std::span<const std::byte>(
                reinterpret_cast<const std::byte*>(pattern_at(s.id, s.sent)), len));
            if (!res) {
                fail(s, "TLS write failed: " + s.tls->last_error());
                return;
            }
            s.sent += len;
        }
        if (_o.half_close && s.sent == _o.bytes && !s.close_notify_sent) {
            s.tls->shutdown();
            s.close_notify_sent = true;
        }
    }

    void drive(stream& s, uint32_t ev) {
        if (s.st == state::connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                fail(s, std::string("connect: ") + std::strerror(err));
                return;
            }
            if (!(ev & (EPOLLOUT | EPOLLIN | EPOLLHUP))) {
                return;
            }
            s.st = state::handshaking;
        }
        for (int round = 0; round < k_max_rounds; ++round) {
            uint64_t before = s.sent + s.received;
            std::size_t out_before = s.tls->pending_output_size();
            if (!pull(s)) {
                return;
            }
            if (s.st == state::handshaking) {
                auto hs = s.tls->handshake();
                if (!hs && hs.code() != errc::again) {
                    flush(s);
                    fail(s, std::string("TLS handshake failed (") +
                                std::string(apprelay::name_of(hs.code())) +
                                "): " + s.tls->last_error());
                    return;
                }
                if (hs) {
                    s.st = state::transferring;
                }
            }
            if (s.st == state::transferring) {
                if (!read_plain(s)) {
                    return;
                }
                write_plain(s);
                if (s.st == state::failed) {
                    return;
                }
            }
            if (!flush(s)) {
                return;
            }
            if (s.st == state::transferring && s.sent == _o.bytes && s.received == _o.bytes) {
                if (!_o.half_close) {
                    s.tls->shutdown();
                    flush(s);
                    s.st = state::done;
                    return;
                }
                if (s.peer_closed) {
                    s.st = state::done;
                    return;
                }
            }
            if (s.peer_closed && s.tls->buffered_input() == 0) {
                if (s.st == state::handshaking) {
                    fail(s, "connection closed during the TLS handshake: " + s.tls->last_error());
                } else {
                    fail(s, "connection closed after " + std::to_string(s.received) + " of " +
                                std::to_string(_o.bytes) + " bytes echoed");
                }
                return;
            }
            bool progress =
                s.sent + s.received != before || s.tls->pending_output_size() != out_before;
            if (!progress) {
                break;
            }
        }
        uint32_t want = EPOLLIN;
        if (s.tls->pending_output_size() > 0) {
            want |= EPOLLOUT;
        }
        if (want != s.events) {
            epoll_event e{};
            e.events = want;
            e.data.fd = s.fd;
            epoll_ctl(_ep, EPOLL_CTL_MOD, s.fd, &e);
            s.events = want;
        }
    }

    const options& _o;
    std::shared_ptr<apprelay::tls::client_context> _ctx;
    uint64_t _next_id;
    uint64_t _end_id;
    uint64_t _concurrency;
    clock_type::time_point _deadline;
    int _ep = -1;
    uint8_t* _rbuf = nullptr;
    std::size_t _rbuf_size = 0;
    std::unordered_map<int, std::unique_ptr<stream>> _active;
    thread_result _res;
};

int usage(const char* why) {
    std::fprintf(stderr,
                 "apprelay-loadgen: %s\n"
                 "usage: apprelay-loadgen --connect HOST:PORT --sni NAME --ca CA.pem "
                 "--streams N --concurrency C --bytes B --mode echo [--threads T] "
                 "[--half-close] [--timeout SECONDS] [--json]\n",
                 why);
    return 2;
}

bool parse_u64(const char* s, uint64_t& out) {
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        return false;
    }
    out = v;
    return true;
}

double percentile(std::vector<double>& v, double p) {
    if (v.empty()) {
        return 0;
    }
    std::size_t i = std::min(v.size() - 1, std::size_t(p * double(v.size() - 1) + 0.5));
    return v[i];
}

} // namespace

int main(int argc, char** argv) {
    options o;
    std::string mode = "echo";
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        uint64_t n = 0;
        if (a == "--json") {
            o.json = true;
        } else if (a == "--half-close") {
            o.half_close = true;
        } else if (a == "--connect" && (v = next())) {
            o.connect = v;
        } else if (a == "--sni" && (v = next())) {
            o.sni = v;
        } else if (a == "--ca" && (v = next())) {
            o.ca = v;
        } else if (a == "--mode" && (v = next())) {
            mode = v;
        } else if (a == "--streams" && (v = next()) && parse_u64(v, n)) {
            o.streams = n;
        } else if (a == "--concurrency" && (v = next()) && parse_u64(v, n) && n > 0) {
            o.concurrency = n;
        } else if (a == "--bytes" && (v = next()) && parse_u64(v, n)) {
            o.bytes = n;
        } else if (a == "--threads" && (v = next()) && parse_u64(v, n) && n > 0 && n <= 64) {
            o.threads = unsigned(n);
        } else if (a == "--timeout" && (v = next()) && parse_u64(v, n) && n > 0) {
            o.timeout_s = double(n);
        } else {
            return usage(("bad argument " + std::string(a)).c_str());
        }
    }
    if (mode != "echo") {
        return usage("only --mode echo is supported");
    }
    if (o.connect.empty() || o.sni.empty()) {
        return usage("--connect and --sni are required");
    }
    auto colon = o.connect.rfind(':');
    o.addr.sin_family = AF_INET;
    if (colon == std::string::npos ||
        inet_pton(AF_INET, o.connect.substr(0, colon).c_str(), &o.addr.sin_addr) != 1) {
        return usage("bad --connect address");
    }
    o.addr.sin_port = htons(uint16_t(std::atoi(o.connect.c_str() + colon + 1)));
    signal(SIGPIPE, SIG_IGN);

    apprelay::tls::client_options copts;
    copts.ca_pem_path = o.ca;
    copts.server_name = o.sni;
    std::string why;
    auto ctx = apprelay::tls::client_context::create(copts, &why);
    if (!ctx) {
        std::fprintf(stderr, "apprelay-loadgen: cannot create TLS context: %s\n", why.c_str());
        return 2;
    }

    unsigned threads = unsigned(std::min<uint64_t>(o.threads, std::max<uint64_t>(1, o.streams)));
    auto t0 = clock_type::now();
    auto deadline = t0 + std::chrono::duration_cast<clock_type::duration>(
                             std::chrono::duration<double>(o.timeout_s));
    std::vector<thread_result> results(threads);
    std::vector<std::thread> ts;
    uint64_t first = 0;
    for (unsigned t = 0; t < threads; ++t) {
        uint64_t count = o.streams / threads + (t < o.streams % threads ? 1 : 0);
        uint64_t conc = o.concurrency / threads + (t < o.concurrency % threads ? 1 : 0);
        ts.emplace_back([&, t, first, count, conc] {
            runner r(o, *ctx, first, count, conc, deadline);
            results[t] = r.run();
        });
        first += count;
    }
    for (auto& t : ts) {
        t.join();
    }
    double secs = std::chrono::duration<double>(clock_type::now() - t0).count();

    thread_result total;
    for (auto& r : results) {
        total.ok += r.ok;
        total.failed += r.failed;
        total.bytes_sent += r.bytes_sent;
        total.bytes_received += r.bytes_received;
        total.durations_ms.insert(total.durations_ms.end(), r.durations_ms.begin(),
                                  r.durations_ms.end());
        for (auto& f : r.failures) {
            if (total.failures.size() < 10) {
                total.failures.push_back(f);
            }
        }
    }
    std::sort(total.durations_ms.begin(), total.durations_ms.end());
    double moved = double(total.bytes_sent + total.bytes_received);
    double mbps = secs > 0 ? moved / secs / 1e6 : 0;
    double gbps = secs > 0 ? moved * 8 / secs / 1e9 : 0;
    double sps = secs > 0 ? double(total.ok) / secs : 0;
    double p50 = percentile(total.durations_ms, 0.50);
    double p99 = percentile(total.durations_ms, 0.99);

    for (auto& f : total.failures) {
        std::fprintf(stderr, "apprelay-loadgen: failed %s\n", f.c_str());
    }
    std::printf("apprelay-loadgen  %s  sni=%s  mode=echo  bytes/stream=%llu  concurrency=%llu  "
                "threads=%u%s\n",
                o.connect.c_str(), o.sni.c_str(), (unsigned long long)o.bytes,
                (unsigned long long)o.concurrency, threads, o.half_close ? "  half-close" : "");
    std::printf("  %-22s %llu\n", "streams ok", (unsigned long long)total.ok);
    std::printf("  %-22s %llu\n", "streams failed", (unsigned long long)total.failed);
    std::printf("  %-22s %llu (sent %llu, received %llu)\n", "bytes moved",
                (unsigned long long)(total.bytes_sent + total.bytes_received),
                (unsigned long long)total.bytes_sent, (unsigned long long)total.bytes_received);
    std::printf("  %-22s %.3f\n", "seconds", secs);
    std::printf("  %-22s %.1f\n", "MB/s (both ways)", mbps);
    std::printf("  %-22s %.3f\n", "Gbit/s (both ways)", gbps);
    std::printf("  %-22s %.1f\n", "streams/s", sps);
    std::printf("  %-22s %.2f / %.2f\n", "stream ms p50 / p99", p50, p99);
    if (o.json) {
        std::printf("{\"streams\":%llu,\"ok\":%llu,\"failed\":%llu,\"bytes_per_stream\":%llu,"
                    "\"bytes_sent\":%llu,\"bytes_received\":%llu,\"seconds\":%.6f,"
                    "\"mb_per_s\":%.3f,\"gbit_per_s\":%.4f,\"streams_per_s\":%.2f,"
                    "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"concurrency\":%llu,\"threads\":%u}\n",
                    (unsigned long long)o.streams, (unsigned long long)total.ok,
                    (unsigned long long)total.failed, (unsigned long long)o.bytes,
                    (unsigned long long)total.bytes_sent, (unsigned long long)total.bytes_received,
                    secs, mbps, gbps, sps, p50, p99, (unsigned long long)o.concurrency, threads);
    }
    std::fflush(stdout);
    return total.failed == 0 && total.ok == o.streams ? 0 : 1;
}
