#pragma once
// Signed connector update packages (UPDATE.md): a directory holding
//   manifest.json       {"format":1,"name":"apprelay-connector","version":"V","arch":"x86_64",
//                        "size":N,"sha256":"<64 hex>"}
//   manifest.sig        64 bytes: Ed25519 over the exact bytes of manifest.json
//   apprelay-connector  the binary the manifest pins (size and SHA-256)
// Building one (`update-sign`) and checking one (`update`). Start-up / CLI code: allocates,
// reports through result<> and a message naming the problem, no exceptions.
#include "dataplane/base/result.hh"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace apprelay::connector {

constexpr std::string_view k_manifest_file = "manifest.json";
constexpr std::string_view k_signature_file = "manifest.sig";
constexpr std::string_view k_binary_file = "apprelay-connector";
constexpr std::string_view k_package_name = "apprelay-connector";
constexpr int k_package_format = 1;

struct manifest {
    std::string name = std::string(k_package_name);
    std::string version;
    std::string arch; // normalized machine name (normalize_arch)
    uint64_t size = 0;
    std::string sha256; // lowercase hex of the binary
};

// uname(2) machine names, with the Debian names folded onto them: amd64 -> x86_64,
// arm64 -> aarch64.
std::string normalize_arch(std::string_view arch);
// This host's machine, normalized.
std::string host_arch();

// The manifest's JSON text: exactly the bytes that are signed.
std::string manifest_text(const manifest& m);
// errc::protocol_error and *why for text that is not the manifest of format 1 (truncated JSON,
// a missing or mistyped field, another name, a sha256 that is not 64 hex).
result<manifest> parse_manifest(std::string_view text, std::string* why);

// The files of a package as read from its directory; an absent file is nullopt.
struct package_files {
    std::optional<std::string> manifest;
    std::optional<std::string> signature;
    std::optional<std::string> binary;
};
package_files read_package(const std::string& dir);

// What the package must satisfy on this host.
struct package_expect {
    std::string arch;            // host_arch()
    std::string current_version; // the running connector's version: the package must be newer
};

// Every check, in order, each refusing with its own message in *why:
//   no manifest / binary, unsigned (no manifest.sig), signature not 64 bytes ("truncated"),
//   signature does not verify with `public_pem` (named "truncated or malformed" when the
//   manifest does not even parse; nothing unsigned is acted on), another package name, wrong
//   architecture, binary shorter than the manifest says ("truncated") or longer, SHA-256 mismatch,
//   version not newer than expect.current_version.
// errc::cert_rejected for a signature problem, errc::refused for the others.
result<manifest> verify_package(const package_files& p, std::string_view public_pem,
                                const package_expect& expect, std::string* why);

} // namespace apprelay::connector
