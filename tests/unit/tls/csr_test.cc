// tls/csr.hh: the connector's key + CSR and the relay's CSR checks and signing. Every malicious
// CSR of RELIABILITY.md ("CA:true, foreign SANs, weak key, huge") is built here with OpenSSL
// directly, so the checks are exercised on exactly what an attacker could send.
#include "tls/ca.hh"
#include "tls/context.hh"
#include "tls/csr.hh"

#include <algorithm>
#include <cstdio>
#include <gtest/gtest.h>
#include <memory>
#include <openssl/dsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

namespace apprelay::tls {
namespace {

struct pkey_free {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;

X509* parse_cert(const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    return cert;
}

struct csr_spec {
    EVP_PKEY* key = nullptr;    // subject key (and signing key unless signer is set)
    EVP_PKEY* signer = nullptr; // a different key makes the signature invalid
    std::vector<std::pair<std::string, std::string>> subject = {{"CN", "requested-name"}};
    std::vector<std::pair<int, std::string>> extensions; // nid, openssl.cnf-style value
};

std::string build_csr(const csr_spec& spec) {
    X509_REQ* req = X509_REQ_new();
    X509_NAME* name = X509_REQ_get_subject_name(req);
    for (const auto& [field, value] : spec.subject) {
        X509_NAME_add_entry_by_txt(name, field.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                   0);
    }
    if (!spec.extensions.empty()) {
        STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
        for (const auto& [nid, value] : spec.extensions) {
            X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, nid, value.c_str());
            EXPECT_NE(ext, nullptr) << value;
            sk_X509_EXTENSION_push(exts, ext);
        }
        EXPECT_EQ(X509_REQ_add_extensions(req, exts), 1);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    EVP_PKEY* signer = spec.signer != nullptr ? spec.signer : spec.key;
    X509_REQ_set_pubkey(req, signer);
    EXPECT_GT(X509_REQ_sign(req, signer, EVP_sha256()), 0);
    if (spec.signer != nullptr) {
        // Swapping the key after signing leaves a signature made by another key.
        X509_REQ_set_pubkey(req, spec.key);
    }
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_REQ(bio, req);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string pem(data, static_cast<std::size_t>(n));
    BIO_free(bio);
    X509_REQ_free(req);
    return pem;
}

pkey_ptr ec_key(const char* curve) {
    return pkey_ptr(EVP_EC_gen(curve));
}

pkey_ptr dsa_key() {
    // 1024/160-bit parameters: the smallest OpenSSL generates quickly, and the size is irrelevant
    // since every DSA key is refused.
    EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_from_name(nullptr, "DSA", nullptr);
    EVP_PKEY* params = nullptr;
    EXPECT_EQ(EVP_PKEY_paramgen_init(pctx), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_dsa_paramgen_bits(pctx, 1024), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_dsa_paramgen_q_bits(pctx, 160), 1);
    EXPECT_EQ(EVP_PKEY_paramgen(pctx, &params), 1);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_CTX* kctx = EVP_PKEY_CTX_new_from_pkey(nullptr, params, nullptr);
    EVP_PKEY* key = nullptr;
    EXPECT_EQ(EVP_PKEY_keygen_init(kctx), 1);
    EXPECT_EQ(EVP_PKEY_keygen(kctx, &key), 1);
    EVP_PKEY_CTX_free(kctx);
    EVP_PKEY_free(params);
    return pkey_ptr(key);
}

class csr_test : public ::testing::Test {
protected:
    void SetUp() override {
        auto ca = make_ca("tenant-ca", 30, &_why);
        ASSERT_TRUE(ca.ok()) << _why;
        _ca = *ca;
    }

    // The refusal reason for a CSR, or "accepted".
    std::string refusal(const std::string& csr_pem) {
        std::string why;
        auto cert = sign_csr(_ca, csr_pem, {"c-0123", "acme", 365}, &why);
        if (cert.ok()) {
            return "accepted";
        }
        EXPECT_EQ(cert.code(), errc::invalid_argument) << why;
        return why;
    }

    // X509_verify_cert against the tenant CA alone, for TLS client use.
    int verify_as_client(const std::string& cert_pem) {
        X509* ca = parse_cert(_ca.cert_pem);
        X509* leaf = parse_cert(cert_pem);
        X509_STORE* store = X509_STORE_new();
        X509_STORE_add_cert(store, ca);
        X509_STORE_CTX* ctx = X509_STORE_CTX_new();
        X509_STORE_CTX_init(ctx, store, leaf, nullptr);
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
        int rc = X509_verify_cert(ctx);
        int err = X509_STORE_CTX_get_error(ctx);
        X509_STORE_CTX_free(ctx);
        X509_STORE_free(store);
        X509_free(leaf);
        X509_free(ca);
        return rc == 1 ? X509_V_OK : err;
    }

