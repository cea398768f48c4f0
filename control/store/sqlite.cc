// SQLite store. Internally, a failing SQLite call throws sql_failure; write() and read() catch it
// at the transaction boundary, roll back, and turn it into store_error{internal}: no exception
// leaves this file, and the rule code stays a straight list of checks.
#include "control/store/sqlite.hh"

#include "control/store/pem_util.hh"
#include "control/store/rules.hh"
#include "dataplane/base/log.hh"

#include <algorithm>
#include <cctype>
#include <exception>
#include <sqlite3.h>
#include <type_traits>
#include <variant>

namespace apprelay::control {

namespace {

using kind = store_error::kind;
using namespace rules;

constexpr int k_busy_timeout_ms = 5000;
const std::vector<std::string_view> k_migrations = {
    // 1: the objects of DESIGN.md. Groups carry an integer id so a rename is one row update.
    R"sql(
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE tenants (name TEXT PRIMARY KEY, ca_cert_pem TEXT NOT NULL, ca_key_pem TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE groups (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL, region TEXT NOT NULL DEFAULT '', UNIQUE (tenant, name));
CREATE TABLE connectors (id TEXT PRIMARY KEY, name TEXT NOT NULL,
    group_id INTEGER NOT NULL REFERENCES groups(id), version TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE, cert_pem TEXT NOT NULL, first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL, status TEXT NOT NULL);
CREATE TABLE apps (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL, hostname TEXT UNIQUE, listen_port INTEGER UNIQUE,
    backend_host TEXT NOT NULL, backend_port INTEGER NOT NULL,
    group_id INTEGER NOT NULL REFERENCES groups(id), access TEXT NOT NULL,
    allowed_user_groups TEXT NOT NULL, cert_pem TEXT NOT NULL, key_pem TEXT NOT NULL,
    UNIQUE (tenant, name));
CREATE TABLE tokens (id TEXT PRIMARY KEY, group_id INTEGER NOT NULL REFERENCES groups(id),
    secret_sha256 BLOB NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    used_at INTEGER, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE revoked (fingerprint TEXT PRIMARY KEY, revoked_at INTEGER NOT NULL);
)sql",
    // 2: apps remember whether the tenant CA issued their certificate, so a hostname change
    // re-issues it (an uploaded one is the admin's); the purge scan gets its index.
    R"sql(
ALTER TABLE apps ADD COLUMN cert_issued INTEGER NOT NULL DEFAULT 0;
CREATE INDEX connectors_status_last_seen ON connectors (status, last_seen);
)sql",
    // 3: an app may carry its own idle-stream limit (0 = the relay's [limits] idle_timeout_ms).
    R"sql(
ALTER TABLE apps ADD COLUMN idle_timeout_ms INTEGER NOT NULL DEFAULT 0;
)sql",
};

struct sql_failure {
    std::string message;
};

} // namespace

// A prepared statement borrowed from the cache; reset (bindings cleared) when released so the
// next user starts clean.
class sqlite_store::stmt {
public:
    stmt(sqlite3* db, sqlite3_stmt* s) : _db(db), _s(s) {}
    stmt(const stmt&) = delete;
    stmt& operator=(const stmt&) = delete;
    ~stmt() {
        sqlite3_reset(_s);
        sqlite3_clear_bindings(_s);
    }

