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
#include "dataplane/base/result.hh"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::tls {

class session {
public:
    explicit session(void* ssl) noexcept; // takes ownership of SSL*; use the contexts instead
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    // Append received ciphertext. Never fails short: the memory BIO grows (the owner bounds it
    // by pausing its socket reads when buffered_input() is large).
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

    // Encrypt all of src into the output BIO (records of up to 16 KiB). Returns src.size() or an
    // error; never partial (SSL_MODE_ENABLE_PARTIAL_WRITE is off, the memory BIO grows).
    result<std::size_t> write(std::span<const std::byte> src) noexcept;
    // Queue close_notify into the output.
    void shutdown() noexcept;

    // Ciphertext waiting to go to the socket: a contiguous view (may be a prefix of all of it).
    std::span<const std::byte> pending_output() const noexcept;
    std::size_t pending_output_size() const noexcept;
    void consume_output(std::size_t n) noexcept;

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
    // Subject OU values of the verified peer certificate (user groups); empty if none.
    std::vector<std::string> peer_organizational_units() const;
    // Human-readable reason of the last failure (OpenSSL error queue + verify result), for logs.
    std::string last_error() const;

private:
    void* _ssl;
    void* _rbio;
    void* _wbio;
    mutable std::string _last_error;
};

} // namespace apprelay::tls
