// apprelay-loadgen: end-to-end load generator for the user side of the relay (or any TLS
// endpoint in front of an echo backend, e.g. the HAProxy peer in bench/peers/).
//
//   --connect 127.0.0.1:PORT --sni web.contoso.test --ca ca.crt --streams N --concurrency C
//   --bytes B [--mode echo|rr|idle|probe] [--duration SECONDS] [--threads T] [--half-close]
//   [--timeout SECONDS] [--rate STREAMS_PER_S] [--request-rate REQUESTS_PER_S]
//   [--abort-after BYTES] [--json]
//
// --abort-after (echo only) is a user who gives up mid-response: once BYTES of the echo are in
// (verified), the stream is closed with a TCP reset (SO_LINGER 0, no close_notify) while the
// rest of the echo is still coming. Such a stream counts as ok ("aborted" in the JSON).
//
// --rate paces new streams (all threads together); without it streams start as fast as the
// concurrency allows.
// --request-rate (rr only) paces requests instead of sending the next one as soon as the echo is
// back: each stream gets an even share of the rate and a fixed schedule (request k is due at
// first + k * streams / rate). A request is sent when due or, if the stream is behind schedule,
// at once; its latency is measured from when it was due, so queueing behind a slow peer counts
// (no coordinated omission). This is how p99 at a given load (half of the peak) is measured.
//
// Modes (each stream is one TCP connection with a full TLS handshake, SNI + verification
// against --ca, no resumption):
//   echo  send B bytes of the stream's pattern, read the echo back and compare it byte for byte,
//         then close_notify + close. With --half-close the client sends close_notify right after
//         its last byte and expects the full echo followed by the peer's close. The latency
//         recorded is the whole stream (connect + handshake + echo): with B = 1 KiB this is the
//         "new user session" scenario, with large B the bulk scenario.
//   rr    request/response: C streams stay open; each sends a B-byte request, waits for the
//         B-byte echo, records that round trip, and repeats until --duration has passed.
//   idle  open C streams, echo B bytes once on each (so the stream reached the backend), then
//         hold them open: print one JSON line {"event":"idle_ready",...} and wait until stdin
//         reaches EOF (or --duration passes); then close them all cleanly.
//   probe failover probe: print {"event":"probe_ready"}, wait for a line (or EOF) on stdin -- the
//         caller kills a connector right before it writes that line -- then open single echo
//         streams of B bytes one after the other (each bounded by k_probe_attempt_s) until one
//         succeeds or --timeout passes; report the seconds from the line to that success.
// Latencies go into an HDR-style log-bucketed histogram (histogram.hh): p50/p99/p99.9.
//
// Stream pattern: byte i of stream s is ((i + s) * 31 + 7) & 0xff, so bytes that land on the
// wrong stream or at the wrong offset are caught (period 256, shifted per stream). In rr mode
// the offset keeps counting across requests.
//
// Each thread runs one io_uring loop (apprelay::io::uring_loop, created on that thread) and owns
// its streams and TLS sessions (tls::session on memory BIOs: this file moves ciphertext between
// the loop and the session). The runner is the loop's sink: a completion feeds received bytes to
// the session and marks the stream dirty; after each run_once the dirty streams are driven, so
// one pass handles all of a stream's completions and submits its next operations at once. At most
// one send is in flight per socket, straight from the session's output (it stays in place until
// consumed). A stream that is done is closed only once its close_notify is out.
// Measured against the epoll loop it replaced (bench/run pinning, 2 shared cores, median of 5):
// loadgen cpu +6% for 1 bulk stream (128 MiB) and +9% for 64 (2 MiB each) at the same rates,
// -6% for sessions, -23% for rr_64 (whose rate rose 20%: the loadgen shares a core with the
// connectors).
// State per stream: connecting -> handshaking -> transferring [-> holding] -> done | failed.
#include "bench/loadgen/histogram.hh"
#include "dataplane/io/uring/loop.hh"
#include "tls/context.hh"
#include "tls/session.hh"

#include <algorithm>
#include <arpa/inet.h>
#include <array>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using apprelay::errc;
using apprelay::bench::latency_histogram;
using apprelay::io::conn_id;

