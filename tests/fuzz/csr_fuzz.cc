// libFuzzer target: the CSR a connector sends at enrollment (tls/csr.*, PROTOCOL.md step 5) and
// the certificate helpers the connector applies to the relay's reply. The first input byte picks
// how the rest is presented: 'P' (or anything but 'D') as PEM text as it arrives in csr_pem,
// 'D' as DER that this target wraps in PEM armour, so the ASN.1 decoder sees arbitrary bytes
// rather than whatever survives base64. Whatever the bytes, sign_csr either refuses with one of
// its documented reasons or issues a certificate with the identity the relay chose.
#include "tls/csr.hh"

#include <array>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

using namespace apprelay;

// Above sign_csr's 16 KiB limit (so the size check is reached), far below what slows libFuzzer.
constexpr size_t k_max_input = 64 * 1024;

// The refusals tls/csr.hh documents; anything else is a bug.
constexpr std::array<std::string_view, 10> k_reasons = {
    "CSR is larger than 16 KiB",
    "CSR is not a PEM certificate request",
    "CSR signature does not verify",
    "weak key: RSA keys need at least 2048 bits",
    "weak key: EC keys must use P-256 or P-384",
    "weak key: DSA keys are not accepted",
    "key type not accepted (EC P-256/P-384 or RSA >= 2048)",
    "CSR requests CA:true",
    "CSR requests subjectAltName",
    "CSR requests an extension other than keyUsage/extKeyUsage",
};

tls::pem_pair g_ca;

std::string pem_armour(std::string_view label, std::string_view der) {
    static constexpr char k_b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string b64;
    for (size_t i = 0; i < der.size(); i += 3) {
        const size_t n = std::min<size_t>(3, der.size() - i);
        uint32_t v = 0;
        for (size_t k = 0; k < 3; ++k) {
            v = v << 8 | (k < n ? static_cast<uint8_t>(der[i + k]) : 0u);
        }
        for (size_t k = 0; k < 4; ++k) {
            b64.push_back(k <= n ? k_b64[(v >> (18 - 6 * k)) & 63] : '=');
        }
    }
    std::string out = "-----BEGIN " + std::string(label) + "-----\n";
    for (size_t i = 0; i < b64.size(); i += 64) {
        out += b64.substr(i, 64) + "\n";
    }
    return out + "-----END " + std::string(label) + "-----\n";
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    std::string why;
    auto ca = tls::make_ca("fuzz tenant CA", 3650, &why);
    if (!ca) {
        std::abort();
    }
    g_ca = *ca;
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1 || size > k_max_input) {
        return 0;
    }
    const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
    const bool der = data[0] == 'D';
    const std::string csr_pem = der ? pem_armour("CERTIFICATE REQUEST", body) : std::string(body);
    const std::string cert_pem = der ? pem_armour("CERTIFICATE", body) : std::string(body);

    const tls::identity id{"0123456789abcdef0123456789abcdef", "contoso", 365};
    std::string why;
    auto issued = tls::sign_csr(g_ca, csr_pem, id, &why);
    if (!issued) {
        bool documented = false;
        for (auto r : k_reasons) {
            documented = documented || why == r;
        }
        if (issued.code() != errc::invalid_argument || !documented) {
            std::abort();
        }
    } else {
        // The certificate carries the relay's identity, whatever the CSR's subject said.
        auto fp = tls::fingerprint_of_cert_pem(issued->cert_pem, &why);
        auto cn = tls::common_name_of_cert_pem(issued->cert_pem, &why);
        if (!fp || *fp != issued->fingerprint || !cn || *cn != id.common_name) {
            std::abort();
        }
    }

    // The connector's checks of the relay's reply (ca_pem pinned by fingerprint) and of cert.pem.
    auto fp = tls::fingerprint_of_cert_pem(cert_pem, &why);
    if (fp &&
        (fp->size() != 64 || fp->find_first_not_of("0123456789abcdef") != std::string::npos)) {
        std::abort();
    }
    auto cn = tls::common_name_of_cert_pem(cert_pem, &why);
    if (cn && !fp) {
        std::abort(); // both parse the same first certificate
    }
    return 0;
}
