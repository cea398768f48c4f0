#pragma once
// Ed25519 signatures (RFC 8032, "pure": the message itself is signed, no pre-hash) and SHA-256
// of byte strings: what signed connector update packages need (dataplane/connector/UPDATE.md).
// Keys are PEM as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write them.
// Start-up / CLI code only: allocates, never on the data path.
#include "dataplane/base/result.hh"

#include <cstddef>
#include <string>
#include <string_view>

namespace apprelay::tls {

// RFC 8032 section 5.1.6: a signature is R || S, 32 bytes each.
constexpr std::size_t k_ed25519_signature_size = 64;

struct ed25519_keys {
    std::string private_pem; // PKCS#8 "PRIVATE KEY"
    std::string public_pem;  // SubjectPublicKeyInfo "PUBLIC KEY"
};
result<ed25519_keys> ed25519_generate(std::string* why);

// The 64-byte signature of `msg` by the Ed25519 private key in `private_pem`.
// errc::invalid_argument (and *why) for a key that is not an Ed25519 private key.
result<std::string> ed25519_sign(std::string_view private_pem, std::string_view msg,
                                 std::string* why);

// Checks `sig` over `msg` with the Ed25519 public key in `public_pem` (a private key PEM is
// accepted too: its public half is used). errc::invalid_argument for a key that is not Ed25519,
// errc::cert_rejected when the signature does not verify (wrong key, tampered message, or a
// signature that is not 64 bytes).
result<void> ed25519_verify(std::string_view public_pem, std::string_view msg, std::string_view sig,
                            std::string* why);

// SHA-256 of `data` as 64 lowercase hex characters.
std::string sha256_hex(std::string_view data);

} // namespace apprelay::tls
