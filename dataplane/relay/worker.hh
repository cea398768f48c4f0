#pragma once
// One relay data-plane worker: a pinned thread running a run-to-completion loop over its own
// io_uring, its user sessions, its tunnels and its counters. Nothing here is shared with other
// workers except the hand-over rings (tunnels that landed on the wrong worker, once, at setup).
//
// Loop iteration: reap completions (TLS decrypt, decode frames, route) -> service dirty tunnels
// (produce frames, TLS encrypt, submit sends) -> hand-over rings -> timers -> wait.
#include "dataplane/core/spsc_ring.hh"
#include "dataplane/core/timer_wheel.hh"
#include "dataplane/io/tls_transport.hh"
#include "dataplane/io/uring/loop.hh"
#include "dataplane/relay/counters.hh"
#include "dataplane/relay/snapshot.hh"
#include "tls/context.hh"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace apprelay::relay {

class tunnel_conn;
class user_conn;

// What every worker reads; built by the control thread before the workers start.
struct worker_shared {
    std::shared_ptr<const snapshot> snap;
    std::shared_ptr<tls::server_context> user_tls;   // SNI -> app certificates
    std::shared_ptr<tls::server_context> tunnel_tls; // mutual TLS, tenant CAs
    uint16_t worker_count = 1;
};

struct handoff_msg {
    tunnel_conn* tunnel = nullptr; // ownership moves with the message
    int fd = -1;
};

class worker {
public:
    worker(uint16_t index, const worker_shared& shared);
    ~worker();
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    // Wiring, before run(): listening sockets (already bound with SO_REUSEPORT) and the rings to
    // and from the other workers (inbound[i] is the ring from worker i, outbound[i] to worker i).
    void set_listeners(int user_fd, int tunnel_fd) {
        _user_listen_fd = user_fd;
        _tunnel_listen_fd = tunnel_fd;
    }
    void set_peers(std::vector<worker*> peers, std::vector<core::spsc_ring<handoff_msg>*> inbound,
                   std::vector<core::spsc_ring<handoff_msg>*> outbound);

    // The thread body. Returns when stop is requested and drained (or the drain deadline passed).
    // On setup failure returns false with *why.
    bool run(const std::atomic<bool>& stop, std::string* why);
    void wake() noexcept;

    uint16_t index() const noexcept { return _index; }
    const relay_counter_block& counters() const noexcept { return _counters; }
    // Tunnels per connector index held by this worker (single writer, read by control).
    uint32_t tunnels_of(uint32_t connector) const noexcept;

private:
    friend class tunnel_conn;
    friend class user_conn;
    class listener_sink;

    void on_user_accept(int fd);
    void on_tunnel_accept(int fd);
    void drain_handoffs();
    void service_dirty();
    void reap();
    void mark_dirty(tunnel_conn* t);
    tunnel_conn* pick_tunnel(uint32_t group);
    void tunnel_ready(tunnel_conn* t);
    void tunnel_gone(tunnel_conn* t);
    void handoff(tunnel_conn* t, int fd);
    void bury(tunnel_conn* t);
    void bury(user_conn* u);
    uint64_t ms_from_now(uint32_t ms) const noexcept { return _now + uint64_t(ms) * 1'000'000ull; }
    void begin_drain();
    void drain_step(bool deadline_passed);

    const uint16_t _index;
    worker_shared _shared;
    std::unique_ptr<io::uring_loop> _loop;
    std::unique_ptr<core::timer_wheel> _wheel; // created on the worker thread in run()
    io::send_buffer_pool _pool;
    relay_counter_block _counters;
    std::unique_ptr<std::atomic<uint32_t>[]> _tunnels_by_connector;
    std::unique_ptr<listener_sink> _user_listener;
    std::unique_ptr<listener_sink> _tunnel_listener;
    io::conn_id _user_listen_id{};
    io::conn_id _tunnel_listen_id{};
    int _user_listen_fd = -1;
    int _tunnel_listen_fd = -1;
    std::vector<worker*> _peers;
    std::vector<core::spsc_ring<handoff_msg>*> _inbound;
    std::vector<core::spsc_ring<handoff_msg>*> _outbound;

    // Ready tunnels by group index (routing table of this worker).
    std::vector<std::vector<tunnel_conn*>> _by_group;
    std::vector<tunnel_conn*> _dirty;
    std::vector<tunnel_conn*> _tunnels;      // every live tunnel (for shutdown)
    std::vector<user_conn*> _users;          // every live user connection
    std::vector<tunnel_conn*> _dead_tunnels; // freed at the end of the iteration
    std::vector<user_conn*> _dead_users;
    std::vector<std::byte> _scratch; // plaintext: decrypt target and frame assembly
    bool _draining = false;
    uint64_t _now = 0;
};

} // namespace apprelay::relay