    template <class... A> stmt& bind(const A&... args) {
        int i = 1;
        (bind_one(i++, args), ...);
        return *this;
    }
    // True while a row is available; false when done.
    bool step() {
        int rc = sqlite3_step(_s);
        if (rc == SQLITE_ROW) {
            return true;
        }
        if (rc == SQLITE_DONE) {
            return false;
        }
        throw sql_failure{std::string("database error: ") + sqlite3_errmsg(_db)};
    }
    void run() {
        while (step()) {
        }
    }
    int64_t i64(int col) const { return sqlite3_column_int64(_s, col); }
    bool null(int col) const { return sqlite3_column_type(_s, col) == SQLITE_NULL; }
    std::string text(int col) const {
        const void* p = sqlite3_column_blob(_s, col);
        int n = sqlite3_column_bytes(_s, col);
        return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
    }

private:
    void check(int rc) {
        if (rc != SQLITE_OK) {
            throw sql_failure{std::string("database error: ") + sqlite3_errmsg(_db)};
        }
    }
    void bind_one(int i, std::string_view v) {
        check(sqlite3_bind_text(_s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    }
    void bind_one(int i, const std::string& v) { bind_one(i, std::string_view(v)); }
    void bind_one(int i, const char* v) { bind_one(i, std::string_view(v)); }
    void bind_one(int i, std::nullptr_t) { check(sqlite3_bind_null(_s, i)); }
    template <class I>
    requires std::is_integral_v<I>
    void bind_one(int i, I v) { check(sqlite3_bind_int64(_s, i, static_cast<sqlite3_int64>(v))); }

    sqlite3* _db;
    sqlite3_stmt* _s;
};

// Per-write options: a write that changed nothing clears `bump`.
struct sqlite_store::tx {
    bool bump = true;
};

sqlite_store::stmt sqlite_store::query(const char* sql) {
    auto it = _stmts.find(sql);
    if (it == _stmts.end()) {
        sqlite3_stmt* s = nullptr;
        if (sqlite3_prepare_v3(_db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) {
            throw sql_failure{std::string("database error: ") + sqlite3_errmsg(_db)};
        }
        it = _stmts.emplace(sql, s).first;
    }
    return stmt(_db, it->second);
}

void sqlite_store::exec(const char* sql) {
    char* msg = nullptr;
    if (sqlite3_exec(_db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
        std::string m = std::string("database error: ") + (msg != nullptr ? msg : "unknown");
        sqlite3_free(msg);
        throw sql_failure{std::move(m)};
    }
}

// Runs fn(tx&) -> store_result<V> inside BEGIN IMMEDIATE; on success bumps config_version (unless
// fn cleared tx.bump) and commits; on any refusal or failure rolls back, so nothing is written.
template <class F> auto sqlite_store::write(F&& fn) {
    using fn_result = decltype(fn(std::declval<tx&>()));
    using value = std::remove_cvref_t<decltype(std::declval<fn_result&>().value())>;
    using out = store_result<changed<value>>;
    try {
        exec("BEGIN IMMEDIATE");
    } catch (const sql_failure& f) {
        return out(err(kind::internal, f.message));
    }
    try {
        tx t;
        fn_result r = fn(t);
        if (!r.ok()) {
            exec("ROLLBACK");
            return out(r.err());
        }
        uint64_t v = current_version();
        if (t.bump) {
            ++v;
            query("INSERT OR REPLACE INTO meta (key, value) VALUES ('config_version', ?)")
                .bind(static_cast<int64_t>(v))
                .run();
        }
        exec("COMMIT");
        return out(changed<value>{std::move(r).value(), v});
    } catch (const sql_failure& f) {
        sqlite3_exec(_db, "ROLLBACK", nullptr, nullptr, nullptr);
        return out(err(kind::internal, f.message));
    } catch (const std::exception& e) {
        sqlite3_exec(_db, "ROLLBACK", nullptr, nullptr, nullptr);
        return out(err(kind::internal, std::string("store failure: ") + e.what()));
    }
}

// Runs fn() -> store_result<V> in one read transaction, so multi-table reads are consistent.
template <class F> auto sqlite_store::read(F&& fn) {
    using out = decltype(fn());
    try {
        exec("BEGIN");
    } catch (const sql_failure& f) {
        return out(err(kind::internal, f.message));
    }
    try {
        out r = fn();
        exec("COMMIT");
        return r;
    } catch (const sql_failure& f) {
        sqlite3_exec(_db, "ROLLBACK", nullptr, nullptr, nullptr);
        return out(err(kind::internal, f.message));
    } catch (const std::exception& e) {
        sqlite3_exec(_db, "ROLLBACK", nullptr, nullptr, nullptr);
        return out(err(kind::internal, std::string("store failure: ") + e.what()));
    }
}

const std::vector<std::string_view>& sqlite_store::migrations() {
    return k_migrations;
}

sqlite_store::~sqlite_store() {
    for (auto& [sql, s] : _stmts) {
        sqlite3_finalize(s);
    }
    sqlite3_close(_db);
}

store_result<std::unique_ptr<sqlite_store>> sqlite_store::open(const std::string& path,
                                                               const std::string& server_name) {
    if (!valid_hostname(server_name)) {
        return err(kind::invalid, "invalid relay server name " + quoted(server_name));
    }
    sqlite3* db = nullptr;
    int rc =
        sqlite3_open_v2(path.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
        std::string m = "cannot open store " + quoted(path) + ": " +
                        (db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return err(kind::internal, std::move(m));
    }
    std::unique_ptr<sqlite_store> s(new sqlite_store(db));
    sqlite3_busy_timeout(db, k_busy_timeout_ms);
    try {
        s->exec("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;");
    } catch (const sql_failure& f) {
        return err(kind::internal, "cannot open store " + quoted(path) + ": " + f.message);
    }
    if (auto m = s->migrate(); !m.ok()) {
        return m.err();
    }
    if (auto r = s->ensure_relay_identity(server_name); !r.ok()) {
        return r.err();
    }
    return store_result<std::unique_ptr<sqlite_store>>(std::move(s));
}

store_result<void> sqlite_store::migrate() {
    auto r = write([&](tx& t) -> store_result<int64_t> {
        t.bump = false;
        exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
        int64_t version = 0;
        {
            auto q = query("SELECT version FROM schema_version");
            if (q.step()) {
                version = q.i64(0);
            }
        }
        const auto latest = static_cast<int64_t>(k_migrations.size());
        if (version > latest) {
            return err(kind::internal, "store schema version " + std::to_string(version) +
                                           " is newer than this apprelay supports (" +
                                           std::to_string(latest) + ")");
        }
        for (int64_t v = version; v < latest; ++v) {
            exec(std::string(k_migrations[static_cast<std::size_t>(v)]).c_str());
        }
        if (version != latest) {
            query("DELETE FROM schema_version").run();
            query("INSERT INTO schema_version (version) VALUES (?)").bind(latest).run();
            log::info("store_migrated", {{"from", version}, {"to", latest}});
        }
        return version;
    });
    if (!r.ok()) {
        return r.err();
    }
    return {};
}

uint64_t sqlite_store::current_version() {
    auto q = query("SELECT value FROM meta WHERE key = 'config_version'");
    return q.step() ? static_cast<uint64_t>(q.i64(0)) : 0;
}

store_result<uint64_t> sqlite_store::ensure_relay_identity(const std::string& server_name) {
    auto r = write([&](tx& t) -> store_result<int> {
        auto get = [&](const char* key) {
            auto q = query("SELECT value FROM meta WHERE key = ?");
            q.bind(key);
            return q.step() ? q.text(0) : std::string();
        };
        auto put = [&](const char* key, const std::string& v) {
            query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)").bind(key, v).run();
        };
        tls::pem_pair ca{get("relay_ca_cert_pem"), get("relay_ca_key_pem")};
        bool new_ca = ca.cert_pem.empty();
        if (new_ca) {
            std::string why;
            auto made = tls::make_ca("apprelay relay CA", k_ca_days, &why);
            if (!made) {
                return err(kind::internal, "cannot create the relay CA: " + why);
            }
            ca = made.value();
            put("relay_ca_cert_pem", ca.cert_pem);
            put("relay_ca_key_pem", ca.key_pem);
        }
        if (!new_ca && get("relay_server_name") == server_name &&
            !get("relay_server_cert_pem").empty()) {
            t.bump = false;
            return 0;
        }
        auto leaf = issue_server_cert(ca, server_name);
        if (!leaf) {
            return leaf.err();
        }
        put("relay_server_name", server_name);
        put("relay_server_cert_pem", leaf->cert_pem);
        put("relay_server_key_pem", leaf->key_pem);
        log::info("relay_identity_issued", {{"server_name", server_name}, {"new_ca", new_ca}});
        return 0;
    });
    if (!r.ok()) {
        return r.err();
    }
    return r->config_version;
}

store_result<relay_identity> sqlite_store::relay() {
    return read([&]() -> store_result<relay_identity> {
        relay_identity id;
        auto q = query("SELECT key, value FROM meta WHERE key LIKE 'relay_%'");
        while (q.step()) {
            std::string k = q.text(0);
            std::string v = q.text(1);
            if (k == "relay_ca_cert_pem") {
                id.ca_cert_pem = v;
            } else if (k == "relay_ca_key_pem") {
                id.ca_key_pem = v;
            } else if (k == "relay_server_name") {
                id.server_name = v;
            } else if (k == "relay_server_cert_pem") {
                id.server_cert_pem = v;
            } else if (k == "relay_server_key_pem") {
                id.server_key_pem = v;
            }
        }
        auto fp = cert_fingerprint(id.ca_cert_pem);
        if (!fp) {
            return err(kind::internal, "relay CA certificate in the store does not parse");
        }
        id.ca_fingerprint = fp.value();
        return id;
    });
}

store_result<uint64_t> sqlite_store::config_version() {
    return read([&]() -> store_result<uint64_t> { return current_version(); });
}

// ---- tenants and groups -------------------------------------------------------------------

store_result<tenant> sqlite_store::find_tenant(const std::string& name) {
    auto q = query("SELECT name, ca_cert_pem, ca_key_pem, ca_fingerprint, created_at FROM tenants "
                   "WHERE name = ?");
    q.bind(name);
    if (!q.step()) {
        return err(kind::not_found, "no tenant " + quoted(name));
    }
    return tenant{q.text(0), q.text(1), q.text(2), q.text(3), q.i64(4)};
}

// Creates the tenant with its own CA and its Default group on first use.
store_result<std::string> sqlite_store::ensure_tenant(const std::string& name, int64_t now) {
    if (auto e = check_name("tenant", name)) {
        return *e;
    }
    if (find_tenant(name).ok()) {
        return name;
    }
    auto t = make_tenant(name, now);
    if (!t) {
        return t.err();
    }
    query("INSERT INTO tenants (name, ca_cert_pem, ca_key_pem, ca_fingerprint, created_at) "
          "VALUES (?, ?, ?, ?, ?)")
        .bind(name, t->ca_cert_pem, t->ca_key_pem, t->ca_fingerprint, now)
        .run();
    query("INSERT INTO groups (tenant, name) VALUES (?, ?)").bind(name, k_default_group).run();
    log::info("tenant_created", {{"tenant", name}});
    return name;
}

store_result<int64_t> sqlite_store::find_group(const std::string& tenant, const std::string& name) {
    auto q = query("SELECT id FROM groups WHERE tenant = ? AND name = ?");
    q.bind(tenant, name);
    if (!q.step()) {
        return err(kind::not_found, "no group " + quoted(name) + " in tenant " + quoted(tenant));
    }
    return q.i64(0);
}

store_result<std::vector<tenant>> sqlite_store::tenants() {
    return read([&]() -> store_result<std::vector<tenant>> {
        std::vector<tenant> out;
        auto q = query("SELECT name, ca_cert_pem, ca_key_pem, ca_fingerprint, created_at "
                       "FROM tenants ORDER BY name");
        while (q.step()) {
            out.push_back(tenant{q.text(0), q.text(1), q.text(2), q.text(3), q.i64(4)});
        }
        return out;
    });
}

store_result<tenant> sqlite_store::get_tenant(const std::string& name) {
    return read([&]() { return find_tenant(name); });
}

store_result<std::vector<group>> sqlite_store::groups(const std::string& tenant) {
    return read([&]() -> store_result<std::vector<group>> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        std::vector<group> out;
        auto q = query("SELECT name, region FROM groups WHERE tenant = ? ORDER BY name");
        q.bind(tenant);
        while (q.step()) {
            out.push_back(group{tenant, q.text(0), q.text(1)});
        }
        return out;
    });
}

store_result<changed<group>> sqlite_store::create_group(const std::string& tenant,
                                                        const std::string& name,
                                                        const std::string& region, int64_t now) {
    return write([&](tx&) -> store_result<group> {
        if (auto e = check_name("group", name)) {
            return *e;
        }
        if (region.size() > k_max_name || !printable(region)) {
            return err(kind::invalid, "invalid region for group " + quoted(name) +
                                          ": at most 64 printable characters");
        }
        if (auto t = ensure_tenant(tenant, now); !t) {
            return t.err();
        }
        if (find_group(tenant, name).ok()) {
            return err(kind::conflict,
                       "group " + quoted(name) + " already exists in tenant " + quoted(tenant));
        }
        query("INSERT INTO groups (tenant, name, region) VALUES (?, ?, ?)")
            .bind(tenant, name, region)
            .run();
        return group{tenant, name, region};
    });
}

store_result<uint64_t> sqlite_store::rename_group(const std::string& tenant,
                                                  const std::string& name,
                                                  const std::string& new_name) {
    auto r = write([&](tx&) -> store_result<int> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        auto id = find_group(tenant, name);
        if (!id) {
            return id.err();
        }
        if (name == k_default_group) {
            return err(kind::refused, "group 'Default' cannot be renamed");
        }
        if (auto e = check_name("group", new_name)) {
            return *e;
        }
        if (find_group(tenant, new_name).ok()) {
            return err(kind::conflict,
                       "group " + quoted(new_name) + " already exists in tenant " + quoted(tenant));
        }
        query("UPDATE groups SET name = ? WHERE id = ?").bind(new_name, id.value()).run();
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<changed<std::vector<std::string>>>
sqlite_store::delete_group(const std::string& tenant, const std::string& name, bool force) {
    return write([&](tx&) -> store_result<std::vector<std::string>> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        auto id = find_group(tenant, name);
        if (!id) {
            return id.err();
        }
        if (name == k_default_group) {
            return err(kind::refused, "group 'Default' cannot be deleted");
        }
        std::vector<std::string> apps;
        {
            auto q = query("SELECT name FROM apps WHERE group_id = ? ORDER BY name");
            q.bind(id.value());
            while (q.step()) {
                apps.push_back(q.text(0));
            }
        }
        if (!apps.empty()) {
            return err(kind::conflict,
                       "group " + quoted(name) + " is used by apps: " + join(apps, ", "));
        }
        std::vector<std::string> connectors;
        {
            auto q = query("SELECT id FROM connectors WHERE group_id = ? ORDER BY id");
            q.bind(id.value());
            while (q.step()) {
                connectors.push_back(q.text(0));
            }
        }
        if (!connectors.empty() && !force) {
            return err(kind::conflict, "group " + quoted(name) +
                                           " has connectors: " + join(connectors, ", ") +
                                           " (force moves them to Default)");
        }
        auto def = find_group(tenant, std::string(k_default_group));
        if (!def) {
            return err(kind::internal, "tenant " + quoted(tenant) + " has no Default group");
        }
        query("UPDATE connectors SET group_id = ? WHERE group_id = ?")
            .bind(def.value(), id.value())
            .run();
        // A token for a deleted group cannot enroll where the admin meant: it goes too.
        query("DELETE FROM tokens WHERE group_id = ?").bind(id.value()).run();
        query("DELETE FROM groups WHERE id = ?").bind(id.value()).run();
        return connectors;
    });
}

// ---- connectors ---------------------------------------------------------------------------

std::vector<connector> sqlite_store::select_connectors(const char* sql, const std::string& arg) {
    std::vector<connector> out;
    auto q = query(sql);
    if (!arg.empty()) {
        q.bind(arg);
    }
    while (q.step()) {
        connector c;
        c.id = q.text(0);
        c.name = q.text(1);
        c.tenant = q.text(2);
        c.group = q.text(3);
        c.version = q.text(4);
        c.fingerprint = q.text(5);
        c.cert_pem = q.text(6);
        c.first_seen = q.i64(7);
        c.last_seen = q.i64(8);
        c.status = q.text(9) == "active" ? connector_status::active : connector_status::inactive;
        out.push_back(std::move(c));
    }
    return out;
}

#define APPRELAY_CONNECTOR_COLUMNS                                                                 \
    "SELECT c.id, c.name, g.tenant, g.name, c.version, c.fingerprint, c.cert_pem, c.first_seen, "  \
    "c.last_seen, c.status FROM connectors c JOIN groups g ON g.id = c.group_id "

store_result<std::vector<connector>> sqlite_store::connectors(const std::string& tenant) {
    return read([&]() -> store_result<std::vector<connector>> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        return select_connectors(APPRELAY_CONNECTOR_COLUMNS "WHERE g.tenant = ? ORDER BY c.id",
                                 tenant);
    });
}

store_result<connector_counts> sqlite_store::count_connectors() {
    return read([&]() -> store_result<connector_counts> {
        connector_counts n;
        auto q = query("SELECT status, count(*) FROM connectors GROUP BY status");
        while (q.step()) {
            (q.text(0) == "active" ? n.active : n.inactive) += static_cast<uint64_t>(q.i64(1));
        }
        return n;
    });
}

store_result<uint64_t> sqlite_store::move_connector(const std::string& tenant,
                                                    const std::string& id,
                                                    const std::string& group) {
    auto r = write([&](tx&) -> store_result<int> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        auto q = query("SELECT c.id FROM connectors c JOIN groups g ON g.id = c.group_id "
                       "WHERE c.id = ? AND g.tenant = ?");
        q.bind(id, tenant);
        if (!q.step()) {
            return err(kind::not_found,
                       "no connector " + quoted(id) + " in tenant " + quoted(tenant));
        }
        auto gid = find_group(tenant, group);
        if (!gid) {
            return gid.err();
        }
        query("UPDATE connectors SET group_id = ? WHERE id = ?").bind(gid.value(), id).run();
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<uint64_t> sqlite_store::delete_connector(const std::string& tenant,
                                                      const std::string& id) {
    auto r = write([&](tx&) -> store_result<int> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        auto q = query("SELECT c.fingerprint FROM connectors c JOIN groups g ON g.id = c.group_id "
                       "WHERE c.id = ? AND g.tenant = ?");
        q.bind(id, tenant);
        if (!q.step()) {
            return err(kind::not_found,
                       "no connector " + quoted(id) + " in tenant " + quoted(tenant));
        }
        std::string fp = q.text(0);
        query("INSERT OR IGNORE INTO revoked (fingerprint, revoked_at) VALUES (?, strftime('%s'))")
            .bind(fp)
            .run();
        query("DELETE FROM connectors WHERE id = ?").bind(id).run();
        log::info("connector_deleted", {{"tenant", tenant}, {"connector", id}});
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<void> sqlite_store::connector_seen(const std::string& id, const std::string& version,
                                                int64_t now) {
    auto r = write([&](tx& t) -> store_result<int> {
        t.bump = false;
        if (version.size() > k_max_version || !printable(version)) {
            return err(kind::invalid, "invalid version for connector " + quoted(id));
        }
        query("UPDATE connectors SET last_seen = ?, version = ? WHERE id = ?")
            .bind(now, version, id)
            .run();
        if (sqlite3_changes(_db) == 0) {
            return err(kind::not_found, "no connector " + quoted(id));
        }
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return {};
}

store_result<void> sqlite_store::set_connector_status(const std::string& id, connector_status s,
                                                      int64_t now) {
    auto r = write([&](tx& t) -> store_result<int> {
        t.bump = false;
        query("UPDATE connectors SET status = ?, last_seen = ? WHERE id = ?")
            .bind(to_string(s), now, id)
            .run();
        if (sqlite3_changes(_db) == 0) {
            return err(kind::not_found, "no connector " + quoted(id));
        }
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return {};
}

store_result<changed<std::vector<std::string>>> sqlite_store::purge_inactive(int64_t max_age_s,
                                                                             int64_t now) {
    return write([&](tx& t) -> store_result<std::vector<std::string>> {
        if (max_age_s <= 0) {
            return err(kind::invalid, "purge max age must be positive");
        }
        std::vector<std::pair<std::string, std::string>> gone;
        {
            auto q = query("SELECT id, fingerprint FROM connectors "
                           "WHERE status = 'inactive' AND last_seen < ? ORDER BY id");
            q.bind(now - max_age_s);
            while (q.step()) {
                gone.emplace_back(q.text(0), q.text(1));
            }
        }
        std::vector<std::string> ids;
        for (const auto& [id, fp] : gone) {
            query("INSERT OR IGNORE INTO revoked (fingerprint, revoked_at) VALUES (?, ?)")
                .bind(fp, now)
                .run();
            query("DELETE FROM connectors WHERE id = ?").bind(id).run();
            ids.push_back(id);
        }
        t.bump = !ids.empty();
        return ids;
    });
}

// ---- apps ---------------------------------------------------------------------------------

#define APPRELAY_APP_COLUMNS                                                                       \
    "SELECT a.id, a.tenant, a.name, a.hostname, a.listen_port, a.backend_host, a.backend_port, "   \
    "g.name, a.access, a.allowed_user_groups, a.cert_pem, a.key_pem, a.cert_issued, "              \
    "a.idle_timeout_ms "                                                                           \
    "FROM apps a JOIN groups g ON g.id = a.group_id "

std::vector<app> sqlite_store::select_apps(const char* sql, const std::string& arg) {
    std::vector<app> out;
    auto q = query(sql);
    if (!arg.empty()) {
        q.bind(arg);
    }
    while (q.step()) {
        app a;
        a.tenant = q.text(1);
        a.name = q.text(2);
        a.hostname = q.text(3);
        a.listen_port = static_cast<uint16_t>(q.i64(4));
        a.backend_host = q.text(5);
        a.backend_port = static_cast<uint16_t>(q.i64(6));
        a.group = q.text(7);
        a.access = q.text(8) == "user-cert" ? access_mode::user_cert : access_mode::passthrough;
        a.allowed_user_groups = split_lines(q.text(9));
        a.cert_pem = q.text(10);
        a.key_pem = q.text(11);
        a.cert_issued = q.i64(12) != 0;
        a.idle_timeout_ms = static_cast<uint32_t>(q.i64(13));
        out.push_back(std::move(a));
    }
    return out;
}

store_result<std::vector<app>> sqlite_store::apps(const std::string& tenant) {
    return read([&]() -> store_result<std::vector<app>> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        return select_apps(APPRELAY_APP_COLUMNS "WHERE a.tenant = ? ORDER BY a.name", tenant);
    });
}

store_result<app> sqlite_store::find_app(const std::string& tenant, const std::string& name,
                                         int64_t* id) {
    auto q = query("SELECT id FROM apps WHERE tenant = ? AND name = ?");
    q.bind(tenant, name);
    if (!q.step()) {
        return err(kind::not_found, "no app " + quoted(name) + " in tenant " + quoted(tenant));
    }
    *id = q.i64(0);
    auto all = select_apps(APPRELAY_APP_COLUMNS "WHERE a.tenant = ? ORDER BY a.name", tenant);
    for (auto& a : all) {
        if (a.name == name) {
            return std::move(a);
        }
    }
    return err(kind::internal, "app " + quoted(name) + " vanished during the transaction");
}

// One path for create and update: apply the fields, validate the whole app, then write it.
store_result<changed<app>> sqlite_store::save_app(const std::string& tenant,
                                                  const std::string& name, const app_fields& f,
                                                  bool create, int64_t now) {
    return write([&](tx&) -> store_result<app> {
        if (auto e = check_name("app", name)) {
            return *e;
        }
        app a;
        int64_t id = -1;
        if (create) {
            if (auto t = ensure_tenant(tenant, now); !t) {
                return t.err();
            }
            int64_t existing = 0;
            if (find_app(tenant, name, &existing).ok()) {
                return err(kind::conflict,
                           "app " + quoted(name) + " already exists in tenant " + quoted(tenant));
            }
            a.tenant = tenant;
            a.name = name;
            a.group = std::string(k_default_group);
        } else {
            if (auto t = find_tenant(tenant); !t) {
                return t.err();
            }
            auto found = find_app(tenant, name, &id);
            if (!found) {
                return found.err();
            }
            a = std::move(found).value();
        }
        bool reissue = false;
        if (auto e = apply_app_fields(a, f, create, &reissue)) {
            return *e;
        }
        auto gid = find_group(tenant, a.group);
        if (!gid) {
            return gid.err();
        }
        if (!a.hostname.empty()) {
            auto q = query("SELECT name, tenant FROM apps WHERE hostname = ? AND id != ?");
            q.bind(a.hostname, id);
            if (q.step()) {
                return err(kind::conflict, "hostname " + quoted(a.hostname) +
                                               " is already used by app " + quoted(q.text(0)) +
                                               " in tenant " + quoted(q.text(1)));
            }
        }
        if (a.listen_port != 0) {
            auto q = query("SELECT name, tenant FROM apps WHERE listen_port = ? AND id != ?");
            q.bind(a.listen_port, id);
            if (q.step()) {
                return err(kind::conflict, "listen_port " + std::to_string(a.listen_port) +
                                               " is already used by app " + quoted(q.text(0)) +
                                               " in tenant " + quoted(q.text(1)));
            }
        }
        if (reissue) {
            auto t = find_tenant(tenant);
            if (!t) {
                return t.err();
            }
            if (auto e = issue_app_cert(a, {t->ca_cert_pem, t->ca_key_pem})) {
                return *e;
            }
        }
        const std::string access = std::string(to_string(a.access));
        const std::string groups = join(a.allowed_user_groups, "\n");
        // NULLIF stores "no hostname" / "no port" as NULL, which UNIQUE lets repeat.
        if (create) {
            query("INSERT INTO apps (tenant, name, hostname, listen_port, backend_host, "
                  "backend_port, group_id, access, allowed_user_groups, cert_pem, key_pem, "
                  "cert_issued, idle_timeout_ms) "
                  "VALUES (?, ?, NULLIF(?, ''), NULLIF(?, 0), ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(a.tenant, a.name, a.hostname, a.listen_port, a.backend_host, a.backend_port,
                      gid.value(), access, groups, a.cert_pem, a.key_pem, a.cert_issued ? 1 : 0,
                      a.idle_timeout_ms)
                .run();
        } else {
            query("UPDATE apps SET hostname = NULLIF(?, ''), listen_port = NULLIF(?, 0), "
                  "backend_host = ?, backend_port = ?, group_id = ?, access = ?, "
                  "allowed_user_groups = ?, cert_pem = ?, key_pem = ?, cert_issued = ?, "
                  "idle_timeout_ms = ? WHERE id = ?")
                .bind(a.hostname, a.listen_port, a.backend_host, a.backend_port, gid.value(),
                      access, groups, a.cert_pem, a.key_pem, a.cert_issued ? 1 : 0,
                      a.idle_timeout_ms, id)
                .run();
        }
        return a;
    });
}

store_result<changed<app>> sqlite_store::create_app(const std::string& tenant,
                                                    const std::string& name, const app_fields& f,
                                                    int64_t now) {
    return save_app(tenant, name, f, true, now);
}

store_result<changed<app>> sqlite_store::update_app(const std::string& tenant,
                                                    const std::string& name, const app_fields& f) {
    return save_app(tenant, name, f, false, 0);
}

store_result<uint64_t> sqlite_store::delete_app(const std::string& tenant,
                                                const std::string& name) {
    auto r = write([&](tx&) -> store_result<int> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        query("DELETE FROM apps WHERE tenant = ? AND name = ?").bind(tenant, name).run();
        if (sqlite3_changes(_db) == 0) {
            return err(kind::not_found, "no app " + quoted(name) + " in tenant " + quoted(tenant));
        }
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

// ---- enrollment tokens --------------------------------------------------------------------

store_result<std::vector<token_info>> sqlite_store::tokens(const std::string& tenant, int64_t now) {
    return read([&]() -> store_result<std::vector<token_info>> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        std::vector<token_info> out;
        auto q = query("SELECT t.id, g.name, t.created_at, t.expires_at, t.used_at, t.revoked "
                       "FROM tokens t JOIN groups g ON g.id = t.group_id WHERE g.tenant = ? "
                       "ORDER BY t.created_at, t.id");
        q.bind(tenant);
        while (q.step()) {
            token_info ti;
            ti.id = q.text(0);
            ti.tenant = tenant;
            ti.group = q.text(1);
            ti.created_at = q.i64(2);
            ti.expires_at = q.i64(3);
            ti.used_at = q.null(4) ? 0 : q.i64(4);
            ti.revoked = q.i64(5) != 0;
            ti.state = state_of(ti.revoked, ti.used_at, ti.expires_at, now);
            out.push_back(std::move(ti));
        }
        return out;
    });
}

store_result<changed<new_token>> sqlite_store::create_token(const std::string& tenant,
                                                            const std::string& group, int64_t ttl_s,
                                                            int64_t now) {
    return write([&](tx&) -> store_result<new_token> {
        if (ttl_s <= 0) {
            return err(kind::invalid, "token ttl_s must be positive");
        }
        if (auto t = ensure_tenant(tenant, now); !t) {
            return t.err();
        }
        auto gid = find_group(tenant, group);
        if (!gid) {
            return gid.err();
        }
        auto secret = random_hex(k_secret_bytes);
        if (!secret) {
            return err(kind::internal, "cannot draw a token secret: CSPRNG failed");
        }
        std::string fp;
        {
            auto q = query("SELECT value FROM meta WHERE key = 'relay_ca_cert_pem'");
            auto relay_fp = q.step() ? cert_fingerprint(q.text(0)) : cert_fingerprint("");
            if (!relay_fp) {
                return err(kind::internal, "relay CA certificate in the store does not parse");
            }
            fp = relay_fp.value();
        }
        for (int attempt = 0; attempt < k_id_attempts; ++attempt) {
            auto id = random_hex(k_id_bytes);
            if (!id) {
                return err(kind::internal, "cannot draw a token id: CSPRNG failed");
            }
            auto q = query("SELECT 1 FROM tokens WHERE id = ?");
            q.bind(id.value());
            if (q.step()) {
                continue;
            }
            query("INSERT INTO tokens (id, group_id, secret_sha256, created_at, expires_at) "
                  "VALUES (?, ?, ?, ?, ?)")
                .bind(id.value(), gid.value(), sha256(secret.value()), now, now + ttl_s)
                .run();
            // The token is never logged (PROTOCOL.md); its id is not a secret.
            log::info("token_created", {{"tenant", tenant}, {"group", group}, {"id", id.value()}});
            return new_token{id.value(), "art1." + id.value() + "." + secret.value() + "." + fp,
                             group, now + ttl_s};
        }
        return err(kind::internal, "cannot draw a unique token id");
    });
}

store_result<uint64_t> sqlite_store::revoke_token(const std::string& tenant,
                                                  const std::string& id) {
    auto r = write([&](tx&) -> store_result<int> {
        if (auto t = find_tenant(tenant); !t) {
            return t.err();
        }
        auto q = query("SELECT t.used_at, t.revoked FROM tokens t JOIN groups g "
                       "ON g.id = t.group_id WHERE t.id = ? AND g.tenant = ?");
        q.bind(id, tenant);
        if (!q.step()) {
            return err(kind::not_found, "no token " + quoted(id) + " in tenant " + quoted(tenant));
        }
        if (!q.null(0)) {
            return err(kind::conflict, "token " + quoted(id) + " is already used");
        }
        if (q.i64(1) != 0) {
            return err(kind::conflict, "token " + quoted(id) + " is already revoked");
        }
        query("UPDATE tokens SET revoked = 1 WHERE id = ?").bind(id).run();
        return 0;
    });
    if (!r) {
        return r.err();
    }
    return r->config_version;
}

store_result<changed<connector>> sqlite_store::enroll(const std::string& token,
                                                      const std::string& name,
                                                      const std::string& version,
                                                      const cert_signer& signer, int64_t now) {
    return write([&](tx&) -> store_result<connector> {
        auto parts = parse_enrollment(token, name, version);
        if (!parts) {
            return parts.err();
        }
        const std::string& id = parts->id;
        const std::string& secret = parts->secret;
        auto q = query("SELECT t.group_id, t.secret_sha256, t.expires_at, t.used_at, t.revoked, "
                       "g.tenant, g.name FROM tokens t JOIN groups g ON g.id = t.group_id "
                       "WHERE t.id = ?");
        q.bind(id);
        // A wrong secret reads exactly like an unknown id: no oracle for guessing ids.
        if (!q.step() || !equal_const_time(sha256(secret), q.text(1))) {
            return err(kind::not_found, "unknown token");
        }
        const int64_t gid = q.i64(0);
        const int64_t expires_at = q.i64(2);
        const bool used = !q.null(3);
        const bool revoked = q.i64(4) != 0;
        connector c;
        c.tenant = q.text(5);
        c.group = q.text(6);
        if (revoked) {
            return err(kind::refused, "token revoked");
        }
        if (used) {
            return err(kind::conflict, "token already used");
        }
        if (now >= expires_at) {
            return err(kind::refused, "token expired");
        }
        auto t = find_tenant(c.tenant);
        if (!t) {
            return t.err();
        }
        for (int attempt = 0; attempt < k_id_attempts && c.id.empty(); ++attempt) {
            auto fresh = random_hex(k_id_bytes);
            if (!fresh) {
                return err(kind::internal, "cannot draw a connector id: CSPRNG failed");
            }
            auto exists = query("SELECT 1 FROM connectors WHERE id = ?");
            exists.bind(fresh.value());
            if (!exists.step()) {
                c.id = fresh.value();
            }
        }
        if (c.id.empty()) {
            return err(kind::internal, "cannot draw a unique connector id");
        }
        auto cert = signer(tls::pem_pair{t->ca_cert_pem, t->ca_key_pem}, c.id, c.tenant);
        if (!cert) {
            return cert.err();
        }
        c.name = name;
        c.version = version;
        c.fingerprint = cert->fingerprint;
        c.cert_pem = cert->cert_pem;
        c.first_seen = now;
        c.last_seen = now;
        c.status = connector_status::inactive;
        query("INSERT INTO connectors (id, name, group_id, version, fingerprint, cert_pem, "
              "first_seen, last_seen, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(c.id, c.name, gid, c.version, c.fingerprint, c.cert_pem, now, now,
                  to_string(c.status))
            .run();
        query("UPDATE tokens SET used_at = ? WHERE id = ?").bind(now, id).run();
        log::info("connector_enrolled",
                  {{"tenant", c.tenant}, {"group", c.group}, {"connector", c.id}});
        return c;
    });
}

// ---- the relay's view ---------------------------------------------------------------------

store_result<store_view> sqlite_store::load() {
    auto id = relay();
    if (!id) {
        return id.err();
    }
    return read([&]() -> store_result<store_view> {
        store_view v;
        v.config_version = current_version();
        v.relay = id.value();
        std::vector<std::string> bad_tenants;
        {
            auto q = query("SELECT name, ca_cert_pem, ca_key_pem, ca_fingerprint, created_at "
                           "FROM tenants ORDER BY name");
            while (q.step()) {
                tenant t{q.text(0), q.text(1), q.text(2), q.text(3), q.i64(4)};
                if (!check_cert_key_pair(t.ca_cert_pem, t.ca_key_pem).ok()) {
                    v.warnings.push_back("tenant " + quoted(t.name) +
                                         " skipped: its CA certificate or key does not parse");
                    bad_tenants.push_back(t.name);
                    continue;
                }
                v.tenants.push_back(std::move(t));
            }
        }
        auto skipped = [&](const std::string& tenant) {
            return std::find(bad_tenants.begin(), bad_tenants.end(), tenant) != bad_tenants.end();
        };
        {
            auto q = query("SELECT tenant, name, region, id FROM groups ORDER BY tenant, name");
            while (q.step()) {
                group g{q.text(0), q.text(1), q.text(2), q.i64(3)};
                if (!skipped(g.tenant)) {
                    v.groups.push_back(std::move(g));
                }
            }
        }
        for (auto& c : select_connectors(APPRELAY_CONNECTOR_COLUMNS "ORDER BY c.id", "")) {
            if (!skipped(c.tenant)) {
                v.connectors.push_back(std::move(c));
            }
        }
        for (auto& a : select_apps(APPRELAY_APP_COLUMNS "ORDER BY a.tenant, a.name", "")) {
            if (skipped(a.tenant)) {
                continue;
            }
            if (auto c = check_cert_key_pair(a.cert_pem, a.key_pem); !c) {
                v.warnings.push_back("app " + quoted(a.name) + " in tenant " + quoted(a.tenant) +
                                     " skipped: " + std::string(c.err().detail));
                continue;
            }
            v.apps.push_back(std::move(a));
        }
        {
            auto q = query("SELECT fingerprint FROM revoked ORDER BY fingerprint");
            while (q.step()) {
                v.revoked_fingerprints.push_back(q.text(0));
            }
        }
        for (const auto& w : v.warnings) {
            log::warn("store_row_skipped", {{"reason", w}});
        }
        return v;
    });
}

} // namespace apprelay::control
