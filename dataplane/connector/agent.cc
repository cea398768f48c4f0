#include "dataplane/connector/agent.hh"

#include "dataplane/base/log.hh"
#include "dataplane/base/time.hh"
#include "dataplane/connector/status_http.hh"
#include "dataplane/io/address.hh"
#include "dataplane/io/tls_transport.hh"
#include "dataplane/io/tunnel_pump.hh"
#include "dataplane/io/uring/loop.hh"
#include "dataplane/tunnel/connector_config.hh"
#include "dataplane/tunnel/mux.hh"
#include "tls/context.hh"

#include "dataplane/core/core_map.hh"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>
#include <netdb.h>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace apprelay::connector {
namespace {
constexpr std::size_t k_scratch = 64 * 1024;
// Backend bytes buffered for the tunnel before the backend's receive is paused (no credit).
constexpr std::size_t k_backend_in_high = 256 * 1024;
constexpr std::size_t k_backend_in_low = 64 * 1024;
constexpr uint64_t k_max_wait_ns = 50'000'000;
// A stop's last frames and close_notify get this long to leave once no stream is left.
constexpr uint64_t k_flush_ns = 2'000'000'000;
constexpr uint16_t k_any_worker = 0xFFFF;


} // namespace

std::string metrics_for(const std::vector<uint64_t>& values, uint64_t config_version,
                        std::size_t loops) {
    std::string out;
    for (std::size_t i = 0; i < values.size(); ++i) {
        std::string name(connector_counter_names[i]);
        const bool gauge = name == "tunnels_up";
        std::string metric = "apprelay_connector_" + name + (gauge ? "" : "_total");
        out += "# HELP " + metric + " " + std::string(connector_counter_help[i]) + "\n";
        out += "# TYPE " + metric + (gauge ? " gauge\n" : " counter\n");
        out += metric + " " + std::to_string(values[i]) + "\n";
    }
    if (loops > 0) {
        out += "# HELP apprelay_connector_loops data-plane loops (one pinned thread each)\n";
        out += "# TYPE apprelay_connector_loops gauge\n";
        out += "apprelay_connector_loops " + std::to_string(loops) + "\n";
    }
    out += "# HELP apprelay_connector_config_version version of the last CONFIG from the relay\n";
    out += "# TYPE apprelay_connector_config_version gauge\n";
    out += "apprelay_connector_config_version " + std::to_string(config_version) + "\n";
    return out;
}

void write_file_atomically(const std::string& path, const std::string& s) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::trunc);
        f << s;
    }
    std::rename(tmp.c_str(), path.c_str());
}

class agent;
class tunnel_link;

// The loops of one connector process (--core-map workers=...): each loop is an agent with its
// own io_uring, tunnels and backend connections, pinned to its cpu; nothing of the data path is
// shared. Relay worker w's tunnel belongs to loop w % loops, except that loop 0 dials its first
// tunnel to any worker (the relay says which, `first`) and keeps it: first and worker 0 swap
// owners. The other loops wait for loop 0 to learn the relay's worker count.
struct agent_group {
    uint16_t loops = 1;
    std::vector<int> cpus; // loop i runs on cpus[i] (the core map's workers)
    std::atomic<uint32_t> relay_workers{0}; // published by loop 0 after its first HELLO_ACK
    std::atomic<uint32_t> first_worker{0xFFFF};
    std::atomic<bool> stop{false};          // a loop ended for good: every loop stops
    std::atomic<uint64_t> last_tunnel_ns{0}; // give-up counts for the whole connector
};

// backend_conn: plain TCP to the backend for one stream.
// States: connecting -> open -> dead. Bytes from the relay queue in `_out` (bounded by the
// credit we granted); bytes from the backend queue in `_in` until the mux pulls them.
class backend_conn final : public io::sink {
public:
    backend_conn(agent* a, tunnel_link* t, uint32_t sid) : _a(a), _t(t), _sid(sid) {}
    bool start(const sockaddr_storage& ss, socklen_t len);
    void on_connect(io::conn_id, int res) override;
    void on_recv(io::conn_id, std::span<const std::byte> data) override;
    void on_recv_end(io::conn_id, int res) override;
    void on_sent(io::conn_id, int res) override;

    void relay_data(std::span<const std::byte> bytes);
    void relay_fin();
    std::size_t pull(std::span<std::byte> dst);
    void kill(); // abort towards the backend, no tunnel action
    void detach_tunnel() { _t = nullptr; }

private:
    void flush();
    void fail_stream();

    agent* _a;
    tunnel_link* _t;
    uint32_t _sid;
    io::conn_id _id{};
    bool _open = false;
    bool _dead = false;
    std::vector<std::byte> _out;     // waiting to be sent
    std::vector<std::byte> _sending; // in flight (stable while the kernel reads it)
    std::vector<std::byte> _in;
    std::size_t _in_off = 0;
    bool _fin_from_relay = false;
    bool _shut_wr = false;
    bool _eof = false;
    bool _paused = false;
};

// tunnel_link: one tunnel to one relay worker; reconnects with backoff.
// States: waiting (backoff) -> connecting -> handshaking -> hello_sent -> ready -> (failure)
// waiting
class tunnel_link final : public io::sink, public tunnel::mux_handler {
public:
    tunnel_link(agent* a, uint16_t worker) : _a(a), _worker(worker) {}
    void connect();
    void on_connect(io::conn_id, int res) override;
    void on_recv(io::conn_id, std::span<const std::byte> data) override;
    void on_recv_end(io::conn_id, int res) override;
    void on_sent(io::conn_id, int res) override;

