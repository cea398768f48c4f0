#include "dataplane/connector/package.hh"

#include "dataplane/base/version.hh"
#include "tls/sign.hh"

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sys/utsname.h>

namespace apprelay::connector {

namespace {

void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

std::optional<std::string> slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        return std::nullopt;
    }
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

bool is_hex64(const std::string& s) {
    if (s.size() != 64) {
        return false;
    }
    for (char c : s) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
    }
    return true;
}

} // namespace

std::string normalize_arch(std::string_view arch) {
    if (arch == "amd64") {
        return "x86_64";
    }
    if (arch == "arm64") {
        return "aarch64";
    }
    return std::string(arch);
}

std::string host_arch() {
    utsname u{};
    if (uname(&u) != 0) {
        return "unknown";
    }
    return normalize_arch(u.machine);
}

std::string manifest_text(const manifest& m) {
    // nlohmann::json (a std::map) keeps keys sorted, so the text is the same on every host.
    nlohmann::json j = {{"format", k_package_format},
                        {"name", m.name},
                        {"version", m.version},
                        {"arch", m.arch},
                        {"size", m.size},
                        {"sha256", m.sha256}};
    return j.dump(2) + "\n";
}

result<manifest> parse_manifest(std::string_view text, std::string* why) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        set_why(why, "manifest.json is truncated or malformed (not a JSON object)");
        return error(errc::protocol_error, "malformed manifest");
    }
    for (const char* k : {"name", "version", "arch", "sha256"}) {
        if (!j.contains(k) || !j[k].is_string() || j[k].get<std::string>().empty()) {
            set_why(why, std::string("manifest.json lacks the string field ") + k);
            return error(errc::protocol_error, "malformed manifest");
        }
    }
    if (!j.contains("format") || !j["format"].is_number_integer() ||
        j["format"].get<int64_t>() != k_package_format) {
        set_why(why, "manifest.json: format must be " + std::to_string(k_package_format));
        return error(errc::protocol_error, "malformed manifest");
    }
    if (!j.contains("size") || !j["size"].is_number_unsigned()) {
        set_why(why, "manifest.json lacks the unsigned integer field size");
        return error(errc::protocol_error, "malformed manifest");
    }
    manifest m;
    m.name = j["name"].get<std::string>();
    m.version = j["version"].get<std::string>();
    m.arch = normalize_arch(j["arch"].get<std::string>());
    m.size = j["size"].get<uint64_t>();
    m.sha256 = j["sha256"].get<std::string>();
    if (!is_hex64(m.sha256)) {
        set_why(why, "manifest.json: sha256 is not 64 lowercase hex characters");
        return error(errc::protocol_error, "malformed manifest");
    }
    return m;
}

package_files read_package(const std::string& dir) {
    auto in = [&](std::string_view name) { return dir + "/" + std::string(name); };
    return package_files{slurp(in(k_manifest_file)), slurp(in(k_signature_file)),
                         slurp(in(k_binary_file))};
}

result<manifest> verify_package(const package_files& p, std::string_view public_pem,
                                const package_expect& expect, std::string* why) {
    auto refuse = [&](std::string msg) {
        set_why(why, std::move(msg));
        return error(errc::refused, "package refused");
    };
    if (!p.manifest) {
        return refuse("not a package: no manifest.json");
    }
    if (!p.signature) {
        return refuse("unsigned package: no manifest.sig");
    }
    if (!p.binary) {
        return refuse("package has no apprelay-connector binary");
    }
    if (p.signature->size() != tls::k_ed25519_signature_size) {
        set_why(why, "signature truncated or malformed: manifest.sig is " +
                         std::to_string(p.signature->size()) + " bytes, Ed25519 needs " +
                         std::to_string(tls::k_ed25519_signature_size));
        return error(errc::cert_rejected, "bad signature");
    }
    std::string sig_why;
    auto sig = tls::ed25519_verify(public_pem, *p.manifest, *p.signature, &sig_why);
    if (!sig.ok()) {
        if (sig.code() != errc::cert_rejected) {
            return refuse("public key unusable: " + sig_why);
        }
        std::string parse_why;
        if (!parse_manifest(*p.manifest, &parse_why).ok()) {
            set_why(why, parse_why + ", and its signature does not verify");
        } else {
            set_why(why, "wrong signature: manifest.sig does not verify with the update public "
                         "key (another key, or a tampered manifest)");
        }
        return error(errc::cert_rejected, "bad signature");
    }
    // From here on the manifest is the signer's own text.
    std::string parse_why;
    auto m = parse_manifest(*p.manifest, &parse_why);
    if (!m.ok()) {
        return refuse("signed " + parse_why);
    }
    if (m->name != k_package_name) {
        return refuse("package is " + m->name + ", not " + std::string(k_package_name));
    }
    if (m->arch != expect.arch) {
        return refuse("wrong architecture: package is for " + m->arch + ", this host is " +
                      expect.arch);
    }
    if (p.binary->size() < m->size) {
        return refuse("binary truncated: " + std::to_string(p.binary->size()) + " of " +
                      std::to_string(m->size) + " bytes");
    }
    if (p.binary->size() > m->size) {
        return refuse("binary is " + std::to_string(p.binary->size()) +
                      " bytes, the manifest says " + std::to_string(m->size));
    }
    std::string digest = tls::sha256_hex(*p.binary);
    if (digest != m->sha256) {
        return refuse("hash mismatch: binary sha256 " + digest + ", manifest pins " + m->sha256);
    }
    if (compare_versions(m->version, expect.current_version) <= 0) {
        return refuse("version " + m->version + " is not newer than the running " +
                      expect.current_version);
    }
    return *m;
}

} // namespace apprelay::connector
