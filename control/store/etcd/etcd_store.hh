#pragma once
// The fleet store: the control-plane objects in etcd under one prefix (records.hh), shared by
// every relay host of a fleet.
//
// Writes are optimistic transactions: read the prefix at a revision, apply the same rules as
// the SQLite store (rules.hh) to that copy, then commit one etcd transaction that compares the
// mod_revision of every key it writes and of config_version, and bumps config_version. A lost
// race re-reads and tries again; a refusal writes nothing. Every admin write compares
// config_version, so admin writes are serializable across the whole fleet.
//
// A relay's store also follows the prefix (fleet.hh): a local copy kept by a watch, which
// config_version() and load() answer from, so etcd being unreachable leaves the relay serving its
// last good copy; and it holds the relay's presence lease. Other stores (the enrollment thread's,
// apprelayctl's tests) read etcd directly.
#include "control/store/etcd/client.hh"
#include "control/store/etcd/records.hh"
#include "control/store/store.hh"

#include <functional>
#include <memory>
#include <string>

namespace apprelay::control::etcd {

class fleet_member;

struct fleet_options {
    bool follow = false;       // watch the prefix and hold presence (the relay's control thread)
    std::string node;          // this relay's name in presence: [A-Za-z0-9._-]{1,64}
    std::string address;       // where peers reach this relay (host:port)
    std::string region;        // this relay's region ("" = none)
    int64_t lease_ttl_s = 10;  // presence lease TTL
};

struct etcd_options {
    client_options client;
    std::string prefix = "/apprelay/";
    fleet_options fleet;
};

class etcd_store final : public store {
public:
    // Connects, and creates the relay CA and the server certificate for `server_name` unless
    // another relay already did (a compare-and-set each, so the fleet has exactly one CA).
    static store_result<std::unique_ptr<etcd_store>> open(const etcd_options& o,
                                                           const std::string& server_name);
    ~etcd_store() override;
    etcd_store(const etcd_store&) = delete;
    etcd_store& operator=(const etcd_store&) = delete;

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
    // On a following store these only change what the relay announces (fleet.hh), without
    // waiting for etcd; otherwise they write the liveness records directly.
    store_result<void> connector_seen(const std::string& id, const std::string& version,
                                      int64_t now) override;
    store_result<void> set_connector_status(const std::string& id, connector_status s,
                                            int64_t now) override;
    // Once per fleet per interval: fenced by a compare-and-set on the purge job key in the same
    // transaction as the deletions, so two relays (or one that was paused) never both purge.
    store_result<changed<std::vector<std::string>>> purge_inactive(int64_t max_age_s,
                                                                   int64_t now) override;
    store_health health() override;
    uint64_t fleet_epoch() override;

    store_result<std::vector<fleet_relay>> relays() override;
    store_result<uint64_t> request_drain(const std::string& node) override;
    bool drain_requested() override;
    void set_draining(bool draining) override;
    void set_fleet_address(const std::string& address) override;
    const etcd_options& options() const { return _o; }
    client& raw() { return *_c; }

    struct tx; // a write in progress (etcd_store.cc)

private:
    etcd_store(const etcd_options& o, std::unique_ptr<client> c, std::string server_name);

    store_result<model> read();
    template <class F> auto write(F&& fn);
    template <class F> auto read_with(F&& fn);
    template <class F> auto read_in_tenant(const std::string& tenant, F&& fn);
    store_result<void> ensure_relay_identity();
    store_result<app> save_app(tx& t, app_rec r, const app_fields& f, bool create);

    etcd_options _o;
    keys _k;
    std::unique_ptr<client> _c;
    std::string _server_name;
    std::unique_ptr<fleet_member> _fleet;
};

} // namespace apprelay::control::etcd