    void on_hello_ack(const tunnel::hello_ack& a) override;
    void on_open(uint32_t sid, std::string_view app, std::string_view target) override;
    void on_data(uint32_t sid, std::span<const std::byte> bytes) override;
    void on_fin(uint32_t sid) override;
    void on_reset(uint32_t sid, tunnel::reason r, std::string_view msg) override;
    void on_stream_closed(uint32_t sid) override;
    void on_goaway(uint32_t last, tunnel::reason r, std::string_view msg) override;
    void on_config(uint64_t version, std::span<const std::byte> body) override;
    std::size_t pull(uint32_t sid, std::span<std::byte> dst) override;

    void service();
    // Connector stopping: GOAWAY to the relay (no new streams), streams in flight go on.
    void drain();
    // The stop's last steps, once no stream is left (or the drain deadline passed). flushed():
    // nothing owed to the relay is still queued (a frame to produce, TLS output buffered or in
    // flight), or the link is not connected. close_write(), called again each pass: close_notify
    // once flushed, then the TCP FIN once that left too. closed(): the connection is gone (the
    // relay closed its side, or the link never was connected).
    bool flushed() const;
    void close_write();
    bool closed() const { return !_tx; }
    std::size_t stream_count() const { return _streams.size(); }
    void fail(std::string_view why);
    void stream_gone(uint32_t sid) { _streams.erase(sid); }
    tunnel::mux* mux() { return _mux.get(); }
    void mark_dirty();
    void queue_fin(uint32_t sid) {
        _pending.fin.push_back(sid);
        mark_dirty();
    }
    void queue_reset(uint32_t sid) {
        _pending.reset.push_back(sid);
        mark_dirty();
    }
    bool ready() const { return _state == state::ready; }
    // The relay PINGs every ping_interval: silence for 3 intervals means it (or the path) died.
    bool silent(uint64_t now) const { return ready() && now - _last_rx > _silence_ns; }
    bool waiting() const { return _state == state::waiting; }
    uint64_t retry_at() const { return _retry_at; }
    uint16_t worker() const { return _worker; }
    // The relay no longer has this worker (a HELLO_ACK counted fewer): no more dialing until it
    // counts it again.
    bool retired = false;
    bool dirty = false;

private:
    enum class state : uint8_t { waiting, connecting, handshaking, hello_sent, ready };
    void send_hello();
    void schedule_retry();
    void redial_misplaced(uint16_t landed);
    // Closes the connection and drops its TLS session, mux and place in the dirty list.
    void release_connection();

    agent* _a;
    uint16_t _worker;
    state _state = state::waiting;
    io::conn_id _id{};
    std::unique_ptr<io::tls_transport> _tx;
    std::unique_ptr<tunnel::mux> _mux;
    std::unordered_map<uint32_t, backend_conn*> _streams;
    io::tunnel_pending _pending{{}, {}, "backend connection failed"};
    uint32_t _attempt = 0;
    uint32_t _misplaced = 0; // consecutive landings on another relay worker
    uint64_t _retry_at = 0;
    uint64_t _last_rx = 0;
    uint64_t _silence_ns = 3'000'000'000ull;
    bool _bad_config = false;
    bool _notify_sent = false; // close_notify queued (the stop's last steps)
    bool _fin_sent = false;    // then shutdown(SHUT_WR)
};

class agent {
public:
    explicit agent(const agent_options& o, uint16_t idx = 0, agent_group* g = nullptr)
        : opts(o), index(idx), group(g), rng(std::random_device{}()) {}
    int run(const std::atomic<bool>& stop);

    // Whether relay worker w's tunnel is this loop's (agent_group).
    bool mine(uint16_t w) const {
        if (group == nullptr || group->loops <= 1) {
            return true;
        }
        // Loop 0 keeps its first tunnel, to worker `first`; worker 0 takes first's place, so
        // every loop still owns its share (W / loops, rounded).
        uint32_t first = group->first_worker.load(std::memory_order_acquire);
        uint32_t owner = w % group->loops;
        if (first != k_any_worker && first % group->loops != 0) {
            if (w == first) {
                owner = 0;
            } else if (w == 0) {
                owner = first % group->loops;
            }
        }
        return owner == index;
    }

    agent_options opts;
    uint16_t index = 0;           // this loop (agent_group), 0 when alone
    agent_group* group = nullptr; // null: the only loop, which also writes the stats
    // Guards latest_version, config and config_version: the loop writes them (rare events), the
    // control thread reads them for the status of a multi-loop connector.
    mutable std::mutex status_mu;
    std::unique_ptr<io::loop> loop; // io_uring: the connector dials out through the kernel
    io::send_buffer_pool pool;
    std::shared_ptr<tls::client_context> tls_ctx;
    sockaddr_storage relay_addr{};
    socklen_t relay_len = 0;
    connector_counter_block counters;
    std::vector<std::unique_ptr<tunnel_link>> links;
    std::vector<tunnel_link*> dirty;
    std::vector<backend_conn*> dead_backends;
    std::vector<backend_conn*> reaping_backends; // closed before this run_once: freed after it
    std::vector<std::byte> scratch = std::vector<std::byte>(k_scratch);
    uint16_t worker_count = 0;
    // From the relay's CONFIG frames; no OPEN is accepted before the first one.
    std::optional<tunnel::connector_config> config;
    uint64_t config_version = 0;
    int fatal_code = 0;         // set when the relay refuses this connector for good
    std::string latest_version; // advertised by the relay in HELLO_ACK
    std::unique_ptr<status_http> http;
    bool draining = false;
    uint64_t now = 0;
    uint64_t last_tunnel_ns = 0;
    std::mt19937_64 rng;

