#pragma once
// The embedded store: one SQLite file in WAL mode. Every write runs in one BEGIN IMMEDIATE
// transaction (rolled back on any refusal or failure) and bumps config_version in the same
// transaction. One object per thread: two objects on the same file serialize through SQLite's
// locks (busy_timeout 5 s), never through shared memory.
#include "control/store/store.hh"

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace apprelay::control {

class sqlite_store final : public store {
public:
    // Opens (creating if needed) the database at `path`, applies pending migrations in one
    // transaction, and creates the relay identity (CA + server certificate for `server_name`) or
    // reuses it, re-issuing the server certificate when the name changed.
    static store_result<std::unique_ptr<sqlite_store>> open(const std::string& path,
                                                            const std::string& server_name);
    // The ordered schema migrations; migration i (0-based) brings the schema to version i + 1.
    static const std::vector<std::string_view>& migrations();

    ~sqlite_store() override;
    sqlite_store(const sqlite_store&) = delete;
    sqlite_store& operator=(const sqlite_store&) = delete;

    store_result<uint64_t> config_version() override;
    store_result<store_view> load() override;
    store_result<relay_identity> relay() override;
    store_result<std::vector<tenant>> tenants() override;
    store_result<tenant> get_tenant(const std::string& name) override;
    store_result<std::vector<group>> groups(const std::string& tenant) override;
    store_result<std::vector<connector>> connectors(const std::string& tenant) override;
    store_result<std::vector<app>> apps(const std::string& tenant) override;
    store_result<std::vector<token_info>> tokens(const std::string& tenant, int64_t now) override;
    store_result<connector_counts> count_connectors() override;

    store_result<changed<group>> create_group(const std::string& tenant, const std::string& name,
                                              const std::string& region, int64_t now) override;
    store_result<uint64_t> rename_group(const std::string& tenant, const std::string& name,
                                        const std::string& new_name) override;
    store_result<changed<std::vector<std::string>>>
    delete_group(const std::string& tenant, const std::string& name, bool force) override;
    store_result<uint64_t> move_connector(const std::string& tenant, const std::string& id,
                                          const std::string& group) override;
    store_result<uint64_t> delete_connector(const std::string& tenant,
                                            const std::string& id) override;
    store_result<changed<app>> create_app(const std::string& tenant, const std::string& name,
                                          const app_fields& f, int64_t now) override;
    store_result<changed<app>> update_app(const std::string& tenant, const std::string& name,
                                          const app_fields& f) override;
    store_result<uint64_t> delete_app(const std::string& tenant, const std::string& name) override;
    store_result<changed<new_token>> create_token(const std::string& tenant,
                                                  const std::string& group, int64_t ttl_s,
                                                  int64_t now) override;
    store_result<uint64_t> revoke_token(const std::string& tenant, const std::string& id) override;
    store_result<changed<connector>> enroll(const std::string& token, const std::string& name,
                                            const std::string& version, const cert_signer& signer,
                                            int64_t now) override;
    store_result<void> connector_seen(const std::string& id, const std::string& version,
                                      int64_t now) override;
    store_result<void> set_connector_status(const std::string& id, connector_status s,
                                            int64_t now) override;
    store_result<changed<std::vector<std::string>>> purge_inactive(int64_t max_age_s,
                                                                   int64_t now) override;

private:
    class stmt;
    struct tx;

    explicit sqlite_store(sqlite3* db) : _db(db) {}

    stmt query(const char* sql);
    void exec(const char* sql);
    template <class F> auto write(F&& fn);
    template <class F> auto read(F&& fn);

    store_result<void> migrate();
    store_result<uint64_t> ensure_relay_identity(const std::string& server_name);
    store_result<std::string> ensure_tenant(const std::string& name, int64_t now);
    store_result<tenant> find_tenant(const std::string& name);
    store_result<int64_t> find_group(const std::string& tenant, const std::string& name);
    store_result<app> find_app(const std::string& tenant, const std::string& name, int64_t* id);
    store_result<changed<app>> save_app(const std::string& tenant, const std::string& name,
                                        const app_fields& f, bool create, int64_t now);
    uint64_t current_version();
    std::vector<connector> select_connectors(const char* sql, const std::string& arg);
    std::vector<app> select_apps(const char* sql, const std::string& arg);

    sqlite3* _db;
    // Prepared statements by SQL text (always a string literal, so the pointer is the key).
    std::unordered_map<const char*, sqlite3_stmt*> _stmts;
};

} // namespace apprelay::control
