// CSR creation and checking on OpenSSL 3. The checks follow control/enroll/PROTOCOL.md step 5 and
// run in order of cost: size (before parsing), parse, signature, key strength, extension requests.
// The issued certificate takes nothing from the CSR but its public key.
#include "tls/csr.hh"

#include "tls/detail/ossl.hh"

#include <cstring>
#include <memory>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

namespace apprelay::tls {

namespace {

// Clock skew between the relay and a connector must not make a fresh certificate not yet valid.
constexpr long k_backdate_seconds = 5 * 60;
// NIST SP 800-131A: RSA below 2048 bits is disallowed for signatures.
constexpr int k_min_rsa_bits = 2048;

using detail::bio_ptr;
using detail::pkey_ptr;
using detail::req_ptr;
using detail::set_why;
using detail::x509_ptr;
struct exts_free {
    void operator()(STACK_OF(X509_EXTENSION) * p) const {
        sk_X509_EXTENSION_pop_free(p, X509_EXTENSION_free);
    }
};
using exts_ptr = std::unique_ptr<STACK_OF(X509_EXTENSION), exts_free>;

error refuse(std::string* why, const char* reason) {
    ERR_clear_error();
    set_why(why, reason);
    return error(errc::invalid_argument, "invalid CSR");
}

error fail(std::string* why, const char* what, const std::string& object) {
    set_why(why, detail::describe(what, object));
    return error(errc::tls_error, "certificate signing failed");
}

bio_ptr mem_bio(const std::string& text) {
    return bio_ptr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

bool bio_to_string(BIO* bio, std::string* out) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    if (n < 0 || data == nullptr) {
        return false;
    }
    out->assign(data, static_cast<std::size_t>(n));
    return true;
}

x509_ptr parse_cert(const std::string& pem) {
    bio_ptr bio = mem_bio(pem);
    if (!bio) {
        return nullptr;
    }
    return x509_ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

bool add_ext(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
    if (ext == nullptr) {
        return false;
    }
    bool ok = X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

bool add_name_entry(X509_NAME* name, int nid, const std::string& value) {
    return X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                      0) == 1;
}

// nullptr if the key is acceptable, else the refusal reason.
const char* weak_key_reason(EVP_PKEY* key) {
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
        return EVP_PKEY_get_bits(key) >= k_min_rsa_bits
                   ? nullptr
                   : "weak key: RSA keys need at least 2048 bits";
    case EVP_PKEY_EC: {
        char group[64] = {};
        std::size_t len = 0;
        if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) != 1) {
            return "weak key: EC keys must use P-256 or P-384";
        }
        bool good =
            std::strcmp(group, SN_X9_62_prime256v1) == 0 || std::strcmp(group, SN_secp384r1) == 0;
        return good ? nullptr : "weak key: EC keys must use P-256 or P-384";
    }
    case EVP_PKEY_DSA:
        return "weak key: DSA keys are not accepted";
    default:
        return "key type not accepted (EC P-256/P-384 or RSA >= 2048)";
    }
}

// nullptr if every requested extension is keyUsage or extKeyUsage, else the refusal reason.
// The requested values are never copied: the issued certificate gets the relay's own.
const char* extension_reason(X509_REQ* req) {
    exts_ptr exts(X509_REQ_get_extensions(req));
    if (!exts) {
        return nullptr;
    }
    for (int i = 0; i < sk_X509_EXTENSION_num(exts.get()); ++i) {
        X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts.get(), i);
        int nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext));
        if (nid == NID_key_usage || nid == NID_ext_key_usage) {
            continue;
        }
        if (nid == NID_subject_alt_name) {
            return "CSR requests subjectAltName";
        }
        if (nid == NID_basic_constraints) {
            auto* bc = static_cast<BASIC_CONSTRAINTS*>(X509V3_EXT_d2i(ext));
            bool is_ca = bc == nullptr || bc->ca != 0; // undecodable counts as the worst case
            BASIC_CONSTRAINTS_free(bc);
            if (is_ca) {
                return "CSR requests CA:true";
            }
        }
        return "CSR requests an extension other than keyUsage/extKeyUsage";
    }
    return nullptr;
}

} // namespace

result<key_and_csr> make_key_and_csr(const std::string& common_name, std::string* why) {
    if (common_name.empty()) {
        set_why(why, "a CSR needs a common name");
        return error(errc::invalid_argument, "empty common name");
    }
    ERR_clear_error();
    pkey_ptr key(EVP_EC_gen("P-256"));
    if (!key) {
        return fail(why, "cannot generate P-256 key for", common_name);
    }
    req_ptr req(X509_REQ_new());
    if (!req || X509_REQ_set_version(req.get(), X509_REQ_VERSION_1) != 1 ||
        !add_name_entry(X509_REQ_get_subject_name(req.get()), NID_commonName, common_name) ||
        X509_REQ_set_pubkey(req.get(), key.get()) != 1 ||
        X509_REQ_sign(req.get(), key.get(), EVP_sha256()) <= 0) {
        return fail(why, "cannot build CSR for", common_name);
    }
    bio_ptr kbio(BIO_new(BIO_s_mem()));
    bio_ptr rbio(BIO_new(BIO_s_mem()));
    key_and_csr out;
    if (!kbio || !rbio ||
        PEM_write_bio_PrivateKey(kbio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) !=
            1 ||
        PEM_write_bio_X509_REQ(rbio.get(), req.get()) != 1 ||
        !bio_to_string(kbio.get(), &out.key_pem) || !bio_to_string(rbio.get(), &out.csr_pem)) {
        return fail(why, "cannot encode key and CSR for", common_name);
    }
    return out;
}