    void ensure_links(uint16_t n) {
        // The relay's current count: after a restart with fewer workers, links to the workers
        // that are gone stop dialing (the relay refuses a HELLO for a worker it lacks), and
        // start again if a later HELLO_ACK counts them.
        worker_count = n;
        std::vector<bool> have(worker_count, false);
        for (auto& l : links) {
            if (l->worker() == k_any_worker) {
                continue;
            }
            bool gone = l->worker() >= worker_count;
            if (gone && !l->retired) {
                log::info("tunnel_retired", {{"worker", l->worker()}, {"relay_workers", n}});
            }
            l->retired = gone;
            if (!gone) {
                have[l->worker()] = true;
            }
        }
        for (uint16_t i = 0; i < worker_count; ++i) {
            if (!have[i] && mine(i)) {
                links.push_back(std::make_unique<tunnel_link>(this, i));
                links.back()->connect();
            }
        }
    }
    void write_stats();
    std::string status_json() const;
    std::string metrics_text() const;
};

// ------------------------------------------------------------------------------ backend_conn

bool backend_conn::start(const sockaddr_storage& ss, socklen_t len) {
    auto id = _a->loop->connect(reinterpret_cast<const sockaddr*>(&ss), len, this);
    if (!id) {
        return false;
    }
    _id = *id;
    return true;
}

void backend_conn::on_connect(io::conn_id, int res) {
    if (_t == nullptr) {
        kill();
        return;
    }
    if (res != 0) {
        _a->counters.add(connector_counter::streams_refused);
        tunnel::reason r =
            res == -ECONNREFUSED ? tunnel::reason::refused : tunnel::reason::unreachable;
        _t->mux()->open_fail(_sid, r,
                             res == -ECONNREFUSED ? "backend refused the connection"
                                                  : "backend unreachable");
        _t->stream_gone(_sid);
        _t->mark_dirty();
        _t = nullptr;
        kill();
        return;
    }
    _open = true;
    _a->counters.add(connector_counter::streams_opened);
    _t->mux()->open_ack(_sid);
    _t->mark_dirty();
    _a->loop->start_recv(_id);
    flush();
    if (_fin_from_relay && _sending.empty() && _out.empty() && !_shut_wr) {
        _shut_wr = true;
        _a->loop->shutdown_write(_id);
    }
}

void backend_conn::relay_data(std::span<const std::byte> bytes) {
    _out.insert(_out.end(), bytes.begin(), bytes.end());
    if (_open) {
        flush();
    }
}

void backend_conn::flush() {
    if (_dead || !_open || !_sending.empty() || _out.empty()) {
        return;
    }
    _sending.swap(_out);
    if (!_a->loop->send(_id, std::span<const std::byte>(_sending.data(), _sending.size()))) {
        _sending.clear();
    }
}

void backend_conn::on_sent(io::conn_id, int res) {
    if (res < 0) {
        fail_stream();
        return;
    }
    std::size_t n = std::size_t(res);
    _a->counters.add(connector_counter::bytes_to_backend, n);
    if (_t != nullptr) {
        // Credit goes back when the backend has taken the bytes (flow control invariant).
        _t->mux()->consumed(_sid, n);
        _t->mark_dirty();
    }
    if (n < _sending.size()) {
        // Short send (MSG_WAITALL interrupted): keep order, resend the rest first.
        _sending.erase(_sending.begin(), _sending.begin() + std::ptrdiff_t(n));
        _out.insert(_out.begin(), _sending.begin(), _sending.end());
    }
    _sending.clear();
    flush();
    if (_fin_from_relay && _sending.empty() && _out.empty() && !_shut_wr) {
        _shut_wr = true;
        _a->loop->shutdown_write(_id);
    }
}

void backend_conn::relay_fin() {
    _fin_from_relay = true;
    if (_open && _sending.empty() && _out.empty() && !_shut_wr) {
        _shut_wr = true;
        _a->loop->shutdown_write(_id);
    }
}

void backend_conn::on_recv(io::conn_id, std::span<const std::byte> data) {
    // The consumed prefix goes once it is at least as large as what is still unread: copying
    // that costs at most one more copy per byte, and the buffer stays within about twice the
    // pause mark. (Without it the vector grew by the whole response while the tunnel's credit
    // held the reader back: 256 MiB downloads paged in fresh memory all the time, 4.5 s of
    // connector cpu per GiB at 16 streams.)
    std::size_t unread = _in.size() - _in_off;
    if (_in_off == _in.size()) {
        _in.clear();
        _in_off = 0;
    } else if (_in_off >= unread) {
        std::memmove(_in.data(), _in.data() + _in_off, unread);
        _in.resize(unread);
        _in_off = 0;
    }
    _in.insert(_in.end(), data.begin(), data.end());
    _a->counters.add(connector_counter::bytes_from_backend, data.size());
    if (_t != nullptr) {
        _t->mux()->mark_readable(_sid);
        _t->mark_dirty();
    }
    if (!_paused && _in.size() - _in_off > k_backend_in_high) {
        _paused = true;
        _a->loop->pause_recv(_id);
    }
}

