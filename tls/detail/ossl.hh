#pragma once
// Private helpers shared by tls/*.cc: OpenSSL error-queue draining, ex_data slots, hex digests.
// Not part of the public interface; nothing outside tls/ includes this.
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <string>

namespace apprelay::tls::detail {

// Appends every queued OpenSSL error ("...: reason") to *out, separated by "; ", and empties the
// thread's queue so the next session on this thread starts clean. Returns true if any error
// in the queue had one of the given SSL reason codes (0 = none wanted).
bool drain_errors(std::string* out, int want_reason_a = 0, int want_reason_b = 0);

// "what path: reason" for creation errors; drains the queue.
std::string describe(const char* what, const std::string& path);

// A random positive serial of 127 bits (RFC 5280 4.1.2.2: positive, at most 20 octets; the top
// byte is never zero, so the encoding is never shorter than it looks). False on RNG failure.
bool random_serial(X509* cert);

// SHA-256 of the DER encoding as 64 lowercase hex chars; empty on failure.
std::string sha256_hex(X509* cert);

// ex_data slots, allocated once per process (thread-safe static initialisation).
// SSL slot: app_index + 1 of the SNI entry the servername callback picked (0 = none).
int ssl_app_index_slot();
// SSL slot: non-null when the servername callback refused the handshake (unknown SNI).
int ssl_unknown_sni_slot();

} // namespace apprelay::tls::detail
