#pragma once
// One relay data-plane worker: a pinned thread running a run-to-completion loop over its own
// io_uring, its user sessions, its tunnels and its counters. Nothing here is shared with other
// workers except the hand-over rings (tunnels that landed on the wrong worker, once, at setup).
//
// Loop iteration: reap completions (TLS decrypt, decode frames, route) -> service dirty tunnels
// (produce frames, TLS encrypt, submit sends) -> hand-over rings -> timers -> wait.
#include "dataplane/core/rcu_cell.hh"
#include "dataplane/core/spsc_ring.hh"
#include "dataplane/core/timer_wheel.hh"
#include "dataplane/io/tls_transport.hh"
#include "dataplane/io/loop.hh"
#include "dataplane/relay/counters.hh"
#include "dataplane/relay/source_budget.hh"
#include "dataplane/relay/snapshot.hh"
#include "tls/context.hh"

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace apprelay::relay {

class tunnel_conn;
class user_conn;
class peer_link;

// What the control thread publishes to every worker (RCU): the snapshot and the TLS contexts
// built from it. Sessions keep their SSL_CTX alive on their own, so a context may be replaced
// while handshakes made with it are still running.
struct relay_config {
    std::shared_ptr<const snapshot> snap;
    std::shared_ptr<tls::server_context> user_tls;   // SNI -> app certificates
    std::shared_ptr<tls::server_context> tunnel_tls; // mutual TLS, tenant CAs (+ relay CA)
    // Fleet: this relay as a client of its peers (certificate from the relay CA, the peer's
    // chain pinned to it). Null: no forwarding hop.
    std::shared_ptr<tls::client_context> peer_tls;
    // Control plane only (no worker reads it): the enrollment listener's context, asking every
    // client for an optional certificate verified against the tenant CAs, so that registered
    // connectors can make their requests there (control/enroll/PROTOCOL.md).
    std::shared_ptr<tls::server_context> service_tls;
};
using config_cell = core::rcu_cell<relay_config>;

// Worker -> control thread: a connector's tunnel came up (after HELLO) or went away. The
// control thread turns these into connector status (active while any tunnel is up).
struct tunnel_event {
    // draining: a routed tunnel whose connector sent GOAWAY (after its `down`): it stays open
    // while its streams finish; drained: that tunnel closed.
    enum class kind : uint8_t { up, down, draining, drained };
    kind what = kind::up;
    char connector_id[40] = {}; // NUL-terminated
    char version[24] = {};      // connector version from HELLO (up only)
};

struct handoff_msg {
    tunnel_conn* tunnel = nullptr; // ownership moves with the message
    int fd = -1;
};

class worker {
public:
    worker(uint16_t index, uint16_t worker_count, config_cell* config);
    ~worker();
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    // Wiring, before run(): the listeners (uring: sockets already bound with SO_REUSEPORT), the
    // I/O backend, and the rings to and from the other workers (inbound[i] is the ring from
    // worker i, outbound[i] to worker i).
    void set_listeners(io::listen_spec user, io::listen_spec tunnel) {
        _user_listen = user;
        _tunnel_listen = tunnel;
    }
    // Makes this worker's loop, on the worker thread (io_uring and DPDK queues are per thread).
    // Without one the worker runs on io_uring.
    using loop_factory = std::function<result<std::unique_ptr<io::loop>>(uint16_t worker,
                                                                         std::string* why)>;
    void set_loop_factory(loop_factory f) { _make_loop = std::move(f); }
    void set_peers(std::vector<worker*> peers, std::vector<core::spsc_ring<handoff_msg>*> inbound,
                   std::vector<core::spsc_ring<handoff_msg>*> outbound);

    // The thread body. Returns when stop is requested and drained (or the drain deadline passed).
    // On setup failure returns false with *why.
    bool run(const std::atomic<bool>& stop, std::string* why);
    void wake() noexcept;

    uint16_t index() const noexcept { return _index; }
    const relay_counter_block& counters() const noexcept { return _counters; }
    // Tunnel up/down events for the control thread (single consumer).
    core::spsc_ring<tunnel_event>& events() noexcept { return _events; }

private:
    friend class tunnel_conn;
    friend class user_conn;
    friend class peer_link;
    class listener_sink;

    void on_user_accept(io::conn_id id, const sockaddr_storage& peer);
    // [limits] source_*: this worker's share (configured / workers), from the snapshot.
    void apply_source_limits();
    void throttled(const source_key& k, source_budget::verdict v);
    // A stream cut at the idle limit: logged at most once a second, with the count since.
    void idle_cut(std::string_view app, uint64_t idle_ms);
    void on_tunnel_accept(io::conn_id id);
    // [limits] io_coalesce_us, where the backend has completion coalescing (uring).
    void apply_coalescing();
    void drain_handoffs();
    void service_dirty();
    void reap();
    void mark_dirty(tunnel_conn* t);
    // A ready tunnel of the group on this worker for a new stream, never one of `exclude`'s
    // connectors; nullptr when there is none.
    tunnel_conn* pick_tunnel(uint32_t group, const std::vector<std::string>* exclude);
    // Routed tunnels of one connector on this worker.
    uint32_t tunnels_of(const std::string& connector) const {
        auto it = _tunnels_per_connector.find(connector);
        return it == _tunnels_per_connector.end() ? 0 : it->second;
    }
    void tunnel_ready(tunnel_conn* t);
    void tunnel_gone(tunnel_conn* t);
    void handoff(tunnel_conn* t, int fd);
    void bury(tunnel_conn* t);
    void bury(user_conn* u);
    void bury(peer_link* p);
    // A peer relay's connection on the tunnel listener (its certificate chains to the relay CA):
    // it becomes a forwarded user stream on this relay, after its header line.
    void peer_in(io::tls_transport&& tx);
    // _now from the clock; a gap of more than k_stall_ns since the last reading means this
    // worker did not run (SIGSTOP...): PING deadlines restart from here (_resumed_ns).
    void advance_clock();
    uint64_t ms_from_now(uint32_t ms) const noexcept { return _now + uint64_t(ms) * 1'000'000ull; }
    const snapshot& snap() const noexcept { return *_cfg->snap; }
    void refresh_config();
    void apply_config();
    void emit(tunnel_event::kind what, std::string_view connector, std::string_view version);
    void flush_events();
    void begin_drain();
    void drain_step(bool deadline_passed);

    const uint16_t _index;
    const uint16_t _worker_count;
    config_cell::reader _cfg;
    core::spsc_ring<tunnel_event> _events;
    std::vector<tunnel_event> _event_backlog; // ring full: kept in order, retried each loop
    loop_factory _make_loop;
    std::unique_ptr<io::loop> _loop;
    // _loop as wake() sees it from other threads (the control thread, peer workers): stored with
    // release once run() has built the loop, so a waker never reads a half-built one. Null
    // before: that wake is not needed, run() refreshes the config and drains the hand-over
    // rings in every iteration, and sleeps at most k_max_wait_ns.
    std::atomic<io::loop*> _wake_target{nullptr};
    std::unique_ptr<core::timer_wheel> _wheel; // created on the worker thread in run()
    io::send_buffer_pool _pool;
    relay_counter_block _counters;
    std::unique_ptr<listener_sink> _user_listener;
    std::unique_ptr<listener_sink> _tunnel_listener;
    io::conn_id _user_listen_id{};
    io::conn_id _tunnel_listen_id{};
    io::listen_spec _user_listen;
    io::listen_spec _tunnel_listen;
    std::vector<worker*> _peers;
    std::vector<core::spsc_ring<handoff_msg>*> _inbound;
    std::vector<core::spsc_ring<handoff_msg>*> _outbound;

    // Ready tunnels by group index (routing table of this worker).
    std::vector<std::vector<tunnel_conn*>> _by_group;
    std::unordered_map<std::string, uint32_t> _tunnels_per_connector; // routed tunnels
    std::vector<tunnel_conn*> _dirty;
    std::vector<tunnel_conn*> _tunnels;      // every live tunnel (for shutdown)
    std::vector<user_conn*> _users;          // every live user connection
    std::vector<peer_link*> _links;          // every live connection to a peer relay
    // Closed connections. A send still in flight when its socket was closed keeps pointing at
    // the connection's TLS output until the loop's next run_once has submitted the cancel (the
    // kernel may even finish that send inside it). So a connection buried during a pass is
    // moved to _reap_* right before run_once and freed right after it.
    std::vector<tunnel_conn*> _dead_tunnels;
    std::vector<user_conn*> _dead_users;
    std::vector<tunnel_conn*> _reap_tunnels;
    std::vector<user_conn*> _reap_users;
    std::vector<peer_link*> _dead_links;
    std::vector<peer_link*> _reap_links;
    std::vector<std::byte> _scratch; // plaintext: decrypt target and frame assembly
    bool _draining = false;
    // Opens and aborts charged to each user's source address (source_budget.hh).
    source_budget _sources;
    uint64_t _sources_swept_ns = 0;
    uint64_t _trimmed_ns = 0; // buffer pool trim, every 5 s
    uint64_t _throttle_logged_ns = 0; // source_throttled is logged at most once a second
    uint64_t _throttled_unlogged = 0; // refusals since that line
    uint64_t _full_logged_ns = 0;     // user_connections_full: at most once a second
    uint64_t _idle_logged_ns = 0;     // stream_idle_timeout: at most once a second
    uint64_t _idle_unlogged = 0;
    uint64_t _user_buffered = 0;      // [limits] user_buffer_budget_mb: held for users
    uint64_t _budget_logged_ns = 0;   // user_buffer_budget_full: at most once a second
    uint64_t _budget_unlogged = 0;
    uint64_t _now = 0;
    uint64_t _resumed_ns = 0; // the last pass after a stall of the worker itself (k_stall_ns)
    uint64_t _rng = 0x9e3779b97f4a7c15ull; // xorshift state for tunnel choice, seeded per worker
};

} // namespace apprelay::relay
