// The etcd store (etcd_store.hh): the rules of rules.hh applied to a model read at one revision,
// committed as one compare-guarded transaction.
#include "control/store/etcd/etcd_store.hh"

#include "control/store/etcd/fleet.hh"
#include "control/store/pem_util.hh"
#include "control/store/rules.hh"
#include "dataplane/base/log.hh"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <random>
#include <thread>

namespace apprelay::control::etcd {

namespace {

using namespace rules;

// A write that keeps losing races gives up with a retryable error after this many rounds; each
// lost round waits a jittered, growing pause first (two writers in lockstep would otherwise
// keep colliding, and the faster one starve the other).
constexpr int k_write_attempts = 64;

void pause_after_lost_race(int attempt) {
    thread_local std::mt19937 rng(std::random_device{}());
    const int cap_us = std::min(20'000, 250 << std::min(attempt, 6));
    std::uniform_int_distribution<int> d(0, cap_us);
    std::this_thread::sleep_for(std::chrono::microseconds(d(rng)));
}

int64_t unix_now() {
    return static_cast<int64_t>(::time(nullptr));
}

} // namespace

// A write in progress: the model it read (kept current with its own writes, so a later rule
// sees an earlier step), the keys it writes, and what to log once it commits.
struct etcd_store::tx {
    model m;
    std::map<std::string, std::optional<std::string>> writes; // nullopt = delete
    bool bump = true;             // bump config_version (admin writes)
    bool compare_version = true;  // compare config_version even when not bumping
    std::vector<std::function<void()>> after_commit;

