#pragma once
// PEM and random helpers the store needs and tls/ does not offer: certificate fingerprints,
// certificate/key pair checks, random hex ids and constant-time digest comparison.
#include "dataplane/base/result.hh"

#include <cstddef>
#include <string>
#include <string_view>

namespace apprelay::control {

// SHA-256 of the first certificate's DER, 64 lowercase hex.
result<std::string> cert_fingerprint(std::string_view cert_pem);
// The certificate and the private key both parse and the key is the certificate's key.
result<void> check_cert_key_pair(std::string_view cert_pem, std::string_view key_pem);
// `bytes` bytes from the OpenSSL CSPRNG as 2*bytes lowercase hex.
result<std::string> random_hex(std::size_t bytes);
// SHA-256 of `data`, 32 raw bytes.
std::string sha256(std::string_view data);
// Constant-time equality (CRYPTO_memcmp) of two byte strings of the same length.
bool equal_const_time(std::string_view a, std::string_view b);

} // namespace apprelay::control
