// libFuzzer target: the enrollment messages (control/enroll/PROTOCOL.md) as each side decodes
// bytes from the network. The input, cut at its first '\n' as both sides cut the line, goes
// through
//   - the relay's request decoder (enroll::parse_request, step 4) and, when it decodes, the
//     token, name and version checks the store makes before any lookup (step 5,
//     rules::parse_enrollment);
//   - the connector's reply decoder (connector::parse_reply, step 6);
//   - the connector's token parser (connector::parse_token, step 1).
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
    return 0;
}
