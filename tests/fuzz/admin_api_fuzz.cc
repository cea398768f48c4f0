// libFuzzer target: the admin API routes (control/api/, control/API.md) over the real SQLite store.
//
// The HTTP/1.1 parsing is libmicrohttpd's (control/admin/http_server.cc), so this target starts
// where our code takes over: an http_request (method, decoded path, query pairs, body) handed to
// admin_api::handle. The request carries no headers (the transport checks the bearer token and
// the body size before the routes run). Input: up to 16 requests separated by NUL bytes, each
//   METHOD SP PATH[?QUERY] LF BODY
// with QUERY split at '&' and '=' (values as the transport hands them over, already decoded);
// "{connector}" and "{token}" in the path stand for the ids of the connector and the token the
// template store holds, whose ids are random.
//
// Every input runs on a fresh copy of a template store (tenant contoso with groups, apps, a token
// and an enrolled connector), made once by LLVMFuzzerInitialize in a directory under TMPDIR
// (removed at exit but not after a crash: run.sh points TMPDIR at a scratch directory of its
// own), so a finding replays without the history of earlier inputs. Whatever the requests: no 500
// (an exception or store failure caused by a request is a bug), every JSON body parses, every error
// is {"error": "..."}, and a refused request writes nothing (config_version unchanged).
#include "control/api/api.hh"
#include "control/store/sqlite.hh"
#include "dataplane/base/log.hh"
#include "tls/csr.hh"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <unistd.h>

namespace {

using namespace apprelay;
using namespace apprelay::control;
using json = nlohmann::json;

// Admin bodies are small JSON objects; a request sequence of 64 KiB is plenty.
constexpr size_t k_max_input = 64 * 1024;
// Each request may create a tenant (a CA key and certificate): bound the work per input.
constexpr int k_max_requests = 16;
constexpr int64_t k_now = 1'700'000'000;
constexpr const char* k_server_name = "relay.fuzz";

std::filesystem::path g_dir;
std::string g_template; // bytes of the template database file
std::string g_connector_id;
std::string g_token_id;
live_view g_live;

void remove_dir() {
    std::error_code ec;
    std::filesystem::remove_all(g_dir, ec);
}

std::unique_ptr<sqlite_store> open_store(const std::filesystem::path& file) {
    auto s = sqlite_store::open(file.string(), k_server_name);
    if (!s) {
        std::abort();
    }
    return std::move(s).value();
}

json must(admin_api& api, const std::string& method, const std::string& path, json body) {
    http_request r{method, path, {}, body.is_null() ? std::string() : body.dump()};
    http_response out = api.handle(r, g_live);
    if (out.status >= 300) {
        std::abort(); // the template itself must build
    }
    return json::parse(out.body);
}

// Tenant contoso: groups Default and site-a, a passthrough app and a user-cert app, a valid
// token, and a connector enrolled with a real CSR; tenant fabrikam with one group.
void build_template(const std::filesystem::path& file) {
    auto st = open_store(file);
    admin_api api(*st);
    must(api, "POST", "/v1/tenants/contoso/groups", {{"name", "site-a"}, {"region", "eu-west"}});
    must(api, "POST", "/v1/tenants/contoso/apps",
         {{"name", "hr"},
          {"hostname", "hr.contoso.com"},
          {"backend", "10.1.0.5:443"},
          {"group", "site-a"}});
    must(api, "POST", "/v1/tenants/contoso/apps",
         {{"name", "wiki"},
          {"listen_port", 9443},
          {"backend", "[2001:db8::5]:8080"},
          {"access", "user-cert"},
          {"allowed_user_groups", {"staff"}}});
    must(api, "POST", "/v1/tenants/fabrikam/groups", {{"name", "lab"}});
    g_token_id = must(api, "POST", "/v1/tenants/contoso/tokens", {{"group", "site-a"}})["id"];
    std::string enroll_token = must(api, "POST", "/v1/tenants/contoso/tokens", nullptr)["token"];
    std::string why;
    auto csr = tls::make_key_and_csr("edge-1", &why);
    if (!csr) {
        std::abort();
    }
    cert_signer signer = [&](const tls::pem_pair& ca, const std::string& id,
                             const std::string& tenant) -> store_result<signed_cert> {
        auto c = tls::sign_csr(ca, csr->csr_pem, tls::identity{id, tenant, 365}, &why);
        if (!c) {
            return store_error{store_error::kind::refused, "invalid CSR: " + why};
        }
        return signed_cert{c->cert_pem, c->fingerprint};
    };
    auto c = st->enroll(enroll_token, "edge-1", "0.1.0", signer, k_now);
    if (!c) {
        std::abort();
    }
    g_connector_id = c->value.id;
}

std::string read_file(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void replace_all(std::string& s, std::string_view from, const std::string& to) {
    for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
        s.replace(at, from.size(), to);
    }
}

http_request parse_request(std::string_view text) {
    http_request r;
    const size_t eol = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, eol);
    r.body = std::string(text.substr(std::min(eol + 1, text.size())));
    const size_t sp = std::min(line.find(' '), line.size());
    r.method = std::string(line.substr(0, sp));
    std::string target(line.substr(std::min(sp + 1, line.size())));
    replace_all(target, "{connector}", g_connector_id);
    replace_all(target, "{token}", g_token_id);
    const size_t q = target.find('?');
    r.path = target.substr(0, q);
    if (q != std::string::npos) {
        std::string_view query = std::string_view(target).substr(q + 1);
        while (!query.empty()) {
            std::string_view pair = query.substr(0, query.find('&'));
            query.remove_prefix(std::min(pair.size() + 1, query.size()));
            const size_t eq = pair.find('=');
            r.query.emplace_back(std::string(pair.substr(0, eq)),
                                 eq == std::string_view::npos ? std::string()
                                                              : std::string(pair.substr(eq + 1)));
        }
    }
    return r;
}