std::size_t backend_conn::pull(std::span<std::byte> dst) {
    std::size_t avail = _in.size() - _in_off;
    std::size_t n = std::min(avail, dst.size());
    if (n > 0) {
        std::memcpy(dst.data(), _in.data() + _in_off, n);
        _in_off += n;
    }
    if (_paused && _in.size() - _in_off < k_backend_in_low) {
        _paused = false;
        _a->loop->start_recv(_id);
    }
    return n;
}

void backend_conn::on_recv_end(io::conn_id, int res) {
    log::debug("backend_recv_end", {{"sid", _sid}, {"res", res}});
    if (res == 0) {
        _eof = true;
        if (_t != nullptr) {
            _t->mux()->mark_readable(_sid);
            _t->queue_fin(_sid);
        }
        return;
    }
    fail_stream();
}

void backend_conn::fail_stream() {
    if (_t != nullptr) {
        _t->stream_gone(_sid);
        _t->queue_reset(_sid);
        _t = nullptr;
    }
    _a->counters.add(connector_counter::streams_reset);
    kill();
}

void backend_conn::kill() {
    if (_dead) {
        return;
    }
    _dead = true;
    if (_id.valid()) {
        _a->loop->close(_id, true);
    }
    _a->dead_backends.push_back(this);
}

// ------------------------------------------------------------------------------- tunnel_link

void tunnel_link::mark_dirty() {
    if (!dirty) {
        dirty = true;
        _a->dirty.push_back(this);
    }
}

void tunnel_link::connect() {
    auto id =
        _a->loop->connect(reinterpret_cast<const sockaddr*>(&_a->relay_addr), _a->relay_len, this);
    if (!id) {
        schedule_retry();
        return;
    }
    _id = *id;
    _state = state::connecting;
}

void tunnel_link::redial_misplaced(uint16_t landed) {
    // A relay whose connections cannot move between its workers (dpdk: the flow hash of the TCP
    // 4-tuple picks the worker) answers from the worker the tunnel landed on. A worker without
    // one of our tunnels routes none of our group's streams, so dial again: a new source port is
    // a new hash, and with N workers a dial lands right with probability 1/N. The first
    // k_quick_redials go at once; after that the usual jittered backoff (no storm).
    constexpr uint32_t k_quick_redials = 64;
    ++_misplaced;
    _a->counters.add(connector_counter::tunnels_misplaced);
    log::debug("tunnel_misplaced", {{"worker", _worker}, {"landed", landed},
                                    {"attempt", _misplaced}});
    release_connection();
    if (_misplaced <= k_quick_redials) {
        _state = state::waiting;
        _retry_at = _a->now;
        return;
    }
    schedule_retry();
}

void tunnel_link::schedule_retry() {
    // Full jitter: uniform in [0, min(cap, base * 2^attempt)] so a relay restart does not see
    // every connector at once.
    uint64_t ceiling = std::min<uint64_t>(
        _a->opts.backoff_cap_ms, uint64_t(_a->opts.backoff_base_ms) << std::min(_attempt, 20u));
    std::uniform_int_distribution<uint64_t> d(0, ceiling);
    uint64_t delay_ms = d(_a->rng);
    ++_attempt;
    _retry_at = _a->now + delay_ms * 1'000'000ull;
    _state = state::waiting;
    log::info("tunnel_retry", {{"worker", _worker}, {"attempt", _attempt}, {"delay_ms", delay_ms}});
}

void tunnel_link::on_connect(io::conn_id, int res) {
    if (res != 0) {
        _a->loop->close(_id);
        _a->counters.add(connector_counter::tunnel_failures);
        log::info("tunnel_connect_failed", {{"worker", _worker}, {"reason", std::strerror(-res)}});
        schedule_retry();
        return;
    }
    _tx = std::make_unique<io::tls_transport>(_a->loop.get(), _id, _a->tls_ctx->new_session(),
                                              &_a->pool);
    _mux = std::make_unique<tunnel::mux>(tunnel::role::connector, tunnel::mux_limits{}, *this);
    _state = state::handshaking;
    _a->loop->start_recv(_id);
    auto r = _tx->tls().handshake(); // ClientHello
    _tx->flush();
    if (!r && r.code() != errc::again) {
        fail(_tx->tls().last_error());
    }
}

void tunnel_link::send_hello() {
    tunnel::hello h{};
    h.proto_version = 1;
    h.worker_index = _worker;
    h.max_frame = tunnel::mux_limits{}.max_frame;
    h.initial_window = tunnel::mux_limits{}.initial_window;
    h.connector_id = _a->opts.id;
    h.connector_version = _a->opts.version;
    _mux->send_hello(h);
    _state = state::hello_sent;
    mark_dirty();
}

