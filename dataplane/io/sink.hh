#pragma once
// The I/O backend concept: a per-worker loop owns sockets and reports completions to the
// socket's owner (a `sink`). Callbacks run on the loop's thread, never re-entrantly from a call
// the owner made into the loop (completions are only dispatched from run_once()).
#include <cstddef>
#include <cstdint>
#include <span>
#include <sys/socket.h>

namespace apprelay::io {

// Slot index + generation: a stale id (closed socket) never reaches a new owner.
struct conn_id {
    uint32_t index = UINT32_MAX;
    uint32_t gen = 0;
    bool valid() const noexcept { return index != UINT32_MAX; }
    friend bool operator==(conn_id, conn_id) = default;
};

class sink {
public:
    virtual ~sink() = default;
    // A listener accepted a connection, already in the loop with no owner: the owner takes it
    // (set_owner + start_recv) or closes it. `peer` is the remote address.
    virtual void on_accept(conn_id /*listener*/, conn_id /*conn*/,
                           const sockaddr_storage& /*peer*/) {}
    // Outbound connect finished: res 0 = connected, else -errno. The id stays valid either way
    // (close it on failure).
    virtual void on_connect(conn_id /*id*/, int /*res*/) {}
    // Received bytes; the span is valid only during the call.
    virtual void on_recv(conn_id /*id*/, std::span<const std::byte> /*data*/) {}
    // Receive side ended: 0 = orderly EOF, else -errno. No more on_recv after this.
    virtual void on_recv_end(conn_id /*id*/, int /*res*/) {}
    // A send() finished: res = bytes sent (may be short) or -errno.
    virtual void on_sent(conn_id /*id*/, int /*res*/) {}
    // detach() finished (backends that can hand over, loop.hh): no operation is in flight any
    // more; the fd now belongs to the owner.
    virtual void on_detached(conn_id /*id*/, int /*fd*/) {}
};

} // namespace apprelay::io