    pem_pair _ca;
    std::string _why;
};

TEST_F(csr_test, made_csr_is_signed_into_a_client_certificate_that_verifies) {
    auto made = make_key_and_csr("my-connector", &_why);
    ASSERT_TRUE(made.ok()) << _why;
    EXPECT_NE(made->key_pem.find("BEGIN PRIVATE KEY"), std::string::npos);
    auto issued = sign_csr(_ca, made->csr_pem, {"c-0123", "acme", 365}, &_why);
    ASSERT_TRUE(issued.ok()) << _why;
    EXPECT_EQ(verify_as_client(issued->cert_pem), X509_V_OK);

    X509* cert = parse_cert(issued->cert_pem);
    ASSERT_NE(cert, nullptr);
    EXPECT_EQ(X509_check_ca(cert), 0);
    uint32_t xku = X509_get_extended_key_usage(cert);
    EXPECT_NE(xku & XKU_SSL_CLIENT, 0u);
    EXPECT_EQ(xku & XKU_SSL_SERVER, 0u);
    EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
    EXPECT_EQ(X509_get_ext_by_NID(cert, NID_subject_alt_name, -1), -1);
    // 365 days from now, within the test's run time; starts 5 minutes back for clock skew.
    int days = 0;
    int secs = 0;
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, nullptr, X509_get0_notAfter(cert)), 1);
    EXPECT_TRUE(days == 365 || (days == 364 && secs > 86'000)) << days << "d " << secs << "s";
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), nullptr), 1);
    EXPECT_EQ(days, 0);
    EXPECT_GE(secs, 300);
    EXPECT_LT(secs, 360);

    // The issued certificate carries the CSR's key: it pairs with the connector's private key.
    BIO* kbio = BIO_new_mem_buf(made->key_pem.data(), static_cast<int>(made->key_pem.size()));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(kbio, nullptr, nullptr, nullptr);
    BIO_free(kbio);
    EXPECT_EQ(X509_check_private_key(cert, key), 1);
    EVP_PKEY_free(key);
    X509_free(cert);
}

TEST_F(csr_test, subject_of_the_csr_is_ignored) {
    auto key = ec_key("P-256");
    csr_spec spec;
    spec.key = key.get();
    spec.subject = {{"CN", "c-victim"}, {"O", "other-tenant"}, {"OU", "admins"}};
    auto issued = sign_csr(_ca, build_csr(spec), {"c-0123", "acme", 365}, &_why);
    ASSERT_TRUE(issued.ok()) << _why;
    X509* cert = parse_cert(issued->cert_pem);
    ASSERT_NE(cert, nullptr);
    char* subject = X509_NAME_oneline(X509_get_subject_name(cert), nullptr, 0);
    EXPECT_STREQ(subject, "/CN=c-0123/O=acme");
    OPENSSL_free(subject);
    X509_free(cert);
    auto cn = common_name_of_cert_pem(issued->cert_pem, &_why);
    ASSERT_TRUE(cn.ok()) << _why;
    EXPECT_EQ(*cn, "c-0123");
}

TEST_F(csr_test, oversize_csr_is_refused_before_parsing) {
    auto made = make_key_and_csr("n", &_why);
    ASSERT_TRUE(made.ok()) << _why;
    // A valid CSR after short lines of text (PEM readers skip them) to one byte over the limit.
    std::string big;
    while (big.size() + made->csr_pem.size() <= k_max_csr_pem) {
        std::size_t n =
            std::min<std::size_t>(64, k_max_csr_pem + 1 - made->csr_pem.size() - big.size());
        big += std::string(n - 1, '#') + "\n";
    }
    big += made->csr_pem;
    ASSERT_EQ(big.size(), k_max_csr_pem + 1);
    EXPECT_EQ(refusal(big), "CSR is larger than 16 KiB");
    EXPECT_EQ(refusal(big.substr(1)), "accepted"); // exactly 16 KiB is allowed
}

TEST_F(csr_test, garbage_is_refused) {
    EXPECT_EQ(refusal("hello"), "CSR is not a PEM certificate request");
    EXPECT_EQ(refusal(""), "CSR is not a PEM certificate request");
}

TEST_F(csr_test, bad_signature_is_refused) {
    auto key = ec_key("P-256");
    auto other = ec_key("P-256");
    csr_spec spec;
    spec.key = key.get();
    spec.signer = other.get();
    EXPECT_EQ(refusal(build_csr(spec)), "CSR signature does not verify");
}

TEST_F(csr_test, weak_keys_are_refused) {
    auto rsa1024 = pkey_ptr(EVP_RSA_gen(1024));
    csr_spec spec;
    spec.key = rsa1024.get();
    EXPECT_EQ(refusal(build_csr(spec)), "weak key: RSA keys need at least 2048 bits");

    auto p224 = ec_key("P-224");
    spec.key = p224.get();
    EXPECT_EQ(refusal(build_csr(spec)), "weak key: EC keys must use P-256 or P-384");
    auto k256 = ec_key("secp256k1");
    spec.key = k256.get();
    EXPECT_EQ(refusal(build_csr(spec)), "weak key: EC keys must use P-256 or P-384");

    auto dsa = dsa_key();
    spec.key = dsa.get();
    EXPECT_EQ(refusal(build_csr(spec)), "weak key: DSA keys are not accepted");
}

