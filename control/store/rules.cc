// Store rules shared by the SQLite and etcd stores (rules.hh).
#include "control/store/rules.hh"

#include "control/store/pem_util.hh"
#include "dataplane/base/log.hh"

#include <algorithm>
#include <cctype>

namespace apprelay::control::rules {


store_error err(kind k, std::string msg) {
    return store_error{k, std::move(msg)};
}

std::string quoted(std::string_view s) {
    return "'" + std::string(s) + "'";
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
    std::string out;
    for (const auto& s : v) {
        if (!out.empty()) {
            out += sep;
        }
        out += s;
    }
    return out;
}

std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start < s.size()) {
        std::size_t end = s.find('\n', start);
        if (end == std::string::npos) {
            end = s.size();
        }
        out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

// API.md: names of tenants, groups and apps are 1-64 chars of [A-Za-z0-9._-].
bool valid_name(std::string_view s) {
    return !s.empty() && s.size() <= k_max_name && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    });
}

std::optional<store_error> check_name(std::string_view what, const std::string& s) {
    if (valid_name(s)) {
        return std::nullopt;
    }
    return err(kind::invalid, "invalid " + std::string(what) + " name " + quoted(s) +
                                  ": names are 1-64 characters of A-Z a-z 0-9 . _ -");
}

bool is_hex(std::string_view s, std::size_t n) {
    return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

// RFC 1035 section 2.3.4 / RFC 1123 section 2.1: labels of 1-63 letters, digits and hyphens,
// not starting or ending with a hyphen; at most 253 characters in all.
bool valid_hostname(std::string_view s) {
    if (s.empty() || s.size() > 253) {
        return false;
    }
    std::size_t start = 0;
    while (start <= s.size()) {
        std::size_t end = s.find('.', start);
        if (end == std::string_view::npos) {
            end = s.size();
        }
        std::string_view label = s.substr(start, end - start);
        if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-' ||
            !std::all_of(label.begin(), label.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
            })) {
            return false;
        }
        start = end + 1;
    }
    return true;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// "host:port" or "[v6]:port" with port 1-65535.
bool parse_backend(const std::string& s, std::string* host, uint16_t* port) {
    std::size_t colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == s.size() ||
        s.size() - colon - 1 > 5) {
        return false;
    }
    std::string h = s.substr(0, colon);
    if (h.front() == '[') {
        if (h.size() < 3 || h.back() != ']') {
            return false;
        }
        h = h.substr(1, h.size() - 2);
    }
    unsigned long p = 0;
    for (std::size_t i = colon + 1; i < s.size(); ++i) {
        if (!std::isdigit(static_cast<unsigned char>(s[i]))) {
            return false;
        }
        p = p * 10 + static_cast<unsigned long>(s[i] - '0');
    }
    if (p == 0 || p > 65535 ||
        std::any_of(h.begin(), h.end(), [](unsigned char c) { return c <= ' ' || c == 0x7f; })) {
        return false;
    }
    *host = h;
    *port = static_cast<uint16_t>(p);
    return true;
}

bool printable(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= ' ' && c != 0x7f; });
}

token_state state_of(bool revoked, int64_t used_at, int64_t expires_at, int64_t now) {
    if (revoked) {
        return token_state::revoked;
    }
    if (used_at != 0) {
        return token_state::used;
    }
    return now >= expires_at ? token_state::expired : token_state::valid;
}


std::optional<store_error> check_region(const std::string& group, const std::string& region) {
    if (region.size() > k_max_name || !printable(region)) {
        return err(kind::invalid, "invalid region for group " + quoted(group) +
                                      ": at most 64 printable characters");
    }
    return std::nullopt;
}

