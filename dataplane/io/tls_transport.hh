#pragma once
// TLS as a transport below the stream mux: moves ciphertext between a tls::session and one socket
// of an io::loop, with at most one send in flight.
//
// Zero copy between session and socket: the session buffers its output in chunks that stay in
// place until consumed (tls/session.hh), so a send points straight at pending_output() and the
// sent bytes are consumed only on completion. Bytes the session writes meanwhile go after them.
// The chunks come from a per-worker pool and are held only while they hold bytes, so idle
// connections hold none.
#include "dataplane/io/loop.hh"
#include "tls/session.hh"

#include <memory>

namespace apprelay::io {

// Per-worker pool of the chunks sessions buffer ciphertext in and send from (single thread, no
// locks). It must outlive the transports using it.
using send_buffer_pool = tls::chunk_pool;

// States: idle (nothing pending) -> pending (ciphertext in the session, no send) -> sending (the
// first _in_flight pending bytes are with the kernel) -> consumed on completion -> pending/idle.
class tls_transport {
public:
    tls_transport(io::loop* l, conn_id id, std::unique_ptr<tls::session> s,
                  send_buffer_pool* pool)
        : _loop(l), _id(id), _tls(std::move(s)) {
        _tls->use_chunk_pool(pool);
    }
    tls_transport(const tls_transport&) = delete;
    tls_transport& operator=(const tls_transport&) = delete;
    // A new owner on the same loop takes the connection over (set_owner), with its session and
    // any send in flight (its bytes stay in the session's chunks, which do not move).
    tls_transport(tls_transport&&) noexcept = default;

    tls::session& tls() noexcept { return *_tls; }
    const tls::session& tls() const noexcept { return *_tls; }
    conn_id id() const noexcept { return _id; }
    // After a hand-over to another worker's loop (nothing may be in flight or pending).
    void rebind(io::loop* l, conn_id id, send_buffer_pool* pool);

    // Start a send if none is in flight and ciphertext is waiting.
    void flush();
    // Completion of our send: false = the socket failed (res < 0).
    bool on_sent(int res);
    bool send_in_flight() const noexcept { return _in_flight != 0; }
    // Ciphertext not yet handed to the kernel plus bytes in flight.
    std::size_t queued() const noexcept { return _tls->pending_output_size(); }
    bool idle() const noexcept { return _in_flight == 0 && _tls->pending_output_size() == 0; }

private:
    io::loop* _loop;
    conn_id _id;
    std::unique_ptr<tls::session> _tls;
    std::size_t _in_flight = 0; // first bytes of the session's output the kernel is sending
};

} // namespace apprelay::io