TEST_F(csr_test, strong_keys_are_accepted) {
    auto rsa2048 = pkey_ptr(EVP_RSA_gen(2048));
    auto p384 = ec_key("P-384");
    auto p256 = ec_key("P-256");
    for (EVP_PKEY* key : {rsa2048.get(), p384.get(), p256.get()}) {
        csr_spec spec;
        spec.key = key;
        EXPECT_EQ(refusal(build_csr(spec)), "accepted");
    }
}

TEST_F(csr_test, ca_true_request_is_refused) {
    auto key = ec_key("P-256");
    csr_spec spec;
    spec.key = key.get();
    spec.extensions = {{NID_basic_constraints, "critical,CA:TRUE"}};
    EXPECT_EQ(refusal(build_csr(spec)), "CSR requests CA:true");
}

TEST_F(csr_test, subject_alt_name_request_is_refused) {
    auto key = ec_key("P-256");
    csr_spec spec;
    spec.key = key.get();
    spec.extensions = {{NID_key_usage, "digitalSignature"},
                       {NID_subject_alt_name, "DNS:relay.apprelay.test"}};
    EXPECT_EQ(refusal(build_csr(spec)), "CSR requests subjectAltName");
}

TEST_F(csr_test, other_extension_requests_are_refused) {
    auto key = ec_key("P-256");
    csr_spec spec;
    spec.key = key.get();
    spec.extensions = {{NID_basic_constraints, "CA:FALSE"}};
    EXPECT_EQ(refusal(build_csr(spec)),
              "CSR requests an extension other than keyUsage/extKeyUsage");
    spec.extensions = {{NID_netscape_comment, "hello"}};
    EXPECT_EQ(refusal(build_csr(spec)),
              "CSR requests an extension other than keyUsage/extKeyUsage");
}

TEST_F(csr_test, requested_key_usages_are_replaced_by_client_auth) {
    auto key = ec_key("P-256");
    csr_spec spec;
    spec.key = key.get();
    spec.extensions = {{NID_key_usage, "keyCertSign,digitalSignature"},
                       {NID_ext_key_usage, "serverAuth,codeSigning"}};
    auto issued = sign_csr(_ca, build_csr(spec), {"c-0123", "acme", 365}, &_why);
    ASSERT_TRUE(issued.ok()) << _why;
    X509* cert = parse_cert(issued->cert_pem);
    ASSERT_NE(cert, nullptr);
    EXPECT_EQ(X509_get_extended_key_usage(cert), static_cast<uint32_t>(XKU_SSL_CLIENT));
    EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
    X509_free(cert);
}

TEST_F(csr_test, certificate_from_another_ca_does_not_verify) {
    auto made = make_key_and_csr("n", &_why);
    ASSERT_TRUE(made.ok()) << _why;
    auto other = make_ca("other-ca", 30, &_why);
    ASSERT_TRUE(other.ok()) << _why;
    auto issued = sign_csr(*other, made->csr_pem, {"c-0123", "acme", 365}, &_why);
    ASSERT_TRUE(issued.ok()) << _why;
    EXPECT_NE(verify_as_client(issued->cert_pem), X509_V_OK);
}

TEST_F(csr_test, fingerprint_is_stable_and_matches_the_file_digest) {
    auto made = make_key_and_csr("n", &_why);
    ASSERT_TRUE(made.ok()) << _why;
    auto issued = sign_csr(_ca, made->csr_pem, {"c-0123", "acme", 365}, &_why);
    ASSERT_TRUE(issued.ok()) << _why;
    ASSERT_EQ(issued->fingerprint.size(), 64u);
    EXPECT_EQ(issued->fingerprint.find_first_not_of("0123456789abcdef"), std::string::npos);
    auto a = fingerprint_of_cert_pem(issued->cert_pem, &_why);
    auto b = fingerprint_of_cert_pem(issued->cert_pem, &_why);
    ASSERT_TRUE(a.ok() && b.ok()) << _why;
    EXPECT_EQ(*a, issued->fingerprint);
    EXPECT_EQ(*a, *b);

    char path[] = "/tmp/apprelay_csr_test.XXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::close(fd);
    ASSERT_TRUE(write_pem_file(path, issued->cert_pem, false, &_why).ok()) << _why;
    auto from_file = fingerprint_of_pem_file(path, &_why);
    std::remove(path);
    ASSERT_TRUE(from_file.ok()) << _why;
    EXPECT_EQ(*from_file, *a);

    // A second certificate for the same CSR differs (random serial), so does its fingerprint.
    auto again = sign_csr(_ca, made->csr_pem, {"c-0123", "acme", 365}, &_why);
    ASSERT_TRUE(again.ok()) << _why;
    EXPECT_NE(again->fingerprint, issued->fingerprint);

    EXPECT_FALSE(fingerprint_of_cert_pem("not a cert", &_why).ok());
}

} // namespace
} // namespace apprelay::tls
