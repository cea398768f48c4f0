#pragma once
// A small certificate authority: ECDSA P-256 keys, self-signed CA certificates and leaf
// certificates signed by a CA. Used by tests, the demo, and (issue 3) tenant CAs / enrollment.
// Start-up / control-plane code only: may allocate, never on the data path.
#include "dataplane/base/result.hh"

#include <string>
#include <vector>

namespace apprelay::tls {

struct pem_pair {
    std::string cert_pem;
    std::string key_pem;
};

// Self-signed CA (basicConstraints CA:true, keyCertSign), valid `days` from now.
result<pem_pair> make_ca(const std::string& common_name, int days, std::string* why);

struct leaf_options {
    std::string common_name;
    std::vector<std::string> dns_names; // subjectAltName DNS entries
    bool server = true;                 // extendedKeyUsage serverAuth
    bool client = false;                // extendedKeyUsage clientAuth
    int days = 365;
    int not_before_offset_days = 0; // negative/positive to make expired / not-yet-valid certs
    // Subject OU entries (user certificates: the user's groups, checked by app access rules).
    std::vector<std::string> organizational_units;
};
result<pem_pair> issue_leaf(const pem_pair& ca, const leaf_options& opts, std::string* why);

// Writes PEM text to a file with mode 0600 (keys) or 0644.
result<void> write_pem_file(const std::string& path, const std::string& pem, bool secret,
                            std::string* why);

} // namespace apprelay::tls