void tunnel_link::on_recv(io::conn_id, std::span<const std::byte> data) {
    if (_state == state::waiting || !_tx) {
        return;
    }
    _tx->tls().feed(data);
    _last_rx = _a->now;
    if (_state == state::handshaking) {
        auto r = _tx->tls().handshake();
        _tx->flush();
        if (r.code() == errc::again) {
            return;
        }
        if (!r) {
            fail(_tx->tls().last_error());
            return;
        }
        send_hello();
    }
    for (;;) {
        auto r = _tx->tls().read(std::span<std::byte>(_a->scratch.data(), _a->scratch.size()));
        if (!r) {
            if (r.code() == errc::again) {
                break;
            }
            fail(r.code() == errc::closed ? "relay closed the tunnel" : _tx->tls().last_error());
            return;
        }
        auto m = _mux->receive(std::span<const std::byte>(_a->scratch.data(), *r), _a->now);
        if (!m || _bad_config) {
            _bad_config = false;
            _a->counters.add(connector_counter::protocol_errors);
            fail(m ? "malformed CONFIG from the relay" : m.err().detail);
            return;
        }
        if (_state == state::waiting) {
            return;
        }
    }
    mark_dirty();
}

void tunnel_link::on_hello_ack(const tunnel::hello_ack& a) {
    if (_state != state::hello_sent) {
        fail("HELLO_ACK out of order");
        return;
    }
    if (_worker != k_any_worker && a.worker_index != _worker && _worker < a.worker_count &&
        a.worker_index < a.worker_count) {
        redial_misplaced(a.worker_index);
        return;
    }
    _misplaced = 0;
    _state = state::ready;
    _attempt = 0;
    _silence_ns = 3ull * std::max<uint32_t>(a.ping_interval_ms, 100) * 1'000'000ull;
    _a->last_tunnel_ns = _a->now;
    _a->counters.add(connector_counter::tunnels_connected);
    _a->counters.set(connector_counter::tunnels_up,
                     _a->counters.get(connector_counter::tunnels_up) + 1);
    if (_worker == k_any_worker) {
        _worker = a.worker_index;
    }
    log::info("tunnel_up", {{"worker", _worker},
                            {"relay_workers", a.worker_count},
                            {"latest_version", a.latest_version}});
    {
        std::lock_guard lock(_a->status_mu);
        _a->latest_version = std::string(a.latest_version);
    }
    if (_a->group != nullptr) {
        // Every HELLO_ACK republishes the relay's worker count (it may change with a restart);
        // the first one of loop 0 also names the worker its first tunnel landed on.
        if (_a->index == 0 && _a->group->relay_workers.load(std::memory_order_acquire) == 0) {
            _a->group->first_worker.store(_worker, std::memory_order_release);
        }
        _a->group->relay_workers.store(a.worker_count, std::memory_order_release);
    }
    _a->ensure_links(a.worker_count);
}

void tunnel_link::on_open(uint32_t sid, std::string_view app, std::string_view target) {
    // The relay is trusted only as far as the configuration it sent: a target outside it is
    // refused here, whatever the OPEN says.
    if (!_a->config || !_a->config->allows(target)) {
        _a->counters.add(connector_counter::streams_not_allowed);
        log::info("open_refused",
                  {{"worker", _worker},
                   {"app", app},
                   {"target", target},
                   {"reason", "target not allowed by this connector's configuration"}});
        _mux->open_fail(sid, tunnel::reason::not_allowed,
                        "target not allowed by this connector's configuration");
        mark_dirty();
        return;
    }
    sockaddr_storage ss{};
    socklen_t len = 0;
    auto* b = new backend_conn(_a, this, sid);
    if (!io::resolve_host_port(std::string(target), &ss, &len) || !b->start(ss, len)) {
        delete b;
        _a->counters.add(connector_counter::streams_refused);
        _mux->open_fail(sid, tunnel::reason::unreachable, "cannot resolve or reach target");
        mark_dirty();
        return;
    }
    _streams.emplace(sid, b);
}

void tunnel_link::on_data(uint32_t sid, std::span<const std::byte> bytes) {
    auto it = _streams.find(sid);
    if (it != _streams.end()) {
        it->second->relay_data(bytes);
    }
}

void tunnel_link::on_fin(uint32_t sid) {
    auto it = _streams.find(sid);
    if (it != _streams.end()) {
        it->second->relay_fin();
    }
}

void tunnel_link::on_reset(uint32_t sid, tunnel::reason, std::string_view) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    backend_conn* b = it->second;
    _streams.erase(it);
    b->detach_tunnel();
    _a->counters.add(connector_counter::streams_reset);
    b->kill();
}

void tunnel_link::on_stream_closed(uint32_t sid) {
    auto it = _streams.find(sid);
    if (it == _streams.end()) {
        return;
    }
    backend_conn* b = it->second;
    _streams.erase(it);
    b->detach_tunnel();
    _a->counters.add(connector_counter::streams_closed);
    b->kill(); // both directions are done: closing now loses nothing
}

void tunnel_link::on_goaway(uint32_t, tunnel::reason r, std::string_view msg) {
    if (r == tunnel::reason::version_too_old) {
        log::error("connector_refused", {{"worker", _worker}, {"reason", msg}});
        _a->fatal_code = 4;
        return;
    }
    _a->counters.add(connector_counter::relay_goaways);
    log::info("relay_goaway", {{"worker", _worker}, {"reason", msg}});
}