constexpr std::size_t k_chunk = 16 * 1024;             // one TLS record of plaintext per write
constexpr std::size_t k_max_pending_out = 256 * 1024;  // stop encrypting while the socket lags
constexpr std::size_t k_max_buffered_in = 1024 * 1024; // pause the socket's receive past this
constexpr std::size_t k_pattern_period = 256;
constexpr int k_max_rounds = 64;  // bound of the per-stream drive loop
constexpr int k_max_wait_ms = 50; // how late a thread may notice the deadline or a release
constexpr int k_pace_wait_ms = 2; // --rate: stream starts come in steps of at most this
constexpr double k_pace_burst_s = 0.05;
// A probe stream routed to a connector that is dead but not yet detected may hang; give up on it
// well before the relay's 3 s ping timeout would retry it, and try a new stream.
constexpr double k_probe_attempt_s = 1.0;
// At the end of a run, closed sockets finish closing in the loop (their cancels complete, then
// the fd is closed, with an RST for a failed stream) before it is destroyed; bounded.
constexpr auto k_close_wait = std::chrono::seconds(1);
constexpr uint64_t k_close_poll_ns = 10'000'000;
// One loop per thread. SQ 4096 / CQ 8192: releasing 8,000 held idle streams queues a send each
// in one pass (a full SQ is submitted early). Receive buffers of one TLS record, 512 of them
// (8 MiB per thread): a buffer is held only from the kernel's delivery until the pass dispatches
// it. Running out stops a socket's multishot receive with ENOBUFS and the loop re-arms it
// (recv_nobufs; no byte is lost). Measured: none ran out with 64 bulk streams x 2 MiB or 8,000
// idle streams.
constexpr apprelay::io::loop_options k_loop_options{
    .entries = 4096, .buf_count = 512, .buf_size = 16384};

enum class run_mode { echo, rr, idle, probe };

struct options {
    sockaddr_in addr{};
    std::string connect;
    std::string sni;
    std::string ca;
    run_mode mode = run_mode::echo;
    uint64_t streams = 1;
    uint64_t concurrency = 1;
    uint64_t bytes = 64 * 1024;
    unsigned threads = 1;
    bool half_close = false;
    bool json = false;
    double timeout_s = 120; // whole run; a stream alone may not exceed it either
    double duration_s = 10; // rr: measured window; idle: longest hold
    double rate = 0;        // new streams per second over all threads; 0 = as fast as possible
    double request_rate = 0; // rr: requests per second over all streams; 0 = closed loop
    uint64_t abort_after = 0; // echo: RST once this many echo bytes are in; 0 = never
};

enum class state { connecting, handshaking, transferring, holding, done, failed };

struct stream {
    uint64_t id = 0;
    conn_id conn;
    std::unique_ptr<apprelay::tls::session> tls;
    state st = state::connecting;
    uint64_t sent = 0;         // plaintext bytes, cumulative over requests (pattern offset)
    uint64_t received = 0;     // idem
    uint64_t target = 0;       // end offset of the current request
    uint64_t requests = 0;     // completed round trips that fell in the measured window
    std::size_t in_flight = 0; // bytes at the front of the session's output the kernel is sending
    bool connect_done = false; // on_connect came (else the loop still holds the connect)
    bool recv_paused = false;  // buffered_input() reached k_max_buffered_in
    bool dirty = false;        // in runner::_dirty
    bool close_notify_sent = false;
    bool peer_closed = false; // close_notify or TCP EOF
    bool settled = false;     // counted in run_shared::settled
    bool aborted = false;     // --abort-after: ends with RST, counted ok
    clock_type::time_point start;
    clock_type::time_point end;       // when it became done (echo: the stream's latency)
    clock_type::time_point req_start; // --request-rate: when the request was due
    bool parked = false;              // --request-rate: next request not due yet
    std::string why;
};

struct thread_result {
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t bytes_sent = 0;
    uint64_t bytes_received = 0;
    uint64_t requests = 0;
    uint64_t aborted = 0;
    latency_histogram latency_ns;      // echo: whole streams; rr and idle: round trips
    std::vector<std::string> failures; // first few reasons
};

// Coordination between the runner threads and main (rr measurement window, idle hold).
struct run_shared {
    uint64_t streams = 0;
    // Streams that reached their steady state (rr: handshake done; idle: first echo done) or
    // failed before it. When it reaches `streams` the rr window opens / idle reports ready.
    std::atomic<uint64_t> settled{0};
    std::atomic<int64_t> window_start_ns{0}; // rr: steady_clock ns; 0 = not open yet
    std::atomic<bool> release{false};        // idle: close the held streams now
};

