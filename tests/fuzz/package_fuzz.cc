// libFuzzer target: a connector update package (dataplane/connector/UPDATE.md) as the updater
// reads it from a directory the operator, the relay or an attacker filled: manifest.json,
// manifest.sig and the binary. The input is split at the first two 0xFF bytes into those three
// files; the first byte picks the mode:
//   'S'  the manifest part is signed here with the target's own key, so the checks behind the
//        signature (name, architecture, size, SHA-256, version) see arbitrary manifests;
//   else the signature part is taken as it comes (it must never verify: no forgery).
// Whatever the bytes, verify_package either refuses with a message or accepts a package whose
// manifest parses, whose binary has the pinned size and SHA-256, for this host's architecture,
// with a version newer than the running one. parse_manifest's output round-trips through
// manifest_text.
#include "dataplane/base/version.hh"
#include "dataplane/connector/package.hh"
#include "tls/sign.hh"

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace {

using namespace apprelay;

constexpr size_t k_max_input = 256 * 1024;

tls::ed25519_keys g_keys;

void die_unless(bool ok) {
    if (!ok) {
        std::abort();
    }
}

// Splits at the first `n` separators (0xFF); missing parts are nullopt.
void split(std::string_view in, std::optional<std::string>* parts, int n) {
    for (int i = 0; i <= n; ++i) {
        if (in.empty() && i > 0) {
            return;
        }
        const size_t at = i < n ? in.find('\xff') : std::string_view::npos;
        parts[i] = std::string(in.substr(0, at));
        if (at == std::string_view::npos) {
            return;
        }
        in.remove_prefix(at + 1);
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    std::string why;
    auto k = tls::ed25519_generate(&why);
    die_unless(k.ok());
    g_keys = *k;
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0 || size > k_max_input) {
        return 0;
    }
    const char mode = char(data[0]);
    std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);

    // The manifest parser alone: what it accepts, it writes back and reads the same.
    std::string why;
    if (auto m = connector::parse_manifest(rest, &why); m.ok()) {
        std::string again_why;
        auto again = connector::parse_manifest(connector::manifest_text(*m), &again_why);
        die_unless(again.ok() && again->version == m->version && again->arch == m->arch &&
                   again->size == m->size && again->sha256 == m->sha256 &&
                   again->name == m->name);
    } else {
        die_unless(!why.empty());
    }

    std::optional<std::string> parts[3];
    split(rest, parts, 2);
    connector::package_files files{parts[0], parts[1], parts[2]};
    const bool signed_here = mode == 'S' && files.manifest.has_value();
    if (signed_here) {
        auto sig = tls::ed25519_sign(g_keys.private_pem, *files.manifest, &why);
        die_unless(sig.ok());
        files.signature = *sig;
    }
    const connector::package_expect expect{connector::host_arch(), "0.1.0"};
    why.clear();
    auto v = connector::verify_package(files, g_keys.public_pem, expect, &why);
    if (!v.ok()) {
        die_unless(!why.empty());
        return 0;
    }
    // Accepted: only a package signed with our key, and every pinned property holds.
    die_unless(signed_here);
    die_unless(files.binary.has_value() && files.binary->size() == v->size &&
               tls::sha256_hex(*files.binary) == v->sha256);
    die_unless(v->arch == expect.arch);
    die_unless(compare_versions(v->version, expect.current_version) > 0);
    return 0;
}
