// Signed update packages (dataplane/connector/package.hh): the manifest's text and parser, and
// verify_package's refusals, each with the message that names the problem. Keys are made per
// test with tls::ed25519_generate; nothing touches the disk.
#include "dataplane/connector/package.hh"
#include "tls/sign.hh"

#include <gtest/gtest.h>

namespace apprelay::connector {
namespace {

struct signed_package {
    tls::ed25519_keys keys;
    package_files files;
};

signed_package make_package(const std::string& version, const std::string& arch,
                            const std::string& binary) {
    std::string why;
    auto keys = tls::ed25519_generate(&why);
    EXPECT_TRUE(keys.ok()) << why;
    manifest m;
    m.version = version;
    m.arch = arch;
    m.size = binary.size();
    m.sha256 = tls::sha256_hex(binary);
    std::string text = manifest_text(m);
    auto sig = tls::ed25519_sign(keys->private_pem, text, &why);
    EXPECT_TRUE(sig.ok()) << why;
    return signed_package{*keys, package_files{text, *sig, binary}};
}

const package_expect k_host{"x86_64", "0.1.0"};

std::string refusal(const signed_package& p, const package_expect& e = k_host,
                    std::string_view pub = {}) {
    std::string why;
    auto r = verify_package(p.files, pub.empty() ? p.keys.public_pem : pub, e, &why);
    return r.ok() ? "accepted" : why;
}

TEST(package, sha256_of_a_known_string) {
    // FIPS 180-2 appendix B.1: SHA-256("abc").
    EXPECT_EQ(tls::sha256_hex("abc"),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(package, manifest_text_parses_back) {
    manifest m{"apprelay-connector", "1.2.3", "aarch64", 42, std::string(64, 'a')};
    std::string why;
    auto back = parse_manifest(manifest_text(m), &why);
    ASSERT_TRUE(back.ok()) << why;
    EXPECT_EQ(back->version, "1.2.3");
    EXPECT_EQ(back->arch, "aarch64");
    EXPECT_EQ(back->size, 42u);
    EXPECT_EQ(back->sha256, std::string(64, 'a'));
}

TEST(package, every_truncation_of_the_manifest_is_refused_by_the_parser) {
    manifest m{"apprelay-connector", "1.2.3", "x86_64", 42, std::string(64, 'b')};
    std::string text = manifest_text(m);
    // The text ends "}\n": without the newline it is still the whole object.
    for (std::size_t n = 0; n + 1 < text.size(); ++n) {
        std::string why;
        EXPECT_FALSE(parse_manifest(text.substr(0, n), &why).ok()) << "prefix of " << n;
    }
}

TEST(package, manifest_fields_are_checked) {
    std::string why;
    EXPECT_FALSE(parse_manifest(R"({"format":1,"name":"apprelay-connector","version":"1",
        "arch":"x86_64","size":1})",
                                &why)
                     .ok());
    EXPECT_EQ(why, "manifest.json lacks the string field sha256");
    EXPECT_FALSE(parse_manifest(R"({"format":2,"name":"apprelay-connector","version":"1",
        "arch":"x86_64","size":1,"sha256":")" +
                                    std::string(64, 'c') + "\"}",
                                &why)
                     .ok());
    EXPECT_EQ(why, "manifest.json: format must be 1");
    EXPECT_FALSE(parse_manifest(R"({"format":1,"name":"apprelay-connector","version":"1",
        "arch":"x86_64","size":-1,"sha256":")" +
                                    std::string(64, 'c') + "\"}",
                                &why)
                     .ok());
    EXPECT_EQ(why, "manifest.json lacks the unsigned integer field size");
    EXPECT_FALSE(parse_manifest(R"({"format":1,"name":"apprelay-connector","version":"1",
        "arch":"x86_64","size":1,"sha256":")" +
                                    std::string(64, 'C') + "\"}",
                                &why)
                     .ok());
    EXPECT_EQ(why, "manifest.json: sha256 is not 64 lowercase hex characters");
}

TEST(package, a_signed_newer_package_for_this_arch_is_accepted) {
    auto p = make_package("0.2.0", "x86_64", "new binary bytes");
    std::string why;
    auto m = verify_package(p.files, p.keys.public_pem, k_host, &why);
    ASSERT_TRUE(m.ok()) << why;
    EXPECT_EQ(m->version, "0.2.0");
    EXPECT_EQ(m->size, 16u);
}

TEST(package, debian_arch_names_match_uname_ones) {
    auto p = make_package("0.2.0", "amd64", "bin");
    EXPECT_EQ(refusal(p), "accepted");
    EXPECT_EQ(normalize_arch("arm64"), "aarch64");
}

TEST(package, unsigned_and_incomplete_packages_are_refused) {
    auto p = make_package("0.2.0", "x86_64", "bin");
    auto q = p;
    q.files.signature.reset();
    EXPECT_EQ(refusal(q), "unsigned package: no manifest.sig");
    q = p;
    q.files.manifest.reset();
    EXPECT_EQ(refusal(q), "not a package: no manifest.json");
    q = p;
    q.files.binary.reset();
    EXPECT_EQ(refusal(q), "package has no apprelay-connector binary");
    q = p;
    q.files.signature->resize(63);
    EXPECT_EQ(refusal(q),
              "signature truncated or malformed: manifest.sig is 63 bytes, Ed25519 needs 64");
}

TEST(package, a_signature_by_another_key_is_refused) {
    auto p = make_package("0.2.0", "x86_64", "bin");
    auto other = make_package("0.2.0", "x86_64", "bin");
    EXPECT_EQ(refusal(p, k_host, other.keys.public_pem),
              "wrong signature: manifest.sig does not verify with the update public key "
              "(another key, or a tampered manifest)");
}

TEST(package, every_tampered_manifest_or_signature_byte_is_refused) {
    auto p = make_package("0.2.0", "x86_64", "bin");
    for (std::size_t i = 0; i < p.files.manifest->size(); ++i) {
        auto q = p;
        (*q.files.manifest)[i] ^= 0x01;
        EXPECT_NE(refusal(q), "accepted") << "manifest byte " << i;
    }
    for (std::size_t i = 0; i < p.files.signature->size(); ++i) {
        auto q = p;
        (*q.files.signature)[i] ^= 0x40;
        EXPECT_NE(refusal(q), "accepted") << "signature byte " << i;
    }
}

TEST(package, a_truncated_manifest_is_named_as_such) {
    auto p = make_package("0.2.0", "x86_64", "bin");
    p.files.manifest->resize(p.files.manifest->size() / 2);
    EXPECT_EQ(refusal(p), "manifest.json is truncated or malformed (not a JSON object), and its "
                          "signature does not verify");
}

TEST(package, binary_truncated_tampered_or_grown_is_refused) {
    auto p = make_package("0.2.0", "x86_64", "0123456789");
    auto q = p;
    q.files.binary->resize(4);
    EXPECT_EQ(refusal(q), "binary truncated: 4 of 10 bytes");
    q = p;
    *q.files.binary += "x";
    EXPECT_EQ(refusal(q), "binary is 11 bytes, the manifest says 10");
    q = p;
    (*q.files.binary)[3] = 'X';
    EXPECT_EQ(refusal(q).rfind("hash mismatch: binary sha256 " + tls::sha256_hex("012X456789"), 0),
              0u)
        << refusal(q);
}

TEST(package, another_architecture_is_refused) {
    auto p = make_package("0.2.0", "aarch64", "bin");
    EXPECT_EQ(refusal(p), "wrong architecture: package is for aarch64, this host is x86_64");
}

TEST(package, a_version_not_newer_than_the_running_one_is_refused) {
    EXPECT_EQ(refusal(make_package("0.1.0", "x86_64", "bin")),
              "version 0.1.0 is not newer than the running 0.1.0");
    EXPECT_EQ(refusal(make_package("0.0.9", "x86_64", "bin")),
              "version 0.0.9 is not newer than the running 0.1.0");
    // Numeric, not lexicographic: 0.10 > 0.9.
    EXPECT_EQ(refusal(make_package("0.10.0", "x86_64", "bin"), {"x86_64", "0.9.0"}), "accepted");
}

TEST(package, a_non_ed25519_key_is_refused_with_its_reason) {
    auto p = make_package("0.2.0", "x86_64", "bin");
    EXPECT_EQ(refusal(p, k_host, "not a key").rfind("public key unusable: not a PEM public key", 0),
              0u);
}

} // namespace
} // namespace apprelay::connector