void tunnel_link::on_config(uint64_t version, std::span<const std::byte> body) {
    auto c = tunnel::decode_connector_config(body);
    if (!c) {
        // Acted on after mux::receive returns: a bad CONFIG is a protocol error of the relay.
        _bad_config = true;
        return;
    }
    _a->counters.add(connector_counter::configs_received);
    const bool group_changed =
        !_a->config || _a->config->group != c->group || _a->config->tenant != c->tenant;
    if (group_changed || _a->config->backends != c->backends) {
        log::info("config_applied", {{"version", version},
                                     {"tenant", c->tenant},
                                     {"group", c->group},
                                     {"backends", c->backends.size()},
                                     {"group_changed", group_changed}});
    }
    std::lock_guard lock(_a->status_mu);
    _a->config = std::move(*c);
    _a->config_version = version;
}

void tunnel_link::drain() {
    if (_state != state::ready) {
        return;
    }
    _mux->goaway(tunnel::reason::shutting_down, "connector stopping");
    mark_dirty();
}

std::size_t tunnel_link::pull(uint32_t sid, std::span<std::byte> dst) {
    auto it = _streams.find(sid);
    return it == _streams.end() ? 0 : it->second->pull(dst);
}

void tunnel_link::service() {
    if (!_mux || (_state != state::ready && _state != state::hello_sent)) {
        return;
    }
    auto data = std::span<std::byte>(_a->scratch.data(), _a->scratch.size());
    if (!io::pump_tunnel(*_mux, *_tx, _pending, data)) {
        fail(_tx->tls().last_error());
    }
}

void tunnel_link::on_sent(io::conn_id, int res) {
    if (!_tx) {
        return;
    }
    if (!_tx->on_sent(res)) {
        fail("send to relay failed");
        return;
    }
    mark_dirty();
}

void tunnel_link::on_recv_end(io::conn_id, int res) {
    if (_notify_sent && _streams.empty()) {
        // The end of a stop: the relay closed after our close_notify. Not a failure.
        if (_state == state::ready) {
            _a->counters.set(connector_counter::tunnels_up,
                             _a->counters.get(connector_counter::tunnels_up) - 1);
        }
        release_connection();
        _state = state::waiting;
        return;
    }
    fail(res == 0 ? "relay closed the connection" : "connection to relay failed");
}

bool tunnel_link::flushed() const {
    if (!_tx || !_mux || (_state != state::ready && _state != state::hello_sent)) {
        return true;
    }
    return !dirty && _pending.fin.empty() && _pending.reset.empty() && !_mux->wants_produce() &&
           _tx->idle();
}

void tunnel_link::close_write() {
    if (_tx && _state != state::ready && _state != state::hello_sent) {
        release_connection(); // a dial or handshake in progress: nothing to say, just go
        _state = state::waiting;
        return;
    }
    if (!_tx || !flushed() || _fin_sent) {
        return;
    }
    if (!_notify_sent) {
        _notify_sent = true;
        _tx->tls().shutdown();
        _tx->flush();
        return;
    }
    // close_notify has left (flushed again): the FIN after it, so the relay reads both.
    _fin_sent = true;
    _a->loop->shutdown_write(_id);
}

void tunnel_link::fail(std::string_view why) {
    if (_state == state::waiting) {
        return;
    }
    if (_state == state::ready) {
        _a->counters.set(connector_counter::tunnels_up,
                         _a->counters.get(connector_counter::tunnels_up) - 1);
    }
    _a->counters.add(connector_counter::tunnel_failures);
    log::info("tunnel_down", {{"worker", _worker}, {"reason", why}, {"streams", _streams.size()}});
    for (auto& [sid, b] : _streams) {
        b->detach_tunnel();
        _a->counters.add(connector_counter::streams_reset);
        b->kill();
    }
    _streams.clear();
    _pending.fin.clear();
    _pending.reset.clear();
    release_connection();
    schedule_retry();
}

void tunnel_link::release_connection() {
    _a->loop->close(_id, false);
    _tx.reset();
    _mux.reset();
    if (dirty) {
        dirty = false;
        auto& d = _a->dirty;
        d.erase(std::remove(d.begin(), d.end(), this), d.end());
    }
}

// ------------------------------------------------------------------------------------ agent

std::string agent::status_json() const {
    std::lock_guard lock(status_mu);
    nlohmann::json j;
    nlohmann::json c = nlohmann::json::object();
    for (std::size_t i = 0; i < std::size_t(connector_counter::count_); ++i) {
        c[std::string(connector_counter_names[i])] = counters.get(i);
    }
    j["counters"] = c;
    j["id"] = opts.id;
    j["pid"] = int64_t(::getpid()); // the updater tells a successor's stats from ours
    j["relay"] = opts.relay;
    j["version"] = opts.version;
    j["latest_version"] = latest_version;
    j["config_version"] = config_version;
    j["tenant"] = config ? config->tenant : "";
    j["group"] = config ? config->group : "";
    j["tunnels_up"] = counters.get(connector_counter::tunnels_up);
    if (config && !config->relays.empty()) {
        // What the fleet manager (fleet.cc) chooses from: the relays CONFIG names.
        j["region"] = config->region;
        nlohmann::json fleet = nlohmann::json::array();
        for (const auto& r : config->relays) {
            fleet.push_back({{"node", r.node},
                             {"address", r.address},
                             {"region", r.region},
                             {"draining", r.draining}});
        }
        j["fleet"] = fleet;
    }
    return j.dump();
}

