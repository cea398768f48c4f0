// etcd records: JSON values, checked field by field on the way in (records.hh).
#include "control/store/etcd/records.hh"

#include "control/store/pem_util.hh"
#include "control/store/rules.hh"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace apprelay::control::etcd {

namespace {

using json = nlohmann::json;
using namespace rules;

constexpr std::size_t k_max_pem = 16 * 1024;
constexpr std::size_t k_max_field = 256;

std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        std::size_t end = s.find(sep, start);
        out.emplace_back(s.substr(start, end == std::string_view::npos ? end : end - start));
        if (end == std::string_view::npos) {
            return out;
        }
        start = end + 1;
    }
}

// Field readers: false when the field is missing, of the wrong type or too long.
bool str(const json& j, const char* f, std::string* out, std::size_t max = k_max_field) {
    auto it = j.find(f);
    if (it == j.end() || !it->is_string()) {
        return false;
    }
    const auto& s = it->get_ref<const std::string&>();
    if (s.size() > max) {
        return false;
    }
    *out = s;
    return true;
}

bool pem(const json& j, const char* f, std::string* out) {
    return str(j, f, out, k_max_pem);
}

bool i64(const json& j, const char* f, int64_t* out, int64_t lo = 0,
         int64_t hi = INT64_MAX) {
    auto it = j.find(f);
    if (it == j.end() || !it->is_number_integer()) {
        return false;
    }
    int64_t v = it->get<int64_t>();
    if (v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

bool boolean(const json& j, const char* f, bool* out) {
    auto it = j.find(f);
    if (it == j.end() || !it->is_boolean()) {
        return false;
    }
    *out = it->get<bool>();
    return true;
}

bool fail(std::string* why, std::string w) {
    *why = std::move(w);
    return false;
}

bool hex_fp(const std::string& s) {
    return is_hex(s, 64);
}

bool decode_pair(const json& j, tls::pem_pair* p) {
    return pem(j, "cert", &p->cert_pem) && pem(j, "key", &p->key_pem);
}

bool decode_app(const json& j, app_rec* r) {
    app& a = r->a;
    int64_t port = 0;
    int64_t backend_port = 0;
    std::string access;
    if (!i64(j, "group_id", &r->group_id, 1) || !str(j, "hostname", &a.hostname) ||
        !i64(j, "port", &port, 0, 65535) || !str(j, "backend_host", &a.backend_host) ||
        !i64(j, "backend_port", &backend_port, 1, 65535) || !str(j, "access", &access) ||
        !pem(j, "cert", &a.cert_pem) || !pem(j, "key", &a.key_pem) ||
        !boolean(j, "cert_issued", &a.cert_issued)) {
        return false;
    }
    if (access != "passthrough" && access != "user-cert") {
        return false;
    }
    // Optional: records written before apps had their own idle limit have none (the relay's).
    if (j.contains("idle_timeout_ms")) {
        int64_t idle = 0;
        if (!i64(j, "idle_timeout_ms", &idle, 0, 86'400'000) || (idle != 0 && idle < 100)) {
            return false;
        }
        a.idle_timeout_ms = static_cast<uint32_t>(idle);
    }
    a.access = access == "user-cert" ? access_mode::user_cert : access_mode::passthrough;
    a.listen_port = static_cast<uint16_t>(port);
    a.backend_port = static_cast<uint16_t>(backend_port);
    if (!a.hostname.empty() && !valid_hostname(a.hostname)) {
        return false;
    }
    if (a.hostname.empty() && a.listen_port == 0) {
        return false;
    }
    auto g = j.find("user_groups");
    if (g == j.end() || !g->is_array() || g->size() > 256) {
        return false;
    }
    for (const auto& x : *g) {
        if (!x.is_string() || x.get_ref<const std::string&>().empty() ||
            x.get_ref<const std::string&>().size() > k_max_user_group ||
            !printable(x.get_ref<const std::string&>())) {
            return false;
        }
        a.allowed_user_groups.push_back(x.get<std::string>());
    }
    return (a.access == access_mode::user_cert) == !a.allowed_user_groups.empty();
}

bool decode_token(const json& j, token_rec* t, bool used) {
    if (!i64(j, "group_id", &t->group_id, 1) || !str(j, "secret_sha256", &t->secret_sha256) ||
        !hex_fp(t->secret_sha256) || !i64(j, "created_at", &t->created_at) ||
        !i64(j, "expires_at", &t->expires_at) || !boolean(j, "revoked", &t->revoked)) {
        return false;
    }
    return !used || i64(j, "used_at", &t->used_at, 1);
}

} // namespace

const group_rec* model::group_by_id(int64_t id) const {
    for (const auto& [k, g] : groups) {
        if (g.id == id) {
            return &g;
        }
    }
    return nullptr;
}

const group_rec* model::find_group(const std::string& tenant, const std::string& name) const {
    auto it = groups.find({tenant, name});
    return it == groups.end() ? nullptr : &it->second;
}

bool decode_record(const keys& k, const kv& item, model& m, std::string* why) {
    if (item.key.compare(0, k.prefix.size(), k.prefix) != 0) {
        return fail(why, "key outside the prefix");
    }
    if (item.value.size() > k_max_record) {
        return fail(why, "record of " + std::to_string(item.value.size()) + " bytes (limit " +
                             std::to_string(k_max_record) + ")");
    }
    const std::string rel = item.key.substr(k.prefix.size());
    if (rel == "config_version") {
        const auto& v = item.value;
        if (v.empty() || v.size() > 19 || !std::all_of(v.begin(), v.end(), [](char c) {
                return c >= '0' && c <= '9';
            })) {
            return fail(why, "config_version is not a number");
        }
        m.config_version = std::stoull(v);
        return true;
    }
    const auto parts = split(rel, '/');
    json j = json::parse(item.value, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        return fail(why, "value is not a JSON object");
    }
    const std::string& type = parts[0];
    const std::size_t n = parts.size();
    if (type == "relay" && n == 2 && parts[1] == "ca") {
        tls::pem_pair p;
        if (!decode_pair(j, &p)) {
            return fail(why, "bad relay CA record");
        }
        m.relay_ca = std::move(p);
        return true;
    }
    if (type == "relay" && n == 3 && parts[1] == "server" && valid_hostname(parts[2])) {
        tls::pem_pair p;
        if (!decode_pair(j, &p)) {
            return fail(why, "bad server certificate record");
        }
        m.server_certs[parts[2]] = std::move(p);
        return true;
    }
    if (type == "tenants" && n == 2 && valid_name(parts[1])) {
        tenant t;
        t.name = parts[1];
        if (!pem(j, "ca_cert", &t.ca_cert_pem) || !pem(j, "ca_key", &t.ca_key_pem) ||
            !str(j, "ca_fp", &t.ca_fingerprint) || !hex_fp(t.ca_fingerprint) ||
            !i64(j, "created_at", &t.created_at)) {
            return fail(why, "bad tenant record");
        }
        m.tenants[t.name] = std::move(t);
        return true;
    }
    if (type == "groups" && n == 3 && valid_name(parts[1]) && valid_name(parts[2])) {
        group_rec g{parts[1], parts[2], "", 0};
        if (!i64(j, "id", &g.id, 1) || !str(j, "region", &g.region, k_max_name) ||
            !printable(g.region)) {
            return fail(why, "bad group record");
        }
        m.groups[{g.tenant, g.name}] = std::move(g);
        return true;
    }
    if (type == "connectors" && n == 2 && is_hex(parts[1], 16)) {
        connector_rec r;
        r.c.id = parts[1];
        if (!str(j, "name", &r.c.name) || !valid_name(r.c.name) ||
            !i64(j, "group_id", &r.group_id, 1) || !str(j, "version", &r.c.version, k_max_version) ||
            !printable(r.c.version) || !str(j, "fp", &r.c.fingerprint) ||
            !hex_fp(r.c.fingerprint) || !pem(j, "cert", &r.c.cert_pem) ||
            !i64(j, "first_seen", &r.c.first_seen)) {
            return fail(why, "bad connector record");
        }
        m.connectors[r.c.id] = std::move(r);
        return true;
    }
    if (type == "apps" && n == 3 && valid_name(parts[1]) && valid_name(parts[2])) {
        app_rec r;
        r.a.tenant = parts[1];
        r.a.name = parts[2];
        if (!decode_app(j, &r)) {
            return fail(why, "bad app record");
        }
        m.apps[{r.a.tenant, r.a.name}] = std::move(r);
        return true;
    }
    if ((type == "tokens" || type == "tokens_used") && n == 2 && is_hex(parts[1], 16)) {
        token_rec t;
        t.id = parts[1];
        if (!decode_token(j, &t, type == "tokens_used")) {
            return fail(why, "bad token record");
        }
        m.tokens[t.id] = std::move(t);
        return true;
    }
    if (type == "revoked" && n == 2 && hex_fp(parts[1])) {
        int64_t at = 0;
        if (!i64(j, "at", &at)) {
            return fail(why, "bad revocation record");
        }
        m.revoked[parts[1]] = at;
        return true;
    }
    if (type == "seen" && n == 2 && is_hex(parts[1], 16)) {
        seen_rec s;
        if (!i64(j, "last_seen", &s.last_seen) || !str(j, "version", &s.version, k_max_version) ||
            !printable(s.version)) {
            return fail(why, "bad seen record");
        }
        m.seen[parts[1]] = std::move(s);
        return true;
    }
    if (type == "presence" && n == 3 && parts[1] == "relays" && valid_name(parts[2])) {
        relay_rec r;
        r.node = parts[2];
        r.lease = item.lease;
        if (!str(j, "address", &r.address) || !printable(r.address) ||
            !str(j, "region", &r.region, k_max_name) || !printable(r.region) ||
            !boolean(j, "draining", &r.draining) || !i64(j, "started", &r.started) ||
            !boolean(j, "stale", &r.stale)) {
            return fail(why, "bad relay presence record");
        }
        int64_t version = 0;
        if (!i64(j, "config_version", &version)) {
            return fail(why, "bad relay presence record");
        }
        r.config_version = static_cast<uint64_t>(version);
        m.relays[r.node] = std::move(r);
        return true;
    }
    if (type == "presence" && n == 4 && parts[1] == "tunnels" && is_hex(parts[2], 16) &&
        valid_name(parts[3])) {
        tunnel_rec t;
        t.node = parts[3];
        if (!i64(j, "since", &t.since) || !str(j, "version", &t.version, k_max_version) ||
            !printable(t.version)) {
            return fail(why, "bad tunnel presence record");
        }
        auto& v = m.presence[parts[2]];
        std::erase_if(v, [&](const tunnel_rec& x) { return x.node == t.node; });
        v.push_back(std::move(t));
        return true;
    }
    if (type == "drain" && n == 2 && valid_name(parts[1])) {
        int64_t at = 0;
        if (!i64(j, "at", &at)) {
            return fail(why, "bad drain request");
        }
        m.drain_requests[parts[1]] = at;
        return true;
    }
    if (type == "jobs" && n == 2 && parts[1] == "purge") {
        job_rec jr;
        if (!i64(j, "last_run", &jr.last_run) || !str(j, "node", &jr.node)) {
            return fail(why, "bad purge job record");
        }
        m.purge_job = std::move(jr);
        return true;
    }
    return fail(why, "unknown key");
}

model build_model(const keys& k, const range_result& r) {
    model m;
    m.revision = r.revision;
    for (const auto& item : r.kvs) {
        m.mods[item.key] = item.mod_revision;
        std::string why;
        if (!decode_record(k, item, m, &why)) {
            ++m.skipped;
            m.warnings.push_back("etcd record " + rules::quoted(item.key) + " skipped: " + why);
        }
    }
    return m;
}

connector resolve(const model& m, const connector_rec& r, const group_rec& g) {
    connector c = r.c;
    c.tenant = g.tenant;
    c.group = g.name;
    c.last_seen = c.first_seen;
    if (auto s = m.seen.find(c.id); s != m.seen.end()) {
        c.last_seen = std::max(c.last_seen, s->second.last_seen);
        if (!s->second.version.empty()) {
            c.version = s->second.version;
        }
    }
    if (auto p = m.presence.find(c.id); p != m.presence.end() && !p->second.empty()) {
        c.status = connector_status::active;
        for (const auto& t : p->second) {
            c.last_seen = std::max(c.last_seen, t.since);
            c.relays.push_back(t.node);
        }
        std::sort(c.relays.begin(), c.relays.end());
        if (!p->second.front().version.empty()) {
            c.version = p->second.front().version;
        }
    }
    return c;
}

store_view to_view(const model& m, const std::string& server_name) {
    store_view v;
    v.config_version = m.config_version;
    v.warnings = m.warnings;
    if (m.relay_ca) {
        v.relay.ca_cert_pem = m.relay_ca->cert_pem;
        v.relay.ca_key_pem = m.relay_ca->key_pem;
        if (auto fp = cert_fingerprint(m.relay_ca->cert_pem)) {
            v.relay.ca_fingerprint = fp.value();
        }
    }
    v.relay.server_name = server_name;
    if (auto it = m.server_certs.find(server_name); it != m.server_certs.end()) {
        v.relay.server_cert_pem = it->second.cert_pem;
        v.relay.server_key_pem = it->second.key_pem;
    }
    std::set<std::string> bad_tenants;
    for (const auto& [name, t] : m.tenants) {
        if (!check_cert_key_pair(t.ca_cert_pem, t.ca_key_pem).ok()) {
            v.warnings.push_back("tenant " + rules::quoted(name) +
                                 " skipped: its CA certificate or key does not parse");
            bad_tenants.insert(name);
            continue;
        }
        v.tenants.push_back(t);
    }
    for (const auto& [key, g] : m.groups) {
        if (m.tenants.count(g.tenant) != 0 && bad_tenants.count(g.tenant) == 0) {
            v.groups.push_back(group{g.tenant, g.name, g.region, g.id});
        }
    }
    for (const auto& [id, r] : m.connectors) {
        const group_rec* g = m.group_by_id(r.group_id);
        if (g == nullptr) {
            v.warnings.push_back("connector " + rules::quoted(id) + " skipped: its group is gone");
            continue;
        }
        if (bad_tenants.count(g->tenant) != 0) {
            continue;
        }
        connector c = resolve(m, r, *g);
        v.connectors.push_back(std::move(c));
    }
    for (const auto& [key, r] : m.apps) {
        const group_rec* g = m.group_by_id(r.group_id);
        if (g == nullptr || g->tenant != r.a.tenant) {
            v.warnings.push_back("app " + rules::quoted(r.a.name) + " in tenant " + rules::quoted(r.a.tenant) +
                                 " skipped: its group is gone");
            continue;
        }
        if (bad_tenants.count(r.a.tenant) != 0) {
            continue;
        }
        if (auto c = check_cert_key_pair(r.a.cert_pem, r.a.key_pem); !c) {
            v.warnings.push_back("app " + rules::quoted(r.a.name) + " in tenant " + rules::quoted(r.a.tenant) +
                                 " skipped: " + std::string(c.err().detail));
            continue;
        }
        app a = r.a;
        a.group = g->name;
        v.apps.push_back(std::move(a));
    }
    for (const auto& [fp, at] : m.revoked) {
        v.revoked_fingerprints.push_back(fp);
    }
    for (const auto& [node, r] : m.relays) {
        if (!r.address.empty() && r.address.find(':') != std::string::npos &&
            r.address.find(' ') == std::string::npos &&
            r.address.compare(r.address.size() - 2, 2, ":0") != 0) {
            v.relays.push_back({node, r.address, r.region,
                                r.draining || m.drain_requests.count(node) != 0});
        }
    }
    return v;
}

std::string encode(const tls::pem_pair& p) {
    return json{{"cert", p.cert_pem}, {"key", p.key_pem}}.dump();
}

std::string encode(const tenant& t) {
    return json{{"ca_cert", t.ca_cert_pem},
                {"ca_key", t.ca_key_pem},
                {"ca_fp", t.ca_fingerprint},
                {"created_at", t.created_at}}
        .dump();
}

std::string encode(const group_rec& g) {
    return json{{"id", g.id}, {"region", g.region}}.dump();
}

std::string encode(const connector_rec& r) {
    return json{{"name", r.c.name},       {"group_id", r.group_id}, {"version", r.c.version},
                {"fp", r.c.fingerprint},  {"cert", r.c.cert_pem},   {"first_seen", r.c.first_seen}}
        .dump();
}

std::string encode(const app_rec& r) {
    const app& a = r.a;
    json j{{"group_id", r.group_id},
                {"hostname", a.hostname},
                {"port", a.listen_port},
                {"backend_host", a.backend_host},
                {"backend_port", a.backend_port},
                {"access", std::string(to_string(a.access))},
                {"user_groups", a.allowed_user_groups},
                {"cert", a.cert_pem},
                {"key", a.key_pem},
                {"cert_issued", a.cert_issued}};
    if (a.idle_timeout_ms != 0) {
        j["idle_timeout_ms"] = a.idle_timeout_ms;
    }
    return j.dump();
}

std::string encode(const token_rec& t) {
    json j{{"group_id", t.group_id},
           {"secret_sha256", t.secret_sha256},
           {"created_at", t.created_at},
           {"expires_at", t.expires_at},
           {"revoked", t.revoked}};
    if (t.used_at > 0) {
        j["used_at"] = t.used_at;
    }
    return j.dump();
}

std::string encode(const seen_rec& s) {
    return json{{"last_seen", s.last_seen}, {"version", s.version}}.dump();
}

std::string encode(const relay_rec& r) {
    return json{{"address", r.address},
                {"region", r.region},
                {"draining", r.draining},
                {"started", r.started},
                {"config_version", r.config_version},
                {"stale", r.stale}}
        .dump();
}

std::string encode(const tunnel_rec& t) {
    return json{{"since", t.since}, {"version", t.version}}.dump();
}

std::string encode(const job_rec& j) {
    return json{{"last_run", j.last_run}, {"node", j.node}}.dump();
}

std::string encode_revoked(int64_t at) {
    return json{{"at", at}}.dump();
}

std::string encode_drain(int64_t at) {
    return json{{"at", at}}.dump();
}

std::string to_hex(std::string_view bytes) {
    static constexpr char k_digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += k_digits[c >> 4];
        out += k_digits[c & 15];
    }
    return out;
}

} // namespace apprelay::control::etcd
