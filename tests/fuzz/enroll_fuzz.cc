// libFuzzer target: the enrollment messages (control/enroll/PROTOCOL.md) as each side decodes
// bytes from the network. The input, cut at its first '\n' as both sides cut the line, goes
// through
//   - the relay's request decoder (enroll::parse_request, step 4) and, when it decodes, the
//     token, name and version checks the store makes before any lookup (step 5,
//     rules::parse_enrollment);
//   - the connector's reply decoder (connector::parse_reply, step 6);
//   - the connector's token parser (connector::parse_token, step 1);
//   - connector requests and their replies (check_service).
// Whatever the bytes: a decoded request re-encodes (as the connector writes it) to the same
// request; a decoded reply re-encodes (as the relay writes it, enroll::reply_line) to the same
// reply; both sides agree on which tokens are well formed. The CSR inside a request has its own
// target (csr_fuzz.cc).
#include "control/enroll/server.hh"
#include "control/store/rules.hh"
#include "dataplane/connector/enroll.hh"

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

namespace {

using namespace apprelay;

// PROTOCOL.md step 4: one line of at most 64 KiB.
constexpr size_t k_max_input = 64 * 1024;

bool is_lower_hex(const std::string& s, size_t n) {
    return s.size() == n && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

void check_request(const std::string& line) {
    enroll::enroll_request req;
    if (!enroll::parse_request(line, &req)) {
        return;
    }
    // The connector's encoding of the same request (register_connector).
    nlohmann::json j = {{"token", req.token},
                        {"csr_pem", req.csr_pem},
                        {"name", req.name},
                        {"version", req.version}};
    enroll::enroll_request again;
    if (!enroll::parse_request(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict),
                               &again) ||
        again.token != req.token || again.csr_pem != req.csr_pem || again.name != req.name ||
        again.version != req.version) {
        std::abort();
    }
    auto parts = control::rules::parse_enrollment(req.token, req.name, req.version);
    if (!parts) {
        if (parts.err().message.empty()) {
            std::abort(); // the connector is always told why
        }
        return;
    }
    if (!is_lower_hex(parts->id, 16) || !is_lower_hex(parts->secret, 32) ||
        req.token.compare(0, 5 + 16 + 1 + 32 + 1,
                          "art1." + parts->id + "." + parts->secret + ".") != 0) {
        std::abort();
    }
}

void check_reply(const std::string& line) {
    std::string why;
    auto r = connector::parse_reply(line, &why);
    if (!r) {
        if (r.code() == errc::protocol_error && !why.empty()) {
            return;
        }
        if (r.code() != errc::refused) {
            std::abort();
        }
        // A refusal round-trips with its reason, as the relay would send it again.
        enroll::enroll_reply refusal;
        refusal.error = why;
        std::string text = enroll::reply_line(refusal);
        std::string why_again;
        auto again = connector::parse_reply(text.substr(0, text.size() - 1), &why_again);
        if (again || again.code() != errc::refused || why_again != why) {
            std::abort();
        }
        return;
    }
    if (r->tunnel_port == 0 || r->relays.size() > 64 || r->reg.connector_id.empty() ||
        r->cert_pem.empty() || r->ca_pem.empty() || r->server_name.empty()) {
        std::abort();
    }
    enroll::enroll_reply out;
    out.ok = true;
    out.connector_id = r->reg.connector_id;
    out.tenant = r->reg.tenant;
    out.group = r->reg.group;
    out.cert_pem = r->cert_pem;
    out.ca_pem = r->ca_pem;
    out.tunnel_port = r->tunnel_port;
    out.server_name = r->server_name;
    out.relays = r->relays;
    std::string text = enroll::reply_line(out);
    if (text.empty() || text.back() != '\n' || text.find('\n') != text.size() - 1) {
        std::abort(); // exactly one line on the wire
    }
    auto again = connector::parse_reply(text.substr(0, text.size() - 1), &why);
    if (!again || again->reg.connector_id != out.connector_id || again->reg.tenant != out.tenant ||
        again->reg.group != out.group || again->cert_pem != out.cert_pem ||
        again->ca_pem != out.ca_pem || again->tunnel_port != out.tunnel_port ||
        again->server_name != out.server_name || again->relays != out.relays) {
        std::abort();
    }
}

void check_token(const std::string& line) {
    auto t = connector::parse_token(line);
    if (t && (!is_lower_hex(t->id, 16) || !is_lower_hex(t->secret, 32) ||
              !is_lower_hex(t->ca_fingerprint, 64))) {
        std::abort();
    }
    // The connector (parse_token) and the relay (rules::parse_enrollment) accept the same tokens.
    auto relay = control::rules::parse_enrollment(line, "fuzz-connector", "0.1.0");
    if (t.ok() != relay.ok()) {
        std::abort();
    }
}

// PROTOCOL.md "Connector requests": the relay's decoder of a request line with an "op", and the
// connector's decoder of the reply line. A decoded request re-encodes to the same request; a
// reply round-trips through the relay's encoder with the same verdict and body length.
void check_service(const std::string& line) {
    enroll::service_request req;
    bool bad = false;
    if (enroll::parse_service_request(line, &req, &bad) && !bad) {
        if (req.op.empty() || req.op == "enroll" || req.op.size() > 32 ||
            req.version.size() > 255 || req.file.size() > 255) {
            std::abort();
        }
        nlohmann::json j = {{"op", req.op}, {"version", req.version}, {"file", req.file},
                            {"offset", req.offset}};
        enroll::service_request again;
        bool bad_again = false;
        if (!enroll::parse_service_request(
                j.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict), &again,
                &bad_again) ||
            bad_again || again.op != req.op || again.version != req.version ||
            again.file != req.file || again.offset != req.offset) {
            std::abort();
        }
    }
    std::string why;
    auto r = connector::parse_service_reply(line, &why);
    if (!r) {
        if (why.empty() || (r.code() != errc::refused && r.code() != errc::protocol_error)) {
            std::abort(); // the updater is always told why
        }
        return;
    }
    if (*r > enroll::k_max_fetch_chunk) {
        std::abort();
    }
    enroll::service_reply out;
    out.ok = true;
    out.body.assign(*r, 'x');
    std::string text = enroll::service_reply_line(out);
    if (text.empty() || text.back() != '\n' || text.find('\n') != text.size() - 1) {
        std::abort();
    }
    auto again = connector::parse_service_reply(text.substr(0, text.size() - 1), &why);
    if (!again || *again != *r) {
        std::abort();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > k_max_input) {
        return 0;
    }
    std::string line(reinterpret_cast<const char*>(data), size);
    line = line.substr(0, line.find('\n'));
    check_request(line);
    check_reply(line);
    check_token(line);
    check_service(line);
    return 0;
}
