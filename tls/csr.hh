#pragma once
// Certificate signing requests for connector enrollment (control/enroll/PROTOCOL.md):
// the connector makes a key and a CSR, the relay checks the CSR and issues a client certificate
// whose identity it sets itself. Control-plane code only: may allocate, never on the data path.
#include "dataplane/base/result.hh"
#include "tls/ca.hh"

#include <cstddef>
#include <string>

namespace apprelay::tls {

// PROTOCOL.md step 5: at most 16 KiB of PEM; a bigger CSR is refused before parsing.
constexpr std::size_t k_max_csr_pem = 16 * 1024;

struct key_and_csr {
    std::string key_pem; // ECDSA P-256, PKCS#8
    std::string csr_pem; // subject CN = common_name, no extensions, signed with SHA-256
};
result<key_and_csr> make_key_and_csr(const std::string& common_name, std::string* why);

// Identity of the issued certificate: the only source of its subject (the CSR's is ignored).
struct identity {
    std::string common_name;  // connector id
    std::string organization; // tenant
    int days = 365;
};

struct issued_cert {
    std::string cert_pem;
    std::string fingerprint; // SHA-256 of the DER, 64 lowercase hex
};

// Checks the CSR and issues a client certificate from `ca`. A refused CSR returns
// errc::invalid_argument and puts the reason in *why, one of:
//   "CSR is larger than 16 KiB", "CSR is not a PEM certificate request",
//   "CSR signature does not verify", "weak key: RSA keys need at least 2048 bits",
//   "weak key: EC keys must use P-256 or P-384", "weak key: DSA keys are not accepted",
//   "key type not accepted (EC P-256/P-384 or RSA >= 2048)", "CSR requests CA:true",
//   "CSR requests subjectAltName", "CSR requests an extension other than keyUsage/extKeyUsage".
// The relay sends them as "invalid CSR: <reason>". CA failures return errc::tls_error.
// Issued: subject CN/O from `id`, CA:false, keyUsage digitalSignature, extKeyUsage clientAuth,
// random serial, valid from 5 minutes ago (clock skew) for id.days days.
result<issued_cert> sign_csr(const pem_pair& ca, const std::string& csr_pem, const identity& id,
                             std::string* why);

// SHA-256 of the first certificate's DER in 64 lowercase hex.
result<std::string> fingerprint_of_cert_pem(const std::string& pem, std::string* why);
// Subject CN of the first certificate in the PEM text.
result<std::string> common_name_of_cert_pem(const std::string& pem, std::string* why);

} // namespace apprelay::tls