    void put(const std::string& key, std::string value) { writes[key] = std::move(value); }
    void del(const std::string& key) {
        if (m.mods.count(key) != 0 || writes.count(key) != 0) {
            writes[key] = std::nullopt;
        }
    }
};

namespace {

using tx = etcd_store::tx;

store_result<std::string> ensure_tenant(const keys& k, tx& t, const std::string& name,
                                        int64_t now) {
    if (auto e = check_name("tenant", name)) {
        return *e;
    }
    if (t.m.tenants.count(name) != 0) {
        return name;
    }
    auto made = make_tenant(name, now);
    if (!made) {
        return made.err();
    }
    t.put(k.tenant(name), encode(made.value()));
    t.m.tenants[name] = made.value();
    int64_t id = 0;
    for (const auto& [key, g] : t.m.groups) {
        id = std::max(id, g.id);
    }
    group_rec def{name, std::string(k_default_group), "", id + 1};
    t.put(k.group(name, def.name), encode(def));
    t.m.groups[{name, def.name}] = def;
    t.after_commit.push_back([name] { log::info("tenant_created", {{"tenant", name}}); });
    return name;
}

store_result<const tenant*> find_tenant(const tx& t, const std::string& name) {
    auto it = t.m.tenants.find(name);
    if (it == t.m.tenants.end()) {
        return err(kind::not_found, "no tenant " + rules::quoted(name));
    }
    return &it->second;
}

store_result<const group_rec*> find_group(const tx& t, const std::string& tenant,
                                          const std::string& name) {
    const group_rec* g = t.m.find_group(tenant, name);
    if (g == nullptr) {
        return err(kind::not_found, "no group " + rules::quoted(name) + " in tenant " + rules::quoted(tenant));
    }
    return g;
}

int64_t next_group_id(const model& m) {
    int64_t id = 0;
    for (const auto& [key, g] : m.groups) {
        id = std::max(id, g.id);
    }
    return id + 1;
}

// The connector `id` in `tenant`, or not_found.
store_result<const connector_rec*> find_connector(const tx& t, const std::string& tenant,
                                                  const std::string& id) {
    auto it = t.m.connectors.find(id);
    const group_rec* g = it == t.m.connectors.end() ? nullptr : t.m.group_by_id(it->second.group_id);
    if (g == nullptr || g->tenant != tenant) {
        return err(kind::not_found, "no connector " + rules::quoted(id) + " in tenant " + rules::quoted(tenant));
    }
    return &it->second;
}

void revoke(const keys& k, tx& t, const std::string& fp, int64_t now) {
    if (t.m.revoked.count(fp) == 0) {
        t.put(k.revoked(fp), encode_revoked(now));
        t.m.revoked[fp] = now;
    }
}

void remove_connector(const keys& k, tx& t, const std::string& id) {
    t.del(k.connector(id));
    t.del(k.seen(id));
    t.m.connectors.erase(id);
}

} // namespace

etcd_store::etcd_store(const etcd_options& o, std::unique_ptr<client> c, std::string server_name)
    : _o(o), _k(o.prefix), _c(std::move(c)), _server_name(std::move(server_name)) {}

etcd_store::~etcd_store() = default;

store_result<std::unique_ptr<etcd_store>> etcd_store::open(const etcd_options& o,
                                                           const std::string& server_name) {
    if (!valid_hostname(server_name)) {
        return err(kind::invalid, "invalid relay server name " + rules::quoted(server_name));
    }
    if (o.prefix.empty() || o.prefix.back() != '/' || !printable(o.prefix)) {
        return err(kind::invalid, "etcd prefix " + rules::quoted(o.prefix) + " must end with '/'");
    }
    if (o.fleet.follow && !valid_name(o.fleet.node)) {
        return err(kind::invalid, "invalid fleet node name " + rules::quoted(o.fleet.node) +
                                      ": 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    auto c = client::make(o.client);
    if (!c) {
        return c.err();
    }
    std::unique_ptr<etcd_store> s(new etcd_store(o, std::move(c).value(), server_name));
    if (auto r = s->ensure_relay_identity(); !r) {
        return r.err();
    }
    if (o.fleet.follow) {
        s->_fleet = std::make_unique<fleet_member>(o, *s->_c, s->_k);
        if (auto r = s->_fleet->start(); !r) {
            return r.err();
        }
    }
    return store_result<std::unique_ptr<etcd_store>>(std::move(s));
}

// A read that fails for want of a leader (an election in progress) is tried again until the
// client's deadline: reads change nothing, so a retry is always safe. (A transaction whose
// outcome is unknown is not retried: the caller gets the 503.)
store_result<model> etcd_store::read() {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(_o.client.timeout_ms);
    for (;;) {
        auto r = _c->range_prefix(_k.prefix);
        if (r) {
            return build_model(_k, r.value());
        }
        if (r.err().k != kind::unavailable ||
            std::chrono::steady_clock::now() + std::chrono::milliseconds(100) > deadline) {
            return r.err();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

// Runs fn(tx&) -> store_result<V> on a fresh read, then commits its writes in one transaction
// guarded by the mod revision of every written key (and config_version); retries lost races.
template <class F> auto etcd_store::write(F&& fn) {
    using fn_result = decltype(fn(std::declval<tx&>()));
    using value = std::remove_cvref_t<decltype(std::declval<fn_result&>().value())>;
    using out = store_result<changed<value>>;
    for (int attempt = 0; attempt < k_write_attempts; ++attempt) {
        auto m = read();
        if (!m) {
            return out(m.err());
        }
        tx t;
        t.m = std::move(m).value();
        fn_result r = fn(t);
        if (!r.ok()) {
            return out(r.err());
        }
        uint64_t version = t.m.config_version;
        std::vector<compare> cmp;
        std::vector<op> ops;
        for (const auto& [key, v] : t.writes) {
            auto it = t.m.mods.find(key);
            cmp.push_back({key, it == t.m.mods.end() ? 0 : it->second});
            ops.push_back(v ? op{op::kind::put, key, *v, 0} : op{op::kind::del, key, "", 0});
        }
        if (t.bump || t.compare_version) {
            auto it = t.m.mods.find(_k.version());
            cmp.push_back({_k.version(), it == t.m.mods.end() ? 0 : it->second});
        }
        if (t.bump) {
            ++version;
            ops.push_back({op::kind::put, _k.version(), std::to_string(version), 0});
        }
        if (ops.empty()) {
            return out(changed<value>{std::move(r).value(), version});
        }
        auto res = _c->txn(cmp, ops);
        if (!res) {
            return out(res.err());
        }
        if (res->succeeded) {
            for (auto& f : t.after_commit) {
                f();
            }
            return out(changed<value>{std::move(r).value(), version});
        }
        // Another writer won between our read and our commit: read again.
        pause_after_lost_race(attempt);
    }
    return out(err(kind::unavailable, "store busy: concurrent writes kept winning; retry"));
}

// Admin reads see etcd as it is now; while etcd cannot answer, a relay answers from its copy
// (status and lists keep working in an outage; /v1/status says how stale that copy is).
template <class F> auto etcd_store::read_with(F&& fn) {
    using out = decltype(fn(std::declval<const model&>()));
    auto m = read();
    if (!m) {
        if (m.err().k == kind::unavailable && _fleet) {
            if (auto copy = _fleet->current()) {
                return fn(*copy);
            }
        }
        return out(m.err());
    }
    return fn(m.value());
}

store_result<void> etcd_store::ensure_relay_identity() {
    for (int attempt = 0; attempt < k_write_attempts; ++attempt) {
        auto m = read();
        if (!m) {
            return m.err();
        }
        std::vector<compare> cmp;
        std::vector<op> ops;
        tls::pem_pair ca;
        if (m->relay_ca) {
            ca = *m->relay_ca;
            if (m->server_certs.count(_server_name) != 0) {
                return {};
            }
            cmp.push_back({_k.relay_ca(), m->mods[_k.relay_ca()]});
        } else {
            if (m->mods.count(_k.relay_ca()) != 0) {
                return err(kind::internal, "the relay CA record in etcd does not parse");
            }
            std::string why;
            auto made = tls::make_ca("apprelay relay CA", k_ca_days, &why);
            if (!made) {
                return err(kind::internal, "cannot create the relay CA: " + why);
            }
            ca = made.value();
            cmp.push_back({_k.relay_ca(), 0});
            ops.push_back({op::kind::put, _k.relay_ca(), encode(ca), 0});
        }
        auto leaf = issue_server_cert(ca, _server_name);
        if (!leaf) {
            return leaf.err();
        }
        const auto key = _k.server(_server_name);
        auto it = m->mods.find(key);
        cmp.push_back({key, it == m->mods.end() ? 0 : it->second});
        ops.push_back({op::kind::put, key, encode(leaf.value()), 0});
        auto res = _c->txn(cmp, ops);
        if (!res) {
            return res.err();
        }
        if (res->succeeded) {
            log::info("relay_identity_issued",
                      {{"server_name", _server_name}, {"new_ca", !m->relay_ca.has_value()}});
            return {};
        }
    }
    return err(kind::unavailable, "cannot record the relay identity: concurrent writers");
}

// A read of one tenant's objects: an unknown tenant is not_found, as in the SQLite store.
template <class F> auto etcd_store::read_in_tenant(const std::string& tenant, F&& fn) {
    return read_with([&](const model& m) -> decltype(fn(m)) {
        if (m.tenants.count(tenant) == 0) {
            return err(kind::not_found, "no tenant " + rules::quoted(tenant));
        }
        return fn(m);
    });
}

store_result<relay_identity> etcd_store::relay() {
    return read_with([&](const model& m) -> store_result<relay_identity> {
        auto v = to_view(m, _server_name);
        if (v.relay.ca_fingerprint.empty() || v.relay.server_cert_pem.empty()) {
            return err(kind::internal, "relay identity in etcd is missing or does not parse");
        }
        return v.relay;
    });
}

store_result<uint64_t> etcd_store::config_version() {
    if (_fleet) {
        auto m = _fleet->current();
        if (m) {
            return m->config_version;
        }
        return err(kind::unavailable, "etcd: no copy of the prefix yet");
    }
    auto r = _c->get(_k.version());
    if (!r) {
        return r.err();
    }
    if (r->kvs.empty()) {
        return uint64_t{0};
    }
    model m;
    std::string why;
    if (!decode_record(_k, r->kvs.front(), m, &why)) {
        return err(kind::internal, "etcd config_version: " + why);
    }
    return m.config_version;
}

store_result<store_view> etcd_store::load() {
    if (_fleet) {
        auto m = _fleet->current();
        if (!m) {
            return err(kind::unavailable, "etcd: no copy of the prefix yet");
        }
        return to_view(*m, _server_name);
    }
    return read_with([&](const model& m) -> store_result<store_view> {
        return to_view(m, _server_name);
    });
}

store_result<std::vector<tenant>> etcd_store::tenants() {
    return read_with([&](const model& m) -> store_result<std::vector<tenant>> {
        std::vector<tenant> out;
        for (const auto& [name, t] : m.tenants) {
            out.push_back(t);
        }
        return out;
    });
}

store_result<tenant> etcd_store::get_tenant(const std::string& name) {
    return read_with([&](const model& m) -> store_result<tenant> {
        auto it = m.tenants.find(name);
        if (it == m.tenants.end()) {
            return err(kind::not_found, "no tenant " + rules::quoted(name));
        }
        return it->second;
    });
}

store_result<std::vector<group>> etcd_store::groups(const std::string& tenant) {
    return read_in_tenant(tenant, [&](const model& m) -> store_result<std::vector<group>> {
        std::vector<group> out;
        for (const auto& [key, g] : m.groups) {
            if (g.tenant == tenant) {
                out.push_back(group{g.tenant, g.name, g.region, g.id});
            }
        }
        return out;
    });
}

store_result<std::vector<connector>> etcd_store::connectors(const std::string& tenant) {
    return read_in_tenant(tenant, [&](const model& m) -> store_result<std::vector<connector>> {
        std::vector<connector> out;
        for (const auto& [id, r] : m.connectors) {
            const group_rec* g = m.group_by_id(r.group_id);
            if (g != nullptr && g->tenant == tenant) {
                out.push_back(resolve(m, r, *g));
            }
        }
        return out;
    });
}

store_result<connector_counts> etcd_store::count_connectors() {
    return read_with([&](const model& m) -> store_result<connector_counts> {
        connector_counts n;
        for (const auto& [id, r] : m.connectors) {
            auto p = m.presence.find(id);
            (p != m.presence.end() && !p->second.empty() ? n.active : n.inactive) += 1;
        }
        return n;
    });
}

store_result<std::vector<app>> etcd_store::apps(const std::string& tenant) {
    return read_in_tenant(tenant, [&](const model& m) -> store_result<std::vector<app>> {
        std::vector<app> out;
        for (const auto& [key, r] : m.apps) {
            const group_rec* g = m.group_by_id(r.group_id);
            if (r.a.tenant == tenant && g != nullptr) {
                app a = r.a;
                a.group = g->name;
                out.push_back(std::move(a));
            }
        }
        return out;
    });
}

store_result<std::vector<token_info>> etcd_store::tokens(const std::string& tenant, int64_t now) {
    return read_in_tenant(tenant, [&](const model& m) -> store_result<std::vector<token_info>> {
        std::vector<token_info> out;
        for (const auto& [id, t] : m.tokens) {
            const group_rec* g = m.group_by_id(t.group_id);
            if (g == nullptr || g->tenant != tenant) {
                continue;
            }
            token_info ti;
            ti.id = id;
            ti.tenant = tenant;
            ti.group = g->name;
            ti.created_at = t.created_at;
            ti.expires_at = t.expires_at;
            ti.used_at = t.used_at;
            ti.revoked = t.revoked;
            ti.state = state_of(t.revoked, t.used_at, t.expires_at, now);
            out.push_back(std::move(ti));
        }
        std::sort(out.begin(), out.end(), [](const token_info& a, const token_info& b) {
            return std::tie(a.created_at, a.id) < std::tie(b.created_at, b.id);
        });
        return out;
    });
}

// ---- admin writes -------------------------------------------------------------------------

store_result<changed<group>> etcd_store::create_group(const std::string& tenant,
                                                      const std::string& name,
                                                      const std::string& region, int64_t now) {
    return write([&](tx& t) -> store_result<group> {
        if (auto e = check_name("group", name)) {
            return *e;
        }
        if (auto e = check_region(name, region)) {
            return *e;
        }
        if (auto r = ensure_tenant(_k, t, tenant, now); !r) {
            return r.err();
        }
        if (t.m.find_group(tenant, name) != nullptr) {
            return err(kind::conflict,
                       "group " + rules::quoted(name) + " already exists in tenant " + rules::quoted(tenant));
        }
        group_rec g{tenant, name, region, next_group_id(t.m)};
        t.put(_k.group(tenant, name), encode(g));
        t.m.groups[{tenant, name}] = g;
        return group{tenant, name, region, g.id};
    });
}

store_result<uint64_t> etcd_store::rename_group(const std::string& tenant, const std::string& name,
                                                const std::string& new_name) {
    auto r = write([&](tx& t) -> store_result<int> {
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        auto g = find_group(t, tenant, name);
        if (!g) {
            return g.err();
        }
        if (name == k_default_group) {
            return err(kind::refused, "group 'Default' cannot be renamed");
        }
        if (auto e = check_name("group", new_name)) {
            return *e;
        }
        if (t.m.find_group(tenant, new_name) != nullptr) {
            return err(kind::conflict,
                       "group " + rules::quoted(new_name) + " already exists in tenant " + rules::quoted(tenant));
        }
        // Members refer to the group by id: a rename moves one key.
        group_rec moved = *g.value();
        moved.name = new_name;
        t.del(_k.group(tenant, name));
        t.put(_k.group(tenant, new_name), encode(moved));
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<changed<std::vector<std::string>>>
etcd_store::delete_group(const std::string& tenant, const std::string& name, bool force) {
    return write([&](tx& t) -> store_result<std::vector<std::string>> {
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        auto g = find_group(t, tenant, name);
        if (!g) {
            return g.err();
        }
        if (name == k_default_group) {
            return err(kind::refused, "group 'Default' cannot be deleted");
        }
        const int64_t gid = g.value()->id;
        std::vector<std::string> apps;
        for (const auto& [key, a] : t.m.apps) {
            if (a.group_id == gid) {
                apps.push_back(a.a.name);
            }
        }
        if (!apps.empty()) {
            return err(kind::conflict,
                       "group " + rules::quoted(name) + " is used by apps: " + join(apps, ", "));
        }
        std::vector<std::string> connectors;
        for (const auto& [id, c] : t.m.connectors) {
            if (c.group_id == gid) {
                connectors.push_back(id);
            }
        }
        if (!connectors.empty() && !force) {
            return err(kind::conflict, "group " + rules::quoted(name) +
                                           " has connectors: " + join(connectors, ", ") +
                                           " (force moves them to Default)");
        }
        const group_rec* def = t.m.find_group(tenant, std::string(k_default_group));
        if (def == nullptr) {
            return err(kind::internal, "tenant " + rules::quoted(tenant) + " has no Default group");
        }
        for (const auto& id : connectors) {
            connector_rec c = t.m.connectors[id];
            c.group_id = def->id;
            t.put(_k.connector(id), encode(c));
        }
        // A token for a deleted group cannot enroll where the admin meant: it goes too.
        for (const auto& [id, tok] : t.m.tokens) {
            if (tok.group_id == gid) {
                t.del(_k.token(id));
                t.del(_k.token_used(id));
            }
        }
        t.del(_k.group(tenant, name));
        return connectors;
    });
}

store_result<uint64_t> etcd_store::move_connector(const std::string& tenant, const std::string& id,
                                                  const std::string& group) {
    auto r = write([&](tx& t) -> store_result<int> {
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        auto c = find_connector(t, tenant, id);
        if (!c) {
            return c.err();
        }
        auto g = find_group(t, tenant, group);
        if (!g) {
            return g.err();
        }
        connector_rec moved = *c.value();
        moved.group_id = g.value()->id;
        t.put(_k.connector(id), encode(moved));
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<uint64_t> etcd_store::delete_connector(const std::string& tenant,
                                                    const std::string& id) {
    auto r = write([&](tx& t) -> store_result<int> {
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        auto c = find_connector(t, tenant, id);
        if (!c) {
            return c.err();
        }
        revoke(_k, t, c.value()->c.fingerprint, unix_now());
        remove_connector(_k, t, id);
        t.after_commit.push_back([tenant, id] {
            log::info("connector_deleted", {{"tenant", tenant}, {"connector", id}});
        });
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<changed<app>> etcd_store::create_app(const std::string& tenant,
                                                  const std::string& name, const app_fields& f,
                                                  int64_t now) {
    return write([&](tx& t) -> store_result<app> {
        if (auto e = check_name("app", name)) {
            return *e;
        }
        if (auto r = ensure_tenant(_k, t, tenant, now); !r) {
            return r.err();
        }
        if (t.m.apps.count({tenant, name}) != 0) {
            return err(kind::conflict,
                       "app " + rules::quoted(name) + " already exists in tenant " + rules::quoted(tenant));
        }
        app_rec r;
        r.a.tenant = tenant;
        r.a.name = name;
        r.a.group = std::string(k_default_group);
        return save_app(t, r, f, true);
    });
}

store_result<changed<app>> etcd_store::update_app(const std::string& tenant,
                                                  const std::string& name, const app_fields& f) {
    return write([&](tx& t) -> store_result<app> {
        if (auto e = check_name("app", name)) {
            return *e;
        }
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        auto it = t.m.apps.find({tenant, name});
        const group_rec* g = it == t.m.apps.end() ? nullptr : t.m.group_by_id(it->second.group_id);
        if (g == nullptr) {
            return err(kind::not_found, "no app " + rules::quoted(name) + " in tenant " + rules::quoted(tenant));
        }
        app_rec r = it->second;
        r.a.group = g->name;
        return save_app(t, r, f, false);
    });
}

store_result<app> etcd_store::save_app(tx& t, app_rec r, const app_fields& f, bool create) {
    bool reissue = false;
    if (auto e = apply_app_fields(r.a, f, create, &reissue)) {
        return *e;
    }
    const std::string& tenant = r.a.tenant;
    auto g = find_group(t, tenant, r.a.group);
    if (!g) {
        return g.err();
    }
    r.group_id = g.value()->id;
    for (const auto& [key, other] : t.m.apps) {
        if (key == std::make_pair(tenant, r.a.name)) {
            continue;
        }
        if (!r.a.hostname.empty() && other.a.hostname == r.a.hostname) {
            return err(kind::conflict, "hostname " + rules::quoted(r.a.hostname) +
                                           " is already used by app " + rules::quoted(other.a.name) +
                                           " in tenant " + rules::quoted(other.a.tenant));
        }
        if (r.a.listen_port != 0 && other.a.listen_port == r.a.listen_port) {
            return err(kind::conflict, "listen_port " + std::to_string(r.a.listen_port) +
                                           " is already used by app " + rules::quoted(other.a.name) +
                                           " in tenant " + rules::quoted(other.a.tenant));
        }
    }
    if (reissue) {
        const control::tenant& ten = t.m.tenants.at(tenant);
        if (auto e = issue_app_cert(r.a, {ten.ca_cert_pem, ten.ca_key_pem})) {
            return *e;
        }
    }
    t.put(_k.app(tenant, r.a.name), encode(r));
    t.m.apps[{tenant, r.a.name}] = r;
    return r.a;
}

store_result<uint64_t> etcd_store::delete_app(const std::string& tenant, const std::string& name) {
    auto r = write([&](tx& t) -> store_result<int> {
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        if (t.m.apps.count({tenant, name}) == 0) {
            return err(kind::not_found, "no app " + rules::quoted(name) + " in tenant " + rules::quoted(tenant));
        }
        t.del(_k.app(tenant, name));
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<changed<new_token>> etcd_store::create_token(const std::string& tenant,
                                                          const std::string& group, int64_t ttl_s,
                                                          int64_t now) {
    return write([&](tx& t) -> store_result<new_token> {
        if (ttl_s <= 0) {
            return err(kind::invalid, "token ttl_s must be positive");
        }
        if (auto r = ensure_tenant(_k, t, tenant, now); !r) {
            return r.err();
        }
        auto g = find_group(t, tenant, group);
        if (!g) {
            return g.err();
        }
        auto secret = random_hex(k_secret_bytes);
        if (!secret) {
            return err(kind::internal, "cannot draw a token secret: CSPRNG failed");
        }
        if (!t.m.relay_ca) {
            return err(kind::internal, "relay CA certificate in etcd is missing");
        }
        auto fp = cert_fingerprint(t.m.relay_ca->cert_pem);
        if (!fp) {
            return err(kind::internal, "relay CA certificate in etcd does not parse");
        }
        for (int attempt = 0; attempt < k_id_attempts; ++attempt) {
            auto id = random_hex(k_id_bytes);
            if (!id) {
                return err(kind::internal, "cannot draw a token id: CSPRNG failed");
            }
            if (t.m.tokens.count(id.value()) != 0) {
                continue;
            }
            token_rec rec;
            rec.id = id.value();
            rec.group_id = g.value()->id;
            rec.secret_sha256 = to_hex(sha256(secret.value()));
            rec.created_at = now;
            rec.expires_at = now + ttl_s;
            t.put(_k.token(rec.id), encode(rec));
            // The token is never logged (PROTOCOL.md); its id is not a secret.
            t.after_commit.push_back([tenant, group, id = rec.id] {
                log::info("token_created", {{"tenant", tenant}, {"group", group}, {"id", id}});
            });
            return new_token{rec.id, "art1." + rec.id + "." + secret.value() + "." + fp.value(),
                             group, now + ttl_s};
        }
        return err(kind::internal, "cannot draw a unique token id");
    });
}

store_result<uint64_t> etcd_store::revoke_token(const std::string& tenant, const std::string& id) {
    auto r = write([&](tx& t) -> store_result<int> {
        if (auto x = find_tenant(t, tenant); !x) {
            return x.err();
        }
        auto it = t.m.tokens.find(id);
        const group_rec* g = it == t.m.tokens.end() ? nullptr : t.m.group_by_id(it->second.group_id);
        if (g == nullptr || g->tenant != tenant) {
            return err(kind::not_found, "no token " + rules::quoted(id) + " in tenant " + rules::quoted(tenant));
        }
        if (it->second.used_at != 0) {
            return err(kind::conflict, "token " + rules::quoted(id) + " is already used");
        }
        if (it->second.revoked) {
            return err(kind::conflict, "token " + rules::quoted(id) + " is already revoked");
        }
        token_rec rec = it->second;
        rec.revoked = true;
        t.put(_k.token(id), encode(rec));
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

// The compare-and-set of the issue: the token's key is compared at the revision read, and the
// same transaction deletes it, records it as used, records the connector and bumps
// config_version; of N parallel redemptions exactly one commits, the others re-read and find it
// used.
store_result<changed<connector>> etcd_store::enroll(const std::string& token,
                                                    const std::string& name,
                                                    const std::string& version,
                                                    const cert_signer& signer, int64_t now) {
    auto parts = parse_enrollment(token, name, version);
    if (!parts) {
        return parts.err();
    }
    const std::string secret_hex = to_hex(sha256(parts->secret));
    return write([&](tx& t) -> store_result<connector> {
        const std::string& id = parts->id;
        auto it = t.m.tokens.find(id);
        // A wrong secret reads exactly like an unknown id: no oracle for guessing ids.
        if (it == t.m.tokens.end() || !equal_const_time(secret_hex, it->second.secret_sha256)) {
            return err(kind::not_found, "unknown token");
        }
        const token_rec tok = it->second;
        const group_rec* g = t.m.group_by_id(tok.group_id);
        if (g == nullptr) {
            return err(kind::not_found, "unknown token");
        }
        if (tok.revoked) {
            return err(kind::refused, "token revoked");
        }
        if (tok.used_at != 0) {
            return err(kind::conflict, "token already used");
        }
        if (now >= tok.expires_at) {
            return err(kind::refused, "token expired");
        }
        auto ten = find_tenant(t, g->tenant);
        if (!ten) {
            return ten.err();
        }
        connector_rec r;
        for (int attempt = 0; attempt < k_id_attempts && r.c.id.empty(); ++attempt) {
            auto fresh = random_hex(k_id_bytes);
            if (!fresh) {
                return err(kind::internal, "cannot draw a connector id: CSPRNG failed");
            }
            if (t.m.connectors.count(fresh.value()) == 0) {
                r.c.id = fresh.value();
            }
        }
        if (r.c.id.empty()) {
            return err(kind::internal, "cannot draw a unique connector id");
        }
        auto cert = signer(tls::pem_pair{ten.value()->ca_cert_pem, ten.value()->ca_key_pem},
                           r.c.id, g->tenant);
        if (!cert) {
            return cert.err();
        }
        r.group_id = g->id;
        r.c.name = name;
        r.c.version = version;
        r.c.fingerprint = cert->fingerprint;
        r.c.cert_pem = cert->cert_pem;
        r.c.first_seen = now;
        t.put(_k.connector(r.c.id), encode(r));
        token_rec used = tok;
        used.used_at = now;
        t.del(_k.token(id));
        t.put(_k.token_used(id), encode(used));
        connector c = r.c;
        c.tenant = g->tenant;
        c.group = g->name;
        c.last_seen = now;
        c.status = connector_status::inactive;
        t.after_commit.push_back([c] {
            log::info("connector_enrolled",
                      {{"tenant", c.tenant}, {"group", c.group}, {"connector", c.id}});
        });
        return c;
    });
}

// ---- liveness and the purge ---------------------------------------------------------------

store_result<void> etcd_store::connector_seen(const std::string& id, const std::string& version,
                                              int64_t now) {
    if (version.size() > k_max_version || !printable(version)) {
        return err(kind::invalid, "invalid version for connector " + rules::quoted(id));
    }
    if (_fleet) {
        _fleet->seen(id, version, now);
        return {};
    }
    auto r = write([&](tx& t) -> store_result<int> {
        t.bump = false;
        t.compare_version = false;
        if (t.m.connectors.count(id) == 0) {
            return err(kind::not_found, "no connector " + rules::quoted(id));
        }
        t.put(_k.seen(id), encode(seen_rec{now, version}));
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return {};
}

store_result<void> etcd_store::set_connector_status(const std::string& id, connector_status s,
                                                    int64_t now) {
    if (_fleet) {
        _fleet->set_tunnel(id, s == connector_status::active, now);
        return {};
    }
    // Without a fleet member (tools, tests): presence without a lease, under this store's node.
    auto r = write([&](tx& t) -> store_result<int> {
        t.bump = false;
        t.compare_version = false;
        auto it = t.m.connectors.find(id);
        if (it == t.m.connectors.end()) {
            return err(kind::not_found, "no connector " + rules::quoted(id));
        }
        auto seen = t.m.seen.find(id);
        const std::string version =
            seen == t.m.seen.end() ? it->second.c.version : seen->second.version;
        const std::string node = _o.fleet.node.empty() ? "direct" : _o.fleet.node;
        if (s == connector_status::active) {
            t.put(_k.tunnel_presence(id, node), encode(tunnel_rec{node, now, version}));
        } else {
            t.del(_k.tunnel_presence(id, node));
        }
        t.put(_k.seen(id), encode(seen_rec{now, version}));
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return {};
}

store_result<changed<std::vector<std::string>>> etcd_store::purge_inactive(int64_t max_age_s,
                                                                           int64_t now) {
    return write([&](tx& t) -> store_result<std::vector<std::string>> {
        t.bump = false;
        t.compare_version = true; // the candidates were read at this version
        if (max_age_s <= 0) {
            return err(kind::invalid, "purge max age must be positive");
        }
        // One run per interval across the fleet: a relay that finds the job done recently
        // leaves it; the job key is written (and compared) in the purge's own transaction.
        const int64_t interval = std::clamp<int64_t>(max_age_s / 4, 1, 60);
        if (t.m.purge_job && now - t.m.purge_job->last_run < interval &&
            now >= t.m.purge_job->last_run) {
            return std::vector<std::string>{};
        }
        std::vector<std::string> ids;
        for (const auto& [id, r] : t.m.connectors) {
            const group_rec* g = t.m.group_by_id(r.group_id);
            if (g == nullptr) {
                continue;
            }
            connector c = resolve(t.m, r, *g);
            if (c.status == connector_status::inactive && c.last_seen < now - max_age_s) {
                ids.push_back(id);
            }
        }
        for (const auto& id : ids) {
            revoke(_k, t, t.m.connectors[id].c.fingerprint, now);
            remove_connector(_k, t, id);
        }
        t.put(_k.purge_job(), encode(job_rec{now, _o.fleet.node.empty() ? "-" : _o.fleet.node}));
        t.bump = !ids.empty();
        return ids;
    });
}

uint64_t etcd_store::fleet_epoch() {
    return _fleet ? _fleet->fleet_epoch() : 0;
}

store_health etcd_store::health() {
    if (_fleet) {
        return _fleet->health();
    }
    store_health h;
    h.fleet = true;
    return h;
}

store_result<std::vector<fleet_relay>> etcd_store::relays() {
    return read_with([&](const model& m) -> store_result<std::vector<fleet_relay>> {
        std::map<std::string, uint32_t> tunnels;
        for (const auto& [id, holders] : m.presence) {
            for (const auto& t : holders) {
                ++tunnels[t.node];
            }
        }
        std::vector<fleet_relay> out;
        for (const auto& [node, r] : m.relays) {
            fleet_relay f;
            f.node = node;
            f.address = r.address;
            f.region = r.region;
            f.draining = r.draining;
            f.drain_requested = m.drain_requests.count(node) != 0;
            f.started = r.started;
            f.config_version = r.config_version;
            f.stale = r.stale;
            f.tunnels = tunnels[node];
            out.push_back(std::move(f));
        }
        return out;
    });
}

// An admin write like any other: the node must be present, and the request key is compared.
store_result<uint64_t> etcd_store::request_drain(const std::string& node) {
    auto r = write([&](tx& t) -> store_result<int> {
        if (t.m.relays.count(node) == 0) {
            return err(kind::not_found, "no relay " + rules::quoted(node) + " in the fleet");
        }
        if (t.m.drain_requests.count(node) != 0) {
            return err(kind::conflict, "relay " + rules::quoted(node) + " is already draining");
        }
        t.put(_k.drain(node), encode_drain(unix_now()));
        t.after_commit.push_back([node] { log::info("relay_drain_requested", {{"node", node}}); });
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

bool etcd_store::drain_requested() {
    if (!_fleet) {
        return false;
    }
    auto m = _fleet->current();
    return m && m->drain_requests.count(_o.fleet.node) != 0;
}

void etcd_store::set_fleet_address(const std::string& address) {
    if (_fleet) {
        _fleet->set_address(address);
    }
}

void etcd_store::set_draining(bool draining) {
    if (_fleet) {
        _fleet->set_draining(draining);
    }
}

} // namespace apprelay::control::etcd