result<issued_cert> sign_csr(const pem_pair& ca, const std::string& csr_pem, const identity& id,
                             std::string* why) {
    if (id.common_name.empty() || id.days <= 0) {
        set_why(why, "sign_csr needs a common name and a positive validity");
        return error(errc::invalid_argument, "invalid identity");
    }
    if (csr_pem.size() > k_max_csr_pem) {
        return refuse(why, "CSR is larger than 16 KiB");
    }
    ERR_clear_error();
    req_ptr req;
    if (bio_ptr bio = mem_bio(csr_pem)) {
        req.reset(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
    }
    if (!req) {
        return refuse(why, "CSR is not a PEM certificate request");
    }
    EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
    if (pub == nullptr) {
        return refuse(why, "CSR is not a PEM certificate request");
    }
    if (X509_REQ_verify(req.get(), pub) != 1) {
        return refuse(why, "CSR signature does not verify");
    }
    if (const char* reason = weak_key_reason(pub)) {
        return refuse(why, reason);
    }
    if (const char* reason = extension_reason(req.get())) {
        return refuse(why, reason);
    }

    x509_ptr ca_cert = parse_cert(ca.cert_pem);
    pkey_ptr ca_key;
    if (bio_ptr kbio = mem_bio(ca.key_pem)) {
        ca_key.reset(PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr));
    }
    if (!ca_cert || !ca_key || X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
        return fail(why, "cannot load CA certificate and key to sign", id.common_name);
    }
    x509_ptr cert(X509_new());
    X509_NAME* subject = cert ? X509_get_subject_name(cert.get()) : nullptr;
    if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
        !detail::random_serial(cert.get()) ||
        X509_gmtime_adj(X509_getm_notBefore(cert.get()), -k_backdate_seconds) == nullptr ||
        X509_time_adj_ex(X509_getm_notAfter(cert.get()), id.days, 0, nullptr) == nullptr ||
        X509_set_pubkey(cert.get(), pub) != 1 ||
        !add_name_entry(subject, NID_commonName, id.common_name) ||
        (!id.organization.empty() &&
         !add_name_entry(subject, NID_organizationName, id.organization)) ||
        X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get())) != 1) {
        return fail(why, "cannot build certificate", id.common_name);
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca_cert.get(), cert.get(), nullptr, nullptr, 0);
    if (!add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature") ||
        !add_ext(cert.get(), &ctx, NID_ext_key_usage, "clientAuth") ||
        !add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash") ||
        !add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always")) {
        return fail(why, "cannot add extensions to", id.common_name);
    }
    if (X509_sign(cert.get(), ca_key.get(), EVP_sha256()) <= 0) {
        return fail(why, "cannot sign", id.common_name);
    }
    issued_cert out;
    bio_ptr cbio(BIO_new(BIO_s_mem()));
    if (!cbio || PEM_write_bio_X509(cbio.get(), cert.get()) != 1 ||
        !bio_to_string(cbio.get(), &out.cert_pem)) {
        return fail(why, "cannot encode", id.common_name);
    }
    out.fingerprint = detail::sha256_hex(cert.get());
    if (out.fingerprint.empty()) {
        return fail(why, "cannot digest", id.common_name);
    }
    return out;
}

result<std::string> fingerprint_of_cert_pem(const std::string& pem, std::string* why) {
    ERR_clear_error();
    x509_ptr cert = parse_cert(pem);
    if (!cert) {
        set_why(why, detail::describe("cannot parse certificate", "(PEM text)"));
        return error(errc::invalid_argument, "cannot parse certificate");
    }
    std::string hex = detail::sha256_hex(cert.get());
    if (hex.empty()) {
        set_why(why, "cannot digest certificate");
        return error(errc::tls_error, "cannot digest certificate");
    }
    return hex;
}

result<std::string> common_name_of_cert_pem(const std::string& pem, std::string* why) {
    ERR_clear_error();
    x509_ptr cert = parse_cert(pem);
    if (!cert) {
        set_why(why, detail::describe("cannot parse certificate", "(PEM text)"));
        return error(errc::invalid_argument, "cannot parse certificate");
    }
    X509_NAME* subject = X509_get_subject_name(cert.get());
    int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (idx < 0) {
        set_why(why, "certificate has no subject common name");
        return error(errc::not_found, "no common name");
    }
    unsigned char* utf8 = nullptr;
    int len =
        ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
    if (len < 0 || utf8 == nullptr) {
        set_why(why, detail::describe("cannot decode common name of", "certificate"));
        return error(errc::invalid_argument, "cannot decode common name");
    }
    std::string cn(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(len));
    OPENSSL_free(utf8);
    return cn;
}

} // namespace apprelay::tls