std::string agent::metrics_text() const {
    std::vector<uint64_t> values(std::size_t(connector_counter::count_));
    for (std::size_t i = 0; i < values.size(); ++i) {
        values[i] = counters.get(i);
    }
    std::lock_guard lock(status_mu);
    return metrics_for(values, config_version, 0);
}

void agent::write_stats() {
    if (http) {
        http->publish(metrics_text(), status_json());
    }
    if (!opts.stats_file.empty()) {
        write_file_atomically(opts.stats_file, status_json());
    }
}

int agent::run(const std::atomic<bool>& stop) {
    std::string why;
    if (!io::resolve_host_port(opts.relay, &relay_addr, &relay_len)) {
        log::error("config_invalid",
                   {{"relay", opts.relay}, {"reason", "cannot resolve HOST:PORT"}});
        return 2;
    }
    tls::client_options co;
    co.ca_pem_path = opts.ca_path;
    co.server_name = opts.server_name;
    co.client_cert = {opts.cert_path, opts.key_path};
    auto ctx = tls::client_context::create(co, &why);
    if (!ctx) {
        log::error("tls_invalid", {{"reason", why}});
        return 2;
    }
    tls_ctx = *ctx;
    auto l = io::uring_loop::create(
        io::loop_options{.entries = 1024, .buf_count = 512, .buf_size = 16384}, &why);
    if (!l) {
        log::error("io_failed", {{"reason", why}});
        return 2;
    }
    (*l)->set_coalescing(io::uring_loop::k_coalesce_events, uint64_t(opts.io_coalesce_us) * 1000);
    loop = std::move(*l);
    if (group != nullptr) {
        std::string pin_why;
        if (!core::pin_current_thread(group->cpus[index], &pin_why)) {
            log::error("pin_failed", {{"loop", index}, {"reason", pin_why}});
            return 2;
        }
    }
    if (!opts.metrics_listen.empty() && group == nullptr) {
        http = status_http::start(opts.metrics_listen, &why);
        if (!http) {
            log::error("metrics_failed", {{"reason", why}});
            return 2;
        }
        log::info("metrics_listening", {{"port", http->port()}});
    }
    now = mono_ns();
    last_tunnel_ns = now;
    if (index == 0) {
        links.push_back(std::make_unique<tunnel_link>(this, k_any_worker));
        links.back()->connect();
    }
    const bool own_stats = group == nullptr;
    uint64_t next_stats = 0;
    uint64_t drain_deadline = 0;
    bool flushing = false;
    std::size_t streams_cut = 0;
    uint64_t flush_deadline = 0;
    int code = 0;
    for (;;) {
        if (fatal_code != 0) {
            code = fatal_code;
            break;
        }
        if (group != nullptr && !draining) {
            // Loop 0 learns the relay's worker count from its first tunnel, and any loop's
            // HELLO_ACK updates it: each loop follows with its share of the workers.
            uint32_t w = group->relay_workers.load(std::memory_order_acquire);
            if (w > 0 && w != worker_count) {
                ensure_links(uint16_t(w));
                bool idle = std::all_of(links.begin(), links.end(),
                                        [](const auto& l) { return l->retired; });
                if (idle) {
                    log::info("loop_idle", {{"loop", index}, {"relay_workers", w},
                                            {"reason", "no relay worker of its own"}});
                }
            }
        }
        const bool stopping = stop.load(std::memory_order_relaxed) ||
                              (group != nullptr && group->stop.load(std::memory_order_relaxed));
        if (stopping && !draining) {
            draining = true;
            drain_deadline = now + uint64_t(opts.drain_deadline_ms) * 1'000'000ull;
            std::size_t streams = 0;
            for (auto& lk : links) {
                lk->drain();
                streams += lk->stream_count();
            }
            log::info("draining", {{"streams", streams}, {"deadline_ms", opts.drain_deadline_ms}});
        }
        if (draining && !flushing) {
            std::size_t streams = 0;
            for (auto& lk : links) {
                streams += lk->stream_count();
            }
            if (streams == 0 || now >= drain_deadline) {
                // The last frames of the last streams (and the GOAWAY) may still be queued:
                // they leave before the tunnels close, within k_flush_ns.
                flushing = true;
                streams_cut = streams;
                flush_deadline = now + k_flush_ns;
            }
        }
        if (flushing) {
            bool done = true;
            for (auto& lk : links) {
                lk->close_write();
                done = done && lk->closed();
            }
            if (done || now >= flush_deadline) {
                std::size_t unflushed = 0;
                for (auto& lk : links) {
                    unflushed += lk->flushed() ? 0 : 1;
                }
                log::info("stopped", {{"streams_cut", streams_cut},
                                      {"tunnels_unflushed", unflushed}});
                break;
            }
        }
        for (std::size_t i = 0; i < dirty.size(); ++i) {
            tunnel_link* t = dirty[i];
            t->dirty = false;
            t->service();
        }
        dirty.clear();
        // A backend connection closed with a send in flight: the kernel may read that send's
        // data until this run_once has submitted the cancel, so free it only after.
        reaping_backends.swap(dead_backends);
        uint64_t wait = dirty.empty() ? k_max_wait_ns : 0;
        loop->run_once(wait);
        for (auto* b : reaping_backends) {
            delete b;
        }
        reaping_backends.clear();
        now = mono_ns();
        bool any_up = false;
        for (std::size_t i = 0; i < links.size(); ++i) {
            auto& lk = links[i];
            if (lk->silent(now)) {
                lk->fail("relay stopped answering (no PING within 3 intervals)");
            }
            any_up = any_up || lk->ready();
            if (lk->waiting() && now >= lk->retry_at() && !draining && !lk->retired) {
                lk->connect();
            }
        }
        if (group != nullptr) {
            // One clock for every loop: an idle loop or one whose relay worker is down does not
            // give up while another loop has a tunnel.
            if (any_up) {
                group->last_tunnel_ns.store(now, std::memory_order_relaxed);
            }
            last_tunnel_ns = std::max(last_tunnel_ns,
                                      group->last_tunnel_ns.load(std::memory_order_relaxed));
        }
        if (any_up) {
            last_tunnel_ns = now;
        } else if (now - last_tunnel_ns > uint64_t(opts.give_up_after_ms) * 1'000'000ull) {
            log::error("giving_up",
                       {{"reason", "no tunnel to the relay"}, {"after_ms", opts.give_up_after_ms}});
            code = 3;
            break;
        }
        if (own_stats && (!opts.stats_file.empty() || http) && now >= next_stats) {
            next_stats = now + 200'000'000ull;
            write_stats();
        }
    }
    if (own_stats && !opts.stats_file.empty()) {
        write_stats();
    }
    if (group != nullptr) {
        group->stop.store(true, std::memory_order_relaxed);
    }
    return code;
}