int64_t to_ns(clock_type::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

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

class runner final : public apprelay::io::sink {
public:
    runner(const options& o, std::shared_ptr<apprelay::tls::client_context> ctx, uint64_t first,
           uint64_t count, uint64_t concurrency, clock_type::time_point deadline,
           run_shared& shared)
        : _o(o), _ctx(std::move(ctx)), _first_id(first), _next_id(first), _end_id(first + count),
          _concurrency(std::max<uint64_t>(1, concurrency)), _deadline(deadline), _shared(shared) {}

    thread_result run() {
        std::string why;
        auto l = apprelay::io::uring_loop::create(k_loop_options, &why);
        if (!l) {
            note_failure("io_uring: " + why);
            fail_unstarted();
            return std::move(_res);
        }
        _loop = std::move(*l);
        while (true) {
            refill_pace();
            while (_active.size() < _concurrency && _next_id < _end_id && _pace_tokens >= 1) {
                start_stream(_next_id++);
                _pace_tokens -= 1;
            }
            if (_active.empty() && _next_id >= _end_id) {
                break;
            }
            auto now = clock_type::now();
            if (now >= _deadline) {
                fail_all("timed out");
                break;
            }
            if (_shared.release.load(std::memory_order_acquire)) {
                release_held();
                if (_active.empty() && _next_id >= _end_id) {
                    break;
                }
            }
            int wait_ms = _o.rate > 0 && _next_id < _end_id ? k_pace_wait_ms : k_max_wait_ms;
            if (!_parked.empty()) {
                wait_ms = std::min(wait_ms, release_parked());
            }
            if (!_dirty.empty()) {
                wait_ms = 0; // a stream stopped at its round bound with work left
            }
            _loop->run_once(uint64_t(wait_ms) * 1'000'000);
            service_dirty();
        }
        close_wait();
        return std::move(_res);
    }

    // io::sink. Completions only feed the session and mark the stream dirty; service_dirty()
    // drives it after the pass.
    void on_connect(conn_id id, int res) override {
        stream* s = find(id);
        if (s == nullptr) {
            return;
        }
        s->connect_done = true;
        if (res != 0) {
            fail(*s, std::string("connect: ") + std::strerror(-res));
        } else {
            s->st = state::handshaking;
            _loop->start_recv(id);
        }
        mark_dirty(*s);
    }

    void on_recv(conn_id id, std::span<const std::byte> data) override {
        stream* s = find(id);
        // A done stream is only waiting for its close_notify to go out.
        if (s == nullptr || s->st == state::done || s->st == state::failed) {
            return;
        }
        s->tls->feed(data);
        if (!s->recv_paused && s->tls->buffered_input() >= k_max_buffered_in) {
            s->recv_paused = true;
            _loop->pause_recv(id);
        }
        mark_dirty(*s);
    }

    void on_recv_end(conn_id id, int res) override {
        stream* s = find(id);
        if (s == nullptr || s->st == state::done || s->st == state::failed) {
            return;
        }
        if (res == 0) {
            s->peer_closed = true;
        } else {
            fail(*s, std::string("recv: ") + std::strerror(-res) + " after " +
                         std::to_string(s->received) + " of " + std::to_string(s->target) +
                         " bytes echoed");
        }
        mark_dirty(*s);
    }

    void on_sent(conn_id id, int res) override {
        stream* s = find(id);
        if (s == nullptr) {
            return;
        }
        std::size_t n = s->in_flight;
        s->in_flight = 0;
        if (res >= 0) {
            // MSG_WAITALL makes short sends rare; the rest goes with the next send.
            s->tls->consume_output(std::min(std::size_t(res), n));
        } else if (s->st == state::done) {
            // Its exchange is complete; a close_notify the socket cannot take is dropped.
            s->tls->consume_output(s->tls->pending_output_size());
        } else {
            fail(*s, std::string("send: ") + std::strerror(-res));
        }
        mark_dirty(*s);
    }

private:
    // --rate as a token bucket holding at most k_pace_burst_s of this thread's share: a loadgen
    // that was descheduled for a while resumes at the rate instead of catching up in one burst.
    void refill_pace() {
        if (_o.rate <= 0) {
            _pace_tokens = double(_concurrency);
            return;
        }
        auto now = clock_type::now();
        double share = _o.rate * double(_end_id - _first_id) / double(_o.streams);
        double secs = std::chrono::duration<double>(now - _pace_last).count();
        _pace_last = now;
        _pace_tokens = std::min(std::max(1.0, share * k_pace_burst_s), _pace_tokens + secs * share);
    }

    stream* find(conn_id id) {
        auto it = _active.find(id.index);
        return it != _active.end() && it->second->conn == id ? it->second.get() : nullptr;
    }

    std::vector<conn_id> active_ids(bool holding_only) const {
        std::vector<conn_id> ids;
        for (auto& [index, s] : _active) {
            if (!holding_only || s->st == state::holding) {
                ids.push_back(s->conn);
            }
        }
        return ids;
    }

    void mark_dirty(stream& s) {
        if (!s.dirty) {
            s.dirty = true;
            _dirty.push_back(s.conn);
        }
    }

    void service_dirty() {
        _servicing.swap(_dirty); // drive() may mark its stream dirty again, for the next pass
        for (conn_id id : _servicing) {
            if (stream* s = find(id)) {
                s->dirty = false;
                step(*s);
            }
        }
        _servicing.clear();
    }

    // Move a stream on after completions or a due request; finish it once it is over. A done
    // stream stays until its output (the close_notify) is out.
    void step(stream& s) {
        if (s.st == state::done) {
            flush(s);
        } else if (s.st != state::failed) {
            drive(s);
        }
        if (s.st == state::failed || s.aborted ||
            (s.st == state::done && s.in_flight == 0 && s.tls->pending_output_size() == 0)) {
            finish(s);
        }
    }

    void fail_all(const char* why) {
        for (conn_id id : active_ids(false)) {
            stream& s = *find(id);
            if (s.st != state::done) { // done: only its close_notify was still going out
                fail(s, std::string(why) + " after " + std::to_string(s.sent) + " bytes sent, " +
                            std::to_string(s.received) + " received");
            }
            finish(s);
        }
        fail_unstarted();
    }

    // Streams never started count as failed too.
    void fail_unstarted() {
        while (_next_id < _end_id) {
            ++_next_id;
            ++_res.failed;
            settle_count();
        }
    }

    void settle_count() {
        uint64_t n = _shared.settled.fetch_add(1, std::memory_order_acq_rel) + 1;
        if (n == _shared.streams && _o.mode == run_mode::rr) {
            _shared.window_start_ns.store(to_ns(clock_type::now()), std::memory_order_release);
        }
    }

    void settle(stream& s) {
        if (!s.settled) {
            s.settled = true;
            settle_count();
        }
    }

    // Held idle streams end cleanly once main releases them.
    void release_held() {
        for (conn_id id : active_ids(true)) {
            stream& s = *find(id);
            s.tls->shutdown();
            set_done(s);
            step(s);
        }
    }

    int64_t window_ns() const { return int64_t(_o.duration_s * 1e9); }

    // --request-rate: per-stream interval between requests.
    clock_type::duration request_interval() const {
        return std::chrono::duration_cast<clock_type::duration>(
            std::chrono::duration<double>(double(_o.streams) / _o.request_rate));
    }

    // Sends the requests that came due; returns the ms until the next one is (at most
    // k_max_wait_ms, at least 0).
    int release_parked() {
        auto now = clock_type::now();
        auto next = now + std::chrono::milliseconds(k_max_wait_ms);
        std::vector<conn_id> due;
        for (conn_id id : _parked) {
            stream& s = *find(id);
            if (s.req_start <= now) {
                due.push_back(id);
            } else {
                next = std::min(next, s.req_start);
            }
        }
        for (conn_id id : due) {
            _parked.erase(std::find(_parked.begin(), _parked.end(), id));
            stream& s = *find(id);
            s.parked = false;
            s.target += _o.bytes;
            step(s);
        }
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
        return int(std::clamp<long long>(ms, 0, k_max_wait_ms));
    }

    void fail(stream& s, std::string why) {
        if (s.st != state::failed) {
            s.st = state::failed;
            s.why = "stream " + std::to_string(s.id) + ": " + why;
        }
    }

    void set_done(stream& s) {
        s.st = state::done;
        s.end = clock_type::now();
    }

    void start_stream(uint64_t id) {
        auto c = _loop->connect(reinterpret_cast<const sockaddr*>(&_o.addr), sizeof _o.addr, this);
        if (!c) {
            int err = errno;
            ++_res.failed;
            settle_count();
            note_failure("stream " + std::to_string(id) + ": socket: " +
                         (c.code() == errc::io_error ? std::string(std::strerror(err))
                                                     : std::string(apprelay::name_of(c.code()))));
            return;
        }
        auto s = std::make_unique<stream>();
        s->id = id;
        s->conn = *c;
        s->start = clock_type::now();
        s->target = _o.bytes;
        s->tls = _ctx->new_session();
        s->tls->use_chunk_pool(&_pool);
        // A slot index comes back only once its socket is released, after finish() erased it.
        [[maybe_unused]] bool fresh = _active.emplace(c->index, std::move(s)).second;
        assert(fresh);
    }

    void note_failure(std::string why) {
        if (_res.failures.size() < 5) {
            _res.failures.push_back(std::move(why));
        }
    }

    void finish(stream& s) {
        if (s.parked) {
            _parked.erase(std::find(_parked.begin(), _parked.end(), s.conn));
            s.parked = false;
        }
        _res.bytes_sent += s.sent;
        _res.bytes_received += s.received;
        _res.requests += s.requests;
        if (s.st == state::done) {
            ++_res.ok;
            _res.aborted += s.aborted ? 1 : 0;
            if (_o.mode == run_mode::echo) {
                _res.latency_ns.record(uint64_t(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(s.end - s.start).count()));
            }
        } else {
            ++_res.failed;
            note_failure(s.why);
        }
        settle(s);
        if (s.in_flight != 0) {
            // close() cancels the send, but until then the kernel may read its bytes: the
            // session lives until the loop is gone.
            _retired.push_back(std::move(s.tls));
        }
        if (!s.connect_done) {
            ++_closed_connecting;
        }
        // Abortive close for a failed stream (RST): it must not look like a clean end to the
        // relay.
        _loop->close(s.conn, s.st == state::failed || s.aborted);
        _active.erase(s.conn.index);
    }

    // Closed sockets finish closing in the loop; a connect still in flight holds its socket
    // until it completes, so those are not waited for (the loop's destructor closes them).
    void close_wait() {
        auto end = clock_type::now() + k_close_wait;
        while (_loop->open_sockets() > _closed_connecting && clock_type::now() < end) {
            _loop->run_once(k_close_poll_ns);
        }
        _loop.reset();
        _retired.clear();
    }

    // Session -> socket: at most one send in flight, pointing straight into the session's output
    // (its bytes stay in place until consumed, however much is written meanwhile).
    void flush(stream& s) {
        if (s.in_flight != 0) {
            return;
        }
        auto out = s.tls->pending_output();
        if (!out.empty() && _loop->send(s.conn, out)) {
            s.in_flight = out.size();
        }
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
            // Requests strictly alternate with their echo: nothing may arrive past the target.
            if (s.received + n > s.target) {
                fail(s, "received " + std::to_string(s.received + n) + " bytes, more than the " +
                            std::to_string(s.target) + " sent");
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
        for (int r = 0; r < k_max_rounds && s.sent < s.target &&
                        s.tls->pending_output_size() < k_max_pending_out;
             ++r) {
            std::size_t len = std::size_t(std::min<uint64_t>(k_chunk, s.target - s.sent));
            auto res = s.tls->write(std::span<const std::byte>(
                reinterpret_cast<const std::byte*>(pattern_at(s.id, s.sent)), len));
            if (!res) {
                fail(s, "TLS write failed: " + s.tls->last_error());
                return;
            }
            s.sent += len;
        }
        if (_o.mode == run_mode::echo && _o.half_close && s.sent == s.target &&
            !s.close_notify_sent) {
            s.tls->shutdown();
            s.close_notify_sent = true;
        }
    }

    // One request's echo is complete. Returns true if the stream goes on with another request.
    bool on_round_trip(stream& s) {
        auto now = clock_type::now();
        if (_o.mode == run_mode::idle) {
            s.st = state::holding;
            settle(s);
            return false;
        }
        int64_t start = _shared.window_start_ns.load(std::memory_order_acquire);
        int64_t now_ns = to_ns(now);
        if (start != 0 && to_ns(s.req_start) >= start && now_ns <= start + window_ns()) {
            _res.latency_ns.record(uint64_t(now_ns - to_ns(s.req_start)));
            ++s.requests;
        }
        if (start != 0 && now_ns >= start + window_ns()) {
            return false;
        }
        if (_o.request_rate > 0) {
            // The next request is due one interval after this one was; behind schedule it goes
            // at once (and its latency counts from when it was due).
            s.req_start += request_interval();
            if (s.req_start > now) {
                s.parked = true;
                _parked.push_back(s.conn);
                return false;
            }
        } else {
            s.req_start = now;
        }
        s.target += _o.bytes;
        return true;
    }

    // Runs on what the session holds: handshake, verify the echo, write the next bytes, start a
    // send. Received bytes come from on_recv; a stream stopped at its round bound with work left
    // is marked dirty again (nothing else would wake it while its receive is paused).
    void drive(stream& s) {
        int round = 0;
        for (; round < k_max_rounds; ++round) {
            uint64_t before = s.sent + s.received;
            std::size_t out_before = s.tls->pending_output_size();
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
                    s.req_start = clock_type::now();
                    if (_o.mode == run_mode::rr) {
                        settle(s);
                    }
                }
            }
            if (s.st == state::transferring) {
                if (!read_plain(s)) {
                    return;
                }
                if (_o.abort_after > 0 && s.received >= _o.abort_after) {
                    s.aborted = true;
                    set_done(s);
                    return;
                }
                write_plain(s);
                if (s.st == state::failed) {
                    return;
                }
            }
            if (s.st == state::holding && s.tls->buffered_input() > 0) {
                std::array<std::byte, 256> buf;
                auto res = s.tls->read(buf);
                if (res && *res > 0) {
                    fail(s, "unexpected bytes on a held idle stream");
                    return;
                }
            }
            flush(s);
            // A parked stream's round trip is already counted; it waits for release_parked.
            if (s.st == state::transferring && !s.parked && s.sent == s.target &&
                s.received == s.target) {
                if (_o.mode != run_mode::echo) {
                    if (on_round_trip(s)) {
                        // Send the next request now: this may be the last drive round, and
                        // nothing else wakes a stream whose request was never written.
                        write_plain(s);
                        if (s.st == state::failed) {
                            return;
                        }
                        flush(s);
                        continue;
                    }
                    if (s.st == state::holding || s.parked) {
                        break;
                    }
                    s.tls->shutdown();
                    flush(s);
                    set_done(s);
                    return;
                }
                if (!_o.half_close) {
                    s.tls->shutdown();
                    flush(s);
                    set_done(s);
                    return;
                }
                if (s.peer_closed) {
                    set_done(s);
                    return;
                }
            }
            if (s.peer_closed && s.tls->buffered_input() == 0) {
                if (s.st == state::handshaking) {
                    fail(s, "connection closed during the TLS handshake: " + s.tls->last_error());
                } else if (s.st == state::holding) {
                    fail(s, "held idle stream closed by the peer");
                } else {
                    fail(s, "connection closed after " + std::to_string(s.received) + " of " +
                                std::to_string(s.target) + " bytes echoed");
                }
                return;
            }
            bool progress =
                s.sent + s.received != before || s.tls->pending_output_size() != out_before;
            if (!progress) {
                break;
            }
        }
        if (round == k_max_rounds) {
            mark_dirty(s);
        }
        if (s.recv_paused && s.tls->buffered_input() < k_max_buffered_in) {
            s.recv_paused = false;
            _loop->start_recv(s.conn);
        }
    }

    const options& _o;
    std::shared_ptr<apprelay::tls::client_context> _ctx;
    uint64_t _first_id;
    uint64_t _next_id;
    uint64_t _end_id;
    uint64_t _concurrency;
    clock_type::time_point _deadline;
    clock_type::time_point _pace_last = clock_type::now();
    double _pace_tokens = 1;
    run_shared& _shared;
    // The chunks sessions buffer ciphertext in, kept warm for this thread (declared before the
    // sessions: it outlives them). With a send in flight more output pends than before a
    // synchronous send consumed it, and without the pool each session kept one spare chunk and
    // freed the rest: the allocator trimmed and refaulted them (madvise, page faults). Measured
    // on 2 shared cores (one run each), loadgen cpu for 128 MiB echoed on 1 stream: 0.54 s ->
    // 0.24 s; 64 streams x 2 MiB: 0.96 s -> 0.42 s.
    apprelay::tls::chunk_pool _pool;
    // Streams by their socket's slot index (the conn_id's generation is checked on lookup).
    std::unordered_map<uint32_t, std::unique_ptr<stream>> _active;
    std::vector<conn_id> _parked; // --request-rate: streams whose next request is not due yet
    std::vector<conn_id> _dirty;  // streams with completions since the last service_dirty()
    std::vector<conn_id> _servicing;
    // Sessions of streams closed with a send in flight; declared before _loop, freed after it.
    std::vector<std::unique_ptr<apprelay::tls::session>> _retired;
    std::unique_ptr<apprelay::io::uring_loop> _loop;
    std::size_t _closed_connecting = 0; // streams closed while their connect was in flight
    thread_result _res;
};

