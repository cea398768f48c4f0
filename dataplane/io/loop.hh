#pragma once
// The I/O seam: one event loop per worker thread that owns connections and reports completions
// to each connection's owner (a `sink`, sink.hh). dataplane/relay and dataplane/connector use
// only this interface; a backend implements it:
//   - uring (uring/loop.hh): kernel sockets on one io_uring per worker; runs anywhere.
//   - dpdk (dpdk/loop.hh): a DPDK port queue per worker under apprelay's own TCP/IP (net/).
//
// Contract for every backend (the relay's and connector's correctness rests on it):
//   - Callbacks run on the loop's thread, only from run_once(), never re-entrantly from a call
//     the owner made into the loop.
//   - At most one send in flight per connection; its data stays valid and unchanged until
//     on_sent(n): the backend no longer reads the first n bytes (they are written to a kernel
//     socket buffer, or transmitted with the unACKed ones copied, not necessarily ACKed). A
//     short n means: the next send() begins with the remaining bytes, unchanged (a backend may
//     already have transmitted some of them, e.g. a user-space TCP whose window closed).
//   - close(): no callbacks for that id afterwards. The owner may free the data of a send that
//     was in flight right after the next run_once returns (not before).
//   - An accepted connection is reported once through on_accept with no owner: the listener's
//     owner takes it (set_owner + start_recv) or closes it (abort = RST, before any TLS work).
#include "dataplane/base/result.hh"
#include "dataplane/io/sink.hh"

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <sys/socket.h>

namespace apprelay::io {

// What a listener binds. uring: `fd`, a socket the caller bound (SO_REUSEPORT, one per
// worker) so that bind errors surface at start-up; dpdk: `port` on the DPDK port's address.
struct listen_spec {
    int fd = -1;
    uint16_t port = 0; // host byte order
};

class loop {
public:
    virtual ~loop() = default;
    // "uring" or "dpdk": for logs and metrics labels.
    virtual std::string_view backend() const noexcept = 0;

    virtual result<conn_id> listen(const listen_spec& spec, sink* owner) = 0;
    // Non-blocking connect; on_connect reports the outcome.
    virtual result<conn_id> connect(const sockaddr* addr, socklen_t len, sink* owner) = 0;
    virtual void set_owner(conn_id id, sink* owner) = 0;

    virtual void start_recv(conn_id id) = 0;
    virtual void pause_recv(conn_id id) = 0;
    virtual bool recv_wanted(conn_id id) const = 0;
    // False if a send is already in flight or the id is stale.
    virtual bool send(conn_id id, std::span<const std::byte> data) = 0;
    virtual bool send_in_flight(conn_id id) const = 0;
    // abort = the peer sees a reset, not a clean end of stream.
    virtual void close(conn_id id, bool abort) = 0;
    void close(conn_id id) { close(id, false); }
    // Half close (FIN after what was sent); receiving goes on.
    virtual void shutdown_write(conn_id id) = 0;

    // Moving a connection to another worker's loop (a tunnel that landed on the wrong worker).
    // Only where the connection is a kernel socket: detach() ends with on_detached(id, fd) and
    // the other loop adopt()s the fd. Backends whose connections live in a per-core stack return
    // false and keep every connection on the worker that accepted it.
    virtual bool can_hand_over() const noexcept = 0;
    virtual void detach(conn_id id) = 0;
    virtual result<conn_id> adopt(int fd, sink* owner) = 0;

    // Submit queued work, wait up to timeout_ns for at least one completion (0 = poll), dispatch
    // every available completion. Returns completions dispatched.
    virtual unsigned run_once(uint64_t timeout_ns) = 0;
    // Thread-safe: makes a waiting run_once return soon and calls the wake handler on the loop.
    virtual void wake() noexcept = 0;
    virtual void set_wake_handler(std::function<void()> fn) = 0;
    // Connections and listeners not yet fully closed.
    virtual std::size_t open_sockets() const noexcept = 0;
};

} // namespace apprelay::io
