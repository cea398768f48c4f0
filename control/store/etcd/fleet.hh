#pragma once
// A relay's membership in the fleet: a local copy of the prefix kept by a watch, and presence
// under a lease.
//
// The copy: read the whole prefix at a revision, then watch from the next revision. Each batch
// of events is checked record by record (a malformed or oversized value is skipped and counted;
// the key keeps its previous good value) and a new model is published whole. After a compaction
// the copy is re-read from scratch, never resumed from the compaction point (which would miss
// deletions); `rereads` counts it. A linearizable read of config_version every second proves the
// copy current; when that fails the copy goes stale (health()) and stays as it was.
//
// Presence: one lease (TTL fleet_options::lease_ttl_s) kept alive from this thread; under it the
// relay's own record and one key per connector it holds tunnels for. Changes are queued and
// written by the thread, so the control thread never waits on etcd; a lost lease is replaced
// and everything re-announced.
#include "control/store/etcd/client.hh"
#include "control/store/etcd/etcd_store.hh"
#include "control/store/etcd/records.hh"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

namespace apprelay::control::etcd {

class fleet_member {
public:
    fleet_member(const etcd_options& o, client& c, const keys& k);
    ~fleet_member();
    fleet_member(const fleet_member&) = delete;
    fleet_member& operator=(const fleet_member&) = delete;

    // The first read (bounded by the client's deadline), then the watch and presence threads.
    store_result<void> start();
    // The newest good copy (never null after start() succeeded).
    std::shared_ptr<const model> current() const;
    store_health health() const;
    uint64_t fleet_epoch() const;

    void set_tunnel(const std::string& connector_id, bool up, int64_t now);
    void seen(const std::string& connector_id, const std::string& version, int64_t now);
    void set_draining(bool draining);
    void set_address(const std::string& address);

private:
    using clock = std::chrono::steady_clock;

    store_result<void> reread();
    void publish_locked();
    void watch_loop();
    void presence_loop();
    bool presence_round(int64_t now);
    void heartbeat();
    bool stale_locked() const;

    const etcd_options _o;
    std::string _address; // announced in the relay record (mu)
    client& _c;
    const keys _k;

    mutable std::mutex _mu;
    std::map<std::string, kv> _raw; // the accepted records of the copy
    int64_t _revision = 0;
    std::shared_ptr<const model> _model;
    clock::time_point _last_current{};
    bool _watch_up = false;
    watcher* _watcher = nullptr; // for cancel() from the destructor / heartbeat
    uint64_t _rereads = 0;
    uint64_t _skipped = 0;
    uint64_t _watch_restarts = 0;
    std::string _digest;
    std::string _fleet_signature; // relays as connectors see them
    uint64_t _fleet_epoch = 0;

    // Presence wanted (control thread) and written (presence thread).
    std::map<std::string, std::string> _tunnels;          // connector -> version, held here
    std::map<std::string, int64_t> _tunnel_since;
    std::set<std::string> _dirty;                         // connectors whose key must be rewritten
    std::map<std::string, seen_rec> _seen_queue;
    bool _kick = false; // a change for the presence thread to write now
    bool _draining = false;
    bool _relay_dirty = true;
    uint64_t _announced_version = 0;
    bool _announced_stale = false;
    clock::time_point _last_relay_write{};
    int64_t _lease = 0;
    bool _lease_held = false;
    clock::time_point _last_keepalive{};
    int64_t _started = 0;

    std::atomic<bool> _stop{false};
    std::condition_variable _cv;
    std::thread _watch_thread;
    std::thread _presence_thread;
};

} // namespace apprelay::control::etcd