int usage(const char* why) {
    std::fprintf(stderr,
                 "apprelay-loadgen: %s\n"
                 "usage: apprelay-loadgen --connect HOST:PORT --sni NAME --ca CA.pem "
                 "--streams N --concurrency C --bytes B [--mode echo|rr|idle|probe] "
                 "[--duration SECONDS] [--threads T] [--half-close] [--timeout SECONDS] "
                 "[--rate STREAMS_PER_S] [--request-rate REQUESTS_PER_S] [--json]\n",
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

// Seconds or a rate: a number in (0, 86400].
bool parse_positive(const char* s, double& out) {
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0) || v > 86400) {
        return false;
    }
    out = v;
    return true;
}

const char* mode_name(run_mode m) {
    switch (m) {
    case run_mode::echo:
        return "echo";
    case run_mode::rr:
        return "rr";
    case run_mode::idle:
        return "idle";
    case run_mode::probe:
        return "probe";
    }
    return "?";
}

// idle mode: wait (bounded by the run deadline) until every stream is held or failed, report,
// then hold until stdin reaches EOF or --duration passes.
void hold_idle_streams(const options& o, run_shared& shared, clock_type::time_point deadline) {
    while (shared.settled.load(std::memory_order_acquire) < shared.streams &&
           clock_type::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::printf("{\"event\":\"idle_ready\",\"settled\":%llu}\n",
                (unsigned long long)shared.settled.load());
    std::fflush(stdout);
    auto hold_end =
        std::min(deadline, clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                   std::chrono::duration<double>(o.duration_s)));
    std::array<char, 256> sink;
    while (clock_type::now() < hold_end) {
        pollfd p{STDIN_FILENO, POLLIN, 0};
        if (poll(&p, 1, 100) > 0) {
            ssize_t n = ::read(STDIN_FILENO, sink.data(), sink.size());
            if (n <= 0) {
                break;
            }
        }
    }
    shared.release.store(true, std::memory_order_release);
}