store_result<token_parts> parse_enrollment(const std::string& token, const std::string& name,
                                           const std::string& version) {
    // art1.<id 16 hex>.<secret 32 hex>.<relay CA fingerprint 64 hex> (API.md).
    constexpr std::string_view k_prefix = "art1.";
    if (token.size() != k_prefix.size() + 16 + 1 + 32 + 1 + 64 ||
        token.compare(0, k_prefix.size(), k_prefix) != 0) {
        return err(kind::invalid, "malformed request");
    }
    std::string_view rest(token);
    rest.remove_prefix(k_prefix.size());
    std::string_view id = rest.substr(0, 16);
    std::string_view secret = rest.substr(17, 32);
    if (rest[16] != '.' || rest[49] != '.' || !is_hex(id, 16) || !is_hex(secret, 32) ||
        !is_hex(rest.substr(50), 64)) {
        return err(kind::invalid, "malformed request");
    }
    if (!valid_name(name)) {
        return err(kind::invalid, "invalid connector name " + quoted(name) +
                                      ": names are 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    if (version.size() > k_max_version || !printable(version)) {
        return err(kind::invalid, "invalid connector version");
    }
    return token_parts{std::string(id), std::string(secret)};
}

std::optional<store_error> apply_app_fields(app& a, const app_fields& f, bool create,
                                            bool* reissue) {
    const std::string what = "app " + quoted(a.name);
    const std::string old_hostname = a.hostname;
    if (f.hostname) {
        a.hostname = lower(*f.hostname);
        if (!a.hostname.empty() && !valid_hostname(a.hostname)) {
            return err(kind::invalid, "invalid hostname " + quoted(*f.hostname) + " for " + what);
        }
    }
    if (f.listen_port) {
        if (*f.listen_port < 0 || *f.listen_port > 65535) {
            return err(kind::invalid, "listen_port " + std::to_string(*f.listen_port) + " for " +
                                          what + " is out of range 0-65535");
        }
        a.listen_port = static_cast<uint16_t>(*f.listen_port);
    }
    if (f.backend) {
        if (!parse_backend(*f.backend, &a.backend_host, &a.backend_port)) {
            return err(kind::invalid, "invalid backend " + quoted(*f.backend) + " for " + what +
                                          ": expected host:port with port 1-65535");
        }
    } else if (create) {
        return err(kind::invalid, what + " needs a backend (host:port)");
    }
    if (f.group) {
        a.group = *f.group;
    }
    if (f.access) {
        a.access = *f.access;
    }
    if (f.allowed_user_groups) {
        a.allowed_user_groups = *f.allowed_user_groups;
    }
    if (f.idle_timeout_ms) {
        // Same bounds as [limits] idle_timeout_ms; 0 = the relay's.
        if (*f.idle_timeout_ms != 0 && (*f.idle_timeout_ms < 100 || *f.idle_timeout_ms > 86'400'000)) {
            return err(kind::invalid, "idle_timeout_ms " + std::to_string(*f.idle_timeout_ms) +
                                          " for " + what +
                                          " is out of range: 0 (the relay's) or 100-86400000");
        }
        a.idle_timeout_ms = static_cast<uint32_t>(*f.idle_timeout_ms);
    }
    if (a.hostname.empty() && a.listen_port == 0) {
        return err(kind::invalid, what + " needs a hostname or a listen_port");
    }
    for (const auto& g : a.allowed_user_groups) {
        if (g.empty() || g.size() > k_max_user_group || !printable(g)) {
            return err(kind::invalid, "invalid user group " + quoted(g) + " for " + what);
        }
    }
    if (a.access == access_mode::user_cert && a.allowed_user_groups.empty()) {
        return err(kind::invalid, what + ": access user-cert needs allowed_user_groups");
    }
    if (a.access == access_mode::passthrough && !a.allowed_user_groups.empty()) {
        return err(kind::invalid,
                   what + ": allowed_user_groups is only valid with access user-cert");
    }
    if (f.cert_pem.has_value() != f.key_pem.has_value()) {
        return err(kind::invalid, what + ": cert_pem and key_pem must be given together");
    }
    *reissue = false;
    if (f.cert_pem) {
        if (auto c = check_cert_key_pair(*f.cert_pem, *f.key_pem); !c) {
            return err(kind::invalid, what + ": " + std::string(c.err().detail));
        }
        a.cert_pem = *f.cert_pem;
        a.key_pem = *f.key_pem;
        a.cert_issued = false;
    } else if (create || (a.cert_issued && a.hostname != old_hostname)) {
        *reissue = true;
    }
    return std::nullopt;
}

std::optional<store_error> issue_app_cert(app& a, const tls::pem_pair& tenant_ca) {
    tls::leaf_options opts;
    opts.common_name = a.name;
    if (!a.hostname.empty()) {
        opts.dns_names = {a.hostname};
    }
    opts.days = k_leaf_days;
    std::string why;
    auto leaf = tls::issue_leaf(tenant_ca, opts, &why);
    if (!leaf) {
        return err(kind::internal, "cannot issue the certificate of app " + quoted(a.name) + ": " +
                                       why);
    }
    a.cert_pem = leaf->cert_pem;
    a.key_pem = leaf->key_pem;
    a.cert_issued = true;
    return std::nullopt;
}

store_result<tenant> make_tenant(const std::string& name, int64_t now) {
    std::string why;
    // RFC 5280 appendix A: a CN is at most 64 characters (OpenSSL refuses more), and so is a
    // tenant name: a long name goes in alone.
    const std::string cn = "apprelay tenant " + name + " CA";
    auto ca = tls::make_ca(cn.size() <= k_max_name ? cn : name, k_ca_days, &why);
    if (!ca) {
        return err(kind::internal, "cannot create the CA of tenant " + quoted(name) + ": " + why);
    }
    auto fp = cert_fingerprint(ca->cert_pem);
    if (!fp) {
        return err(kind::internal, "CA of tenant " + quoted(name) + " does not parse");
    }
    return tenant{name, ca->cert_pem, ca->key_pem, fp.value(), now};
}

store_result<tls::pem_pair> issue_server_cert(const tls::pem_pair& relay_ca,
                                              const std::string& server_name) {
    tls::leaf_options opts;
    opts.common_name = server_name.size() <= k_max_name ? server_name : "apprelay-relay";
    opts.dns_names = {server_name};
    opts.days = k_ca_days;
    std::string why;
    auto leaf = tls::issue_leaf(relay_ca, opts, &why);
    if (!leaf) {
        return err(kind::internal, "cannot issue the relay server certificate: " + why);
    }
    return tls::pem_pair{leaf->cert_pem, leaf->key_pem};
}

} // namespace apprelay::control::rules
