#pragma once
// The control-plane store interface: every write is one transaction that either applies fully
// and bumps the persisted config_version, or writes nothing and returns a store_error. SQLite
// implements it for one host (sqlite.hh), etcd for a fleet of relays (etcd/etcd_store.hh).
// Not thread-safe: give each thread its own store object on the same database.
#include "control/store/model.hh"
#include "tls/ca.hh"

#include <cassert>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace apprelay::control {

struct store_error {
    // Each kind maps to one admin API status (control/API.md).
    enum class kind : uint8_t {
        invalid,   // 400: malformed or missing field
        not_found, // 404: unknown object
        conflict,  // 409: exists, in use, not empty
        refused,   // 422: rule refusal (deleting Default, expired token...)
        internal,  // 500: database or crypto failure
        // 503: the store cannot be reached or has no quorum within its deadline; nothing was
        // written, and the same request may succeed later.
        unavailable,
    };
    kind k = kind::internal;
    std::string message; // names the object and the reason
};

int http_status_of(store_error::kind k) noexcept;

// A value or a store_error. Small on purpose: the store never throws past its interface.
template <class T> class [[nodiscard]] store_result {
public:
    store_result(T v) : _v(std::in_place_index<0>, std::move(v)) {}
    store_result(store_error e) : _v(std::in_place_index<1>, std::move(e)) {}

    bool ok() const noexcept { return _v.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    T& value() & {
        assert(ok());
        return std::get<0>(_v);
    }
    const T& value() const& {
        assert(ok());
        return std::get<0>(_v);
    }
    T&& value() && {
        assert(ok());
        return std::get<0>(std::move(_v));
    }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    const store_error& err() const& {
        assert(!ok());
        return std::get<1>(_v);
    }

private:
    std::variant<T, store_error> _v;
};

template <> class [[nodiscard]] store_result<void> {
public:
    store_result() = default;
    store_result(store_error e) : _e(std::move(e)) {}
    bool ok() const noexcept { return !_e.has_value(); }
    explicit operator bool() const noexcept { return ok(); }
    const store_error& err() const& {
        assert(!ok());
        return *_e;
    }

private:
    std::optional<store_error> _e;
};

// A successful change and the config_version it produced.
template <class T> struct changed {
    T value;
    uint64_t config_version = 0;
};

// Fields of an app create or update; unset fields keep their value (update) or take the default
// (create: no hostname, no listen port, group Default, passthrough, CA-issued certificate).
struct app_fields {
    std::optional<std::string> hostname; // "" removes it
    std::optional<int64_t> listen_port;  // 0 removes it; else 1-65535
    std::optional<std::string> backend;  // "host:port"
    std::optional<std::string> group;
    std::optional<access_mode> access;
    std::optional<std::vector<std::string>> allowed_user_groups;
    std::optional<std::string> cert_pem; // with key_pem: uploaded certificate (both or neither)
    std::optional<std::string> key_pem;
    std::optional<int64_t> idle_timeout_ms; // 0 = the relay's [limits] idle_timeout_ms
};

struct new_token {
    std::string id;
    std::string token; // art1.<id>.<secret>.<relay-ca-fp>: shown once, never stored
    std::string group;
    int64_t expires_at = 0;
};

// What the enrollment signer returns: the connector's certificate, issued by the tenant CA.
struct signed_cert {
    std::string cert_pem;
    std::string fingerprint;
};
// Called inside the enrollment transaction with the tenant CA, the fresh connector id and the
// tenant name; an error rolls the whole enrollment back (its message is sent to the connector).
using cert_signer = std::function<store_result<signed_cert>(
    const tls::pem_pair& tenant_ca, const std::string& connector_id, const std::string& tenant)>;

struct connector_counts {
    uint64_t active = 0;
    uint64_t inactive = 0;
};

// How current a store's copy is (a fleet store follows etcd; SQLite is always current).
struct store_health {
    bool fleet = false;           // an etcd store following the fleet's prefix
    bool stale = false;           // etcd unreachable: the relay serves its last good snapshot
    double stale_s = 0;           // how long since the copy was last known current
    int64_t revision = 0;         // etcd revision of the copy
    uint64_t rereads = 0;         // whole-prefix re-reads (start, compaction, watch loss)
    uint64_t skipped_records = 0; // malformed or oversized records refused
    uint64_t watch_restarts = 0;
    bool lease_held = false;      // presence lease alive
    // SHA-256 (hex) of the copy's configuration keys and their mod revisions (presence, seen
    // and jobs/ left out): equal to the same digest of a fresh read when the copy is current.
    std::string digest;
};

// A relay host of the fleet as presence shows it (etcd store).
struct fleet_relay {
    std::string node;
    std::string address;
    std::string region;
    bool draining = false;
    bool drain_requested = false;
    int64_t started = 0;
    uint64_t config_version = 0; // the version its copy is at
    bool stale = false;          // its copy unproven (it cannot reach etcd)
    uint32_t tunnels = 0;        // connectors it holds tunnels for
};

class store {
public:
    virtual ~store() = default;

    // Reads.
    virtual store_result<uint64_t> config_version() = 0;
    virtual store_result<store_view> load() = 0;
    virtual store_result<relay_identity> relay() = 0;
    virtual store_result<std::vector<tenant>> tenants() = 0;
    virtual store_result<tenant> get_tenant(const std::string& name) = 0;
    virtual store_result<std::vector<group>> groups(const std::string& tenant) = 0;
    virtual store_result<std::vector<connector>> connectors(const std::string& tenant) = 0;
    virtual store_result<std::vector<app>> apps(const std::string& tenant) = 0;
    virtual store_result<std::vector<token_info>> tokens(const std::string& tenant,
                                                         int64_t now) = 0;
    virtual store_result<connector_counts> count_connectors() = 0;

    // Admin writes. A write in an unknown tenant creates the tenant (own CA, group Default).
    virtual store_result<changed<group>> create_group(const std::string& tenant,
                                                      const std::string& name,
                                                      const std::string& region, int64_t now) = 0;
    virtual store_result<uint64_t> rename_group(const std::string& tenant, const std::string& name,
                                                const std::string& new_name) = 0;
    // Refused for Default and for a group used by apps; a group with connectors only with
    // `force`, which moves them to Default (their ids are returned).
    virtual store_result<changed<std::vector<std::string>>>
    delete_group(const std::string& tenant, const std::string& name, bool force) = 0;

    virtual store_result<uint64_t> move_connector(const std::string& tenant, const std::string& id,
                                                  const std::string& group) = 0;
    // Removes the connector and revokes its certificate fingerprint.
    virtual store_result<uint64_t> delete_connector(const std::string& tenant,
                                                    const std::string& id) = 0;

    virtual store_result<changed<app>> create_app(const std::string& tenant,
                                                  const std::string& name, const app_fields& f,
                                                  int64_t now) = 0;
    virtual store_result<changed<app>> update_app(const std::string& tenant,
                                                  const std::string& name, const app_fields& f) = 0;
    virtual store_result<uint64_t> delete_app(const std::string& tenant,
                                              const std::string& name) = 0;

    virtual store_result<changed<new_token>> create_token(const std::string& tenant,
                                                          const std::string& group, int64_t ttl_s,
                                                          int64_t now) = 0;
    virtual store_result<uint64_t> revoke_token(const std::string& tenant,
                                                const std::string& id) = 0;

    // Enrollment (control/enroll/PROTOCOL.md step 5), one transaction: the token is checked and
    // consumed, the signer called, the connector recorded in the token's group.
    virtual store_result<changed<connector>> enroll(const std::string& token,
                                                    const std::string& name,
                                                    const std::string& version,
                                                    const cert_signer& signer, int64_t now) = 0;

    // Status upkeep by the control thread. Liveness is not configuration: these two do not bump
    // config_version (the relay would otherwise rebuild its snapshot on every heartbeat).
    virtual store_result<void> connector_seen(const std::string& id, const std::string& version,
                                              int64_t now) = 0;
    virtual store_result<void> set_connector_status(const std::string& id, connector_status s,
                                                    int64_t now) = 0;
    // Removes connectors inactive and unseen for more than max_age_s, revoking their
    // fingerprints; returns their ids (config_version bumps only if any was removed).
    virtual store_result<changed<std::vector<std::string>>> purge_inactive(int64_t max_age_s,
                                                                           int64_t now) = 0;

    virtual store_health health() { return {}; }
    // Changes whenever the fleet's relays (address, region, draining) or the relays holding each
    // connector's tunnels change: not a configuration change (no config_version bump), but news
    // for connectors (CONFIG) and for the forwarding hop.
    virtual uint64_t fleet_epoch() { return 0; }

    // The fleet (etcd store). A lone relay (SQLite) refuses with kind::refused.
    virtual store_result<std::vector<fleet_relay>> relays() {
        return store_error{store_error::kind::refused,
                           "this relay is not in a fleet ([store] kind = \"sqlite\")"};
    }
    // Asks relay `node` to drain: it marks itself draining, sends GOAWAY to its tunnels, lets
    // streams in flight finish by the drain deadline and exits.
    virtual store_result<uint64_t> request_drain(const std::string& node) {
        (void)node;
        return store_error{store_error::kind::refused,
                           "this relay is not in a fleet ([store] kind = \"sqlite\")"};
    }
    // True once an admin asked this relay to drain (any relay of the fleet may take the call).
    virtual bool drain_requested() { return false; }
    // Marks this relay draining in presence (a stop on a signal too).
    virtual void set_draining(bool draining) { (void)draining; }
    // Where peers and connectors reach this relay, once its listener is bound.
    virtual void set_fleet_address(const std::string& address) { (void)address; }
};

} // namespace apprelay::control