// probe mode (see the top of the file). Exit 0 once a stream succeeded, 1 if none did.
int run_probe(const options& o, std::shared_ptr<apprelay::tls::client_context> ctx) {
    std::printf("{\"event\":\"probe_ready\"}\n");
    std::fflush(stdout);
    std::array<char, 256> line;
    pollfd p{STDIN_FILENO, POLLIN, 0};
    if (poll(&p, 1, int(o.timeout_s * 1000)) > 0) {
        (void)::read(STDIN_FILENO, line.data(), line.size());
    }
    auto t0 = clock_type::now();
    auto window_end = t0 + std::chrono::duration_cast<clock_type::duration>(
                               std::chrono::duration<double>(o.timeout_s));
    options eo = o;
    eo.mode = run_mode::echo;
    uint64_t attempts = 0;
    uint64_t failed = 0;
    std::string last_failure;
    bool ok = false;
    while (!ok && clock_type::now() < window_end) {
        auto attempt_end = std::min(
            window_end, clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                std::chrono::duration<double>(k_probe_attempt_s)));
        run_shared shared;
        shared.streams = 1;
        runner r(eo, ctx, attempts++, 1, 1, attempt_end, shared);
        thread_result res = r.run();
        ok = res.ok == 1;
        if (!ok) {
            ++failed;
            if (!res.failures.empty()) {
                last_failure = res.failures.back();
            }
        }
    }
    double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (!ok) {
        std::fprintf(stderr, "apprelay-loadgen: no probe stream succeeded in %.1f s; last: %s\n",
                     o.timeout_s, last_failure.c_str());
    }
    std::printf("  %-24s %s after %.3f s (%llu failed attempts)\n", "probe",
                ok ? "succeeded" : "gave up", secs, (unsigned long long)failed);
    if (o.json) {
        std::printf("{\"mode\":\"probe\",\"ok\":%d,\"seconds\":%.6f,\"attempts\":%llu,"
                    "\"failed_attempts\":%llu}\n",
                    ok ? 1 : 0, secs, (unsigned long long)attempts, (unsigned long long)failed);
    }
    std::fflush(stdout);
    return ok ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    options o;
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
            std::string_view m = v;
            if (m == "echo") {
                o.mode = run_mode::echo;
            } else if (m == "rr") {
                o.mode = run_mode::rr;
            } else if (m == "idle") {
                o.mode = run_mode::idle;
            } else if (m == "probe") {
                o.mode = run_mode::probe;
            } else {
                return usage("--mode must be echo, rr, idle or probe");
            }
        } else if (a == "--streams" && (v = next()) && parse_u64(v, n)) {
            o.streams = n;
        } else if (a == "--concurrency" && (v = next()) && parse_u64(v, n) && n > 0) {
            o.concurrency = n;
        } else if (a == "--bytes" && (v = next()) && parse_u64(v, n)) {
            o.bytes = n;
        } else if (a == "--abort-after" && (v = next()) && parse_u64(v, n) && n > 0) {
            o.abort_after = n;
        } else if (a == "--request-rate" && (v = next())) {
            if (!parse_positive(v, o.request_rate) || o.request_rate > 1e7) {
                return usage("bad value for --request-rate");
            }
        } else if (a == "--rate" && (v = next())) {
            if (!parse_positive(v, o.rate)) {
                return usage("bad value for --rate");
            }
        } else if (a == "--threads" && (v = next()) && parse_u64(v, n) && n > 0 && n <= 64) {
            o.threads = unsigned(n);
        } else if ((a == "--timeout" || a == "--duration") && (v = next())) {
            if (!parse_positive(v, a == "--timeout" ? o.timeout_s : o.duration_s)) {
                return usage(("bad value for " + std::string(a)).c_str());
            }
        } else {
            return usage(("bad argument " + std::string(a)).c_str());
        }
    }
    if (o.connect.empty() || o.sni.empty()) {
        return usage("--connect and --sni are required");
    }
    if (o.abort_after > 0 && (o.mode != run_mode::echo || o.abort_after >= o.bytes)) {
        return usage("--abort-after applies to --mode echo, below --bytes");
    }
    if (o.request_rate > 0 && o.mode != run_mode::rr) {
        return usage("--request-rate applies to --mode rr only");
    }
    if (o.mode == run_mode::rr || o.mode == run_mode::idle) {
        // Every stream is open for the whole run: the stream count is the concurrency.
        o.streams = o.concurrency;
        if (o.bytes == 0) {
            return usage("--bytes must be > 0 in rr and idle modes");
        }
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

    if (o.mode == run_mode::probe) {
        return run_probe(o, *ctx);
    }
    unsigned threads = unsigned(std::min<uint64_t>(o.threads, std::max<uint64_t>(1, o.streams)));
    auto t0 = clock_type::now();
    auto deadline = t0 + std::chrono::duration_cast<clock_type::duration>(
                             std::chrono::duration<double>(o.timeout_s));
    run_shared shared;
    shared.streams = o.streams;
    std::vector<thread_result> results(threads);
    std::vector<std::thread> ts;
    uint64_t first = 0;
    for (unsigned t = 0; t < threads; ++t) {
        uint64_t count = o.streams / threads + (t < o.streams % threads ? 1 : 0);
        uint64_t conc = o.concurrency / threads + (t < o.concurrency % threads ? 1 : 0);
        ts.emplace_back([&, t, first, count, conc] {
            runner r(o, *ctx, first, count, conc, deadline, shared);
            results[t] = r.run();
        });
        first += count;
    }
    if (o.mode == run_mode::idle) {
        hold_idle_streams(o, shared, deadline);
    }
    for (auto& t : ts) {
        t.join();
    }
    double secs = std::chrono::duration<double>(clock_type::now() - t0).count();

    thread_result total;
    for (auto& r : results) {
        total.ok += r.ok;
        total.aborted += r.aborted;
        total.failed += r.failed;
        total.bytes_sent += r.bytes_sent;
        total.bytes_received += r.bytes_received;
        total.requests += r.requests;
        total.latency_ns.merge(r.latency_ns);
        for (auto& f : r.failures) {
            if (total.failures.size() < 10) {
                total.failures.push_back(f);
            }
        }
    }
    double moved = double(total.bytes_sent + total.bytes_received);
    double mbps = secs > 0 ? moved / secs / 1e6 : 0;
    double gbps = secs > 0 ? moved * 8 / secs / 1e9 : 0;
    double sps = secs > 0 ? double(total.ok) / secs : 0;
    // rr: requests counted only inside the window that opens once every stream is established.
    double rps = o.mode == run_mode::rr ? double(total.requests) / o.duration_s : 0;
    auto us = [&](double q) { return double(total.latency_ns.quantile(q)) / 1e3; };
    double p50 = us(0.50);
    double p99 = us(0.99);
    double p999 = us(0.999);

    for (auto& f : total.failures) {
        std::fprintf(stderr, "apprelay-loadgen: failed %s\n", f.c_str());
    }
    std::printf("apprelay-loadgen  %s  sni=%s  mode=%s  bytes=%llu  concurrency=%llu  "
                "threads=%u%s\n",
                o.connect.c_str(), o.sni.c_str(), mode_name(o.mode), (unsigned long long)o.bytes,
                (unsigned long long)o.concurrency, threads, o.half_close ? "  half-close" : "");
    std::printf("  %-24s %llu\n", "streams ok", (unsigned long long)total.ok);
    std::printf("  %-24s %llu\n", "streams failed", (unsigned long long)total.failed);
    if (o.abort_after > 0) {
        std::printf("  %-24s %llu (RST after %llu bytes)\n", "streams aborted",
                    (unsigned long long)total.aborted, (unsigned long long)o.abort_after);
    }
    std::printf("  %-24s %llu (sent %llu, received %llu)\n", "bytes moved",
                (unsigned long long)(total.bytes_sent + total.bytes_received),
                (unsigned long long)total.bytes_sent, (unsigned long long)total.bytes_received);
    std::printf("  %-24s %.3f\n", "seconds", secs);
    std::printf("  %-24s %.3f\n", "Gbit/s (both ways)", gbps);
    std::printf("  %-24s %.1f\n", "streams/s", sps);
    if (o.mode == run_mode::rr) {
        std::printf("  %-24s %llu in %.1f s\n", "requests (window)",
                    (unsigned long long)total.requests, o.duration_s);
        std::printf("  %-24s %.1f\n", "requests/s", rps);
    }
    std::printf("  %-24s %.1f / %.1f / %.1f\n",
                o.mode == run_mode::echo ? "stream us p50/p99/p99.9" : "rtt us p50/p99/p99.9", p50,
                p99, p999);
    if (o.json) {
        std::printf("{\"mode\":\"%s\",\"streams\":%llu,\"ok\":%llu,\"failed\":%llu,"
                    "\"bytes_per_stream\":%llu,\"bytes_sent\":%llu,\"bytes_received\":%llu,"
                    "\"seconds\":%.6f,\"mb_per_s\":%.3f,\"gbit_per_s\":%.4f,"
                    "\"streams_per_s\":%.2f,\"requests\":%llu,\"window_s\":%.3f,"
                    "\"requests_per_s\":%.2f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
                    "\"max_us\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"concurrency\":%llu,"
                    "\"threads\":%u,\"request_rate\":%.1f,\"aborted\":%llu}\n",
                    mode_name(o.mode), (unsigned long long)o.streams, (unsigned long long)total.ok,
                    (unsigned long long)total.failed, (unsigned long long)o.bytes,
                    (unsigned long long)total.bytes_sent, (unsigned long long)total.bytes_received,
                    secs, mbps, gbps, sps, (unsigned long long)total.requests,
                    o.mode == run_mode::rr ? o.duration_s : secs, rps, p50, p99, p999,
                    double(total.latency_ns.max()) / 1e3, p50 / 1e3, p99 / 1e3,
                    (unsigned long long)o.concurrency, threads, o.request_rate,
                    (unsigned long long)total.aborted);
    }
    std::fflush(stdout);
    return total.failed == 0 && total.ok == o.streams ? 0 : 1;
}