void check_response(const http_response& out) {
    if (out.status >= 500 || out.status < 200) {
        std::abort();
    }
    if (out.content_type != "application/json") {
        return; // /metrics
    }
    json j = json::parse(out.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        std::abort();
    }
    if (out.status >= 400 && (!j.contains("error") || !j["error"].is_string())) {
        std::abort();
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::set_level(log::level::error);
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/apprelay-admin-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
        std::abort();
    }
    g_dir = pattern;
    std::atexit(remove_dir);
    g_live.now = k_now;
    g_live.tunnels_of = [](const std::string&) { return 1u; };
    g_live.relay_status = {{"version", "0.1.0"}, {"workers", 2}, {"config_stale", false}};
    g_live.render_metrics = [] { return std::string("apprelay_up 1\n"); };
    build_template(g_dir / "template.db"); // closing the store checkpoints its WAL into the file
    g_template = read_file(g_dir / "template.db");
    if (g_template.empty()) {
        std::abort();
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > k_max_input) {
        return 0;
    }
    const auto file = g_dir / "run.db";
    for (const char* suffix : {"-wal", "-shm"}) {
        std::filesystem::remove(file.string() + suffix);
    }
    std::ofstream(file, std::ios::binary | std::ios::trunc) << g_template;
    auto st = open_store(file);
    admin_api api(*st);

    std::string_view input(reinterpret_cast<const char*>(data), size);
    for (int n = 0; n < k_max_requests && !input.empty(); ++n) {
        const size_t end = std::min(input.find('\0'), input.size());
        http_request r = parse_request(input.substr(0, end));
        input.remove_prefix(std::min(end + 1, input.size()));
        const uint64_t before = st->config_version().value();
        http_response out = api.handle(r, g_live);
        check_response(out);
        if (out.status >= 400 && st->config_version().value() != before) {
            std::abort(); // a refused request writes nothing (API.md)
        }
    }
    return 0;
}
