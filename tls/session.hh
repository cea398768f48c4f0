#pragma once
// A TLS session on memory BIOs: it never touches a socket. The owner moves ciphertext between
// the socket and the session:
//
//   socket bytes in  -> feed(ciphertext)         -> handshake() / read(plaintext)
//   write(plaintext) -> pending_output() / consume_output(n) -> socket bytes out
//
// State summary: handshaking -> established -> (peer close_notify: read() returns errc::closed)
// or failed (any errc::tls_error / cert_rejected is final; the owner closes the connection).
// WANT_READ maps to errc::again. No exceptions; no allocation per record beyond OpenSSL's own.
//
// Both directions buffer in chunks that never move (tls/detail/chunk_bio.hh): feed() and write()
// copy once into them, consume_output() drops a sent prefix in O(1), and pending_output() stays in
// place until consumed, so a socket send may point straight into it while more is written.
#include "dataplane/base/result.hh"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::tls {

namespace detail {
struct chunk;
class chunk_fifo;
} // namespace detail

// Buffer chunks kept for reuse by one thread (no locks; one per worker), so the memory sessions
// buffer ciphertext in stays warm. A session takes its chunks from here once given the pool; the
// pool must outlive it, or the session is moved to another pool (use_chunk_pool) while its output
// is empty.
class chunk_pool {
public:
    static constexpr std::size_t k_chunk_bytes = 64 * 1024; // ~4 TLS records: one send
    static constexpr std::size_t k_max_free = 256;          // 16 MiB kept; a burst's rest is freed
    chunk_pool() = default;
    ~chunk_pool();
    chunk_pool(const chunk_pool&) = delete;
    chunk_pool& operator=(const chunk_pool&) = delete;

    detail::chunk* get() noexcept; // nullptr = out of memory
    void put(detail::chunk* c) noexcept;
    std::size_t free_chunks() const noexcept { return _free_count; }
    // Frees the chunks that stayed unused since the last call (the fewest free at any moment
    // since then), keeping `keep`: memory taken for a burst goes back once the burst is over.
    // Returns the chunks freed.
    std::size_t trim_unused(std::size_t keep) noexcept;

private:
    detail::chunk* _free = nullptr; // intrusive list through chunk::next
    std::size_t _free_count = 0;
    std::size_t _min_free = 0; // since the last trim_unused
};

class session {
public:
    explicit session(void* ssl) noexcept; // takes ownership of SSL*; use the contexts instead
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    // Append received ciphertext. Never fails short: the input grows (the owner bounds it by
    // pausing its socket reads when buffered_input() is large).
    void feed(std::span<const std::byte> ciphertext) noexcept;
    std::size_t buffered_input() const noexcept;

    // Drive the handshake. ok = established; errc::again = needs more input (flush output
    // first); errc::tls_error / errc::cert_rejected / errc::unknown_app = failed (output may hold
    // an alert: flush it before closing).
    result<void> handshake() noexcept;
    bool established() const noexcept;

    // Decrypt into dst. Returns bytes (>0); errc::again = no complete record; errc::closed =
    // peer sent close_notify; errc::tls_error = failed.
    result<std::size_t> read(std::span<std::byte> dst) noexcept;
    // Plaintext bytes already decrypted and buffered inside OpenSSL (SSL_pending).
    std::size_t pending_plaintext() const noexcept;

    // Encrypt all of src into the output (records of up to 16 KiB). Returns src.size() or an
    // error; never partial (SSL_MODE_ENABLE_PARTIAL_WRITE is off, the output grows).
    result<std::size_t> write(std::span<const std::byte> src) noexcept;
    // Queue close_notify into the output.
    void shutdown() noexcept;

    // Ciphertext waiting to go to the socket: a contiguous view, a prefix of all of it (at most
    // one chunk). Its bytes stay in place and unchanged until consumed, whatever is written
    // meanwhile. consume_output(n) drops the first n bytes: O(1) within the view.
    std::span<const std::byte> pending_output() const noexcept;
    std::size_t pending_output_size() const noexcept;
    void consume_output(std::size_t n) noexcept;
    // Take buffer chunks from pool (nullptr: the allocator). See chunk_pool for the lifetime.
    void use_chunk_pool(chunk_pool* pool) noexcept;

    // After the handshake:
    std::string_view sni() const noexcept; // server side: the name the client sent
    // server side with SNI entries: index of the matched sni_entry (app_index), or -1
    int64_t sni_index() const noexcept;
    // SHA-256 fingerprint (64 hex) of the verified peer leaf certificate; empty if none.
    std::string peer_fingerprint() const;
    // Subject CN of the verified peer certificate; empty if none.
    std::string peer_common_name() const;
    // SHA-256 (64 hex) of the trust anchor the peer certificate verified against; empty if the
    // peer sent none or it did not verify.
    std::string peer_root_fingerprint() const;
    // Why the peer has no verified certificate, for logs: "" (it has one), "no certificate", or
    // the verify error ("certificate has expired", ...).
    std::string peer_certificate_problem() const;
    // Subject OU values of the verified peer certificate (user groups); empty if none.
    std::vector<std::string> peer_organizational_units() const;
    // Human-readable reason of the last failure (OpenSSL error queue + verify result), for logs.
    std::string last_error() const;

private:
    void* _ssl;
    detail::chunk_fifo* _in;  // ciphertext received, owned by the SSL's read BIO
    detail::chunk_fifo* _out; // ciphertext to send, owned by the SSL's write BIO
    mutable std::string _last_error;
};

} // namespace apprelay::tls
