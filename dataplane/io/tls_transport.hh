#pragma once
// TLS as a transport below the stream mux: moves ciphertext between a tls::session (memory BIOs)
// and one socket of a uring_loop, with at most one send in flight.
//
// Why a copy into a pooled send buffer: OpenSSL's memory BIO may move or reallocate its bytes
// when more records are written, and the kernel reads the send buffer asynchronously, so the
// in-flight bytes must live in memory the session never touches. The buffers are pooled per
// worker and held only while a send is in flight, so idle connections hold none.
#include "dataplane/io/uring/loop.hh"
#include "tls/session.hh"

#include <memory>
#include <vector>

namespace apprelay::io {

// Per-worker pool of send buffers (single thread, no locks).
class send_buffer_pool {
public:
    static constexpr std::size_t k_buffer_size = 64 * 1024; // 4 full TLS records per send
    std::vector<std::byte>* get();
    void put(std::vector<std::byte>* b);
    ~send_buffer_pool();

private:
    std::vector<std::vector<std::byte>*> _free;
};

class tls_transport {
public:
    tls_transport(uring_loop* loop, conn_id id, std::unique_ptr<tls::session> s,
                  send_buffer_pool* pool)
        : _loop(loop), _id(id), _tls(std::move(s)), _pool(pool) {}
    ~tls_transport();
    tls_transport(const tls_transport&) = delete;
    tls_transport& operator=(const tls_transport&) = delete;

    tls::session& tls() noexcept { return *_tls; }
    const tls::session& tls() const noexcept { return *_tls; }
    conn_id id() const noexcept { return _id; }
    uring_loop* loop() const noexcept { return _loop; }
    // After a hand-over to another worker's loop (nothing may be in flight).
    void rebind(uring_loop* loop, conn_id id, send_buffer_pool* pool);

    // Start a send if none is in flight and ciphertext is waiting.
    void flush();
    // Completion of our send: false = the socket failed (res < 0).
    bool on_sent(int res);
    bool send_in_flight() const noexcept { return _buf != nullptr; }
    // Ciphertext not yet handed to the kernel plus bytes in flight.
    std::size_t queued() const noexcept;
    bool idle() const noexcept { return _buf == nullptr && _tls->pending_output_size() == 0; }

private:
    void release();

    uring_loop* _loop;
    conn_id _id;
    std::unique_ptr<tls::session> _tls;
    send_buffer_pool* _pool;
    std::vector<std::byte>* _buf = nullptr; // in flight: bytes [_off, _len)
    std::size_t _off = 0;
    std::size_t _len = 0;
};

} // namespace apprelay::io