namespace {

// The stats of a multi-loop connector: counters summed over the loops, the rest from loop 0
// (every loop gets the same CONFIG and HELLO_ACK versions from the one relay).
std::string group_status_json(const std::vector<std::unique_ptr<agent>>& loops,
                              std::string* metrics) {
    auto j = nlohmann::json::parse(loops[0]->status_json());
    std::vector<uint64_t> sum(std::size_t(connector_counter::count_), 0);
    nlohmann::json per_loop = nlohmann::json::array();
    for (const auto& a : loops) {
        for (std::size_t i = 0; i < sum.size(); ++i) {
            sum[i] += a->counters.get(i);
        }
        per_loop.push_back({{"tunnels_up", a->counters.get(connector_counter::tunnels_up)},
                            {"bytes_from_backend",
                             a->counters.get(connector_counter::bytes_from_backend)},
                            {"streams_opened", a->counters.get(connector_counter::streams_opened)}});
    }
    nlohmann::json c = nlohmann::json::object();
    for (std::size_t i = 0; i < sum.size(); ++i) {
        c[std::string(connector_counter_names[i])] = sum[i];
    }
    *metrics = metrics_for(sum, j.value("config_version", uint64_t(0)), loops.size());
    j["counters"] = c;
    j["tunnels_up"] = sum[std::size_t(connector_counter::tunnels_up)];
    j["loops"] = per_loop;
    return j.dump();
}

} // namespace

int run_agent(const agent_options& opts, const std::atomic<bool>& stop) {
    log::set_component("connector");
    if (opts.core_map.empty()) {
        agent a(opts);
        return a.run(stop);
    }
    std::string why;
    auto map = core::parse_core_map(opts.core_map, core::available_cpus(), &why);
    if (!map) {
        log::error("config_invalid", {{"core_map", opts.core_map}, {"reason", why}});
        return 2;
    }
    // The loops pin themselves; the control thread goes to its cpu once they are started
    // (threads inherit the creator's affinity).
    std::unique_ptr<status_http> http;
    if (!opts.metrics_listen.empty()) {
        http = status_http::start(opts.metrics_listen, &why);
        if (!http) {
            log::error("metrics_failed", {{"reason", why}});
            return 2;
        }
        log::info("metrics_listening", {{"port", http->port()}});
    }
    agent_group group;
    group.loops = uint16_t(map->worker_cpus.size());
    group.cpus = map->worker_cpus;
    group.last_tunnel_ns.store(mono_ns());
    std::vector<std::unique_ptr<agent>> loops;
    for (uint16_t i = 0; i < group.loops; ++i) {
        loops.push_back(std::make_unique<agent>(opts, i, &group));
    }
    std::vector<int> codes(loops.size(), 0);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < loops.size(); ++i) {
        threads.emplace_back([&, i] { codes[i] = loops[i]->run(stop); });
    }
    if (!core::pin_current_thread(map->control_cpu, &why)) {
        log::warn("pin_failed", {{"thread", "control"}, {"reason", why}});
    }
    log::info("loops_started", {{"loops", group.loops},
                                {"cpus", core::cpu_list_to_string(map->worker_cpus)}});
    auto publish = [&] {
        std::string metrics;
        std::string status = group_status_json(loops, &metrics);
        if (http) {
            http->publish(metrics, status);
        }
        if (!opts.stats_file.empty()) {
            write_file_atomically(opts.stats_file, status);
        }
    };
    while (!group.stop.load(std::memory_order_relaxed) && !stop.load(std::memory_order_relaxed)) {
        publish();
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    for (auto& t : threads) {
        t.join();
    }
    publish();
    for (int c : codes) {
        if (c != 0) {
            return c;
        }
    }
    return 0;
}

} // namespace apprelay::connector
