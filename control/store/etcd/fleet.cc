// The fleet member: watch-kept copy of the prefix and lease-held presence (fleet.hh).
#include "control/store/etcd/fleet.hh"

#include "control/store/pem_util.hh"
#include "dataplane/base/log.hh"

#include <algorithm>
#include <ctime>

namespace apprelay::control::etcd {

namespace {

// The copy counts as current while a linearizable read proved it within this long.
constexpr auto k_fresh_for = std::chrono::milliseconds(3000);
constexpr auto k_tick = std::chrono::milliseconds(1000);
// A lagging watch (etcd has a newer config_version than the copy for this long) is restarted.
constexpr auto k_lag_limit = std::chrono::milliseconds(3000);
// Puts per presence transaction (etcd's default --max-txn-ops is 128).
constexpr std::size_t k_ops_per_txn = 100;

int64_t unix_now() {
    return static_cast<int64_t>(::time(nullptr));
}

} // namespace

fleet_member::fleet_member(const etcd_options& o, client& c, const keys& k)
    : _o(o), _address(o.fleet.address), _c(c), _k(k), _started(unix_now()) {}

fleet_member::~fleet_member() {
    _stop = true;
    {
        std::lock_guard<std::mutex> g(_mu);
        if (_watcher != nullptr) {
            _watcher->cancel();
        }
    }
    _cv.notify_all();
    if (_watch_thread.joinable()) {
        _watch_thread.join();
    }
    if (_presence_thread.joinable()) {
        _presence_thread.join();
    }
    // A graceful stop takes the presence down at once instead of after the TTL.
    if (_lease != 0) {
        (void)_c.lease_revoke(_lease);
    }
}

store_result<void> fleet_member::start() {
    if (auto r = reread(); !r) {
        return r.err();
    }
    // A drain request for this node asked an earlier instance to go: this one starts fresh.
    if (current()->drain_requests.count(_o.fleet.node) != 0) {
        (void)_c.txn({}, {{op::kind::del, _k.drain(_o.fleet.node), "", 0}});
        log::info("fleet_drain_request_cleared", {{"node", _o.fleet.node}});
    }
    _watch_thread = std::thread([this] { watch_loop(); });
    _presence_thread = std::thread([this] { presence_loop(); });
    return {};
}

std::shared_ptr<const model> fleet_member::current() const {
    std::lock_guard<std::mutex> g(_mu);
    return _model;
}

bool fleet_member::stale_locked() const {
    return !_watch_up || clock::now() - _last_current > k_fresh_for;
}

store_health fleet_member::health() const {
    std::lock_guard<std::mutex> g(_mu);
    store_health h;
    h.fleet = true;
    const auto age = clock::now() - _last_current;
    h.stale = stale_locked();
    h.stale_s = h.stale ? std::chrono::duration<double>(age).count() : 0.0;
    h.revision = _revision;
    h.rereads = _rereads;
    h.skipped_records = _skipped;
    h.watch_restarts = _watch_restarts;
    h.lease_held = _lease_held;
    h.digest = _digest;
    return h;
}

// Rebuilds the model from the accepted records (mu held).
void fleet_member::publish_locked() {
    range_result r;
    r.revision = _revision;
    r.kvs.reserve(_raw.size());
    for (const auto& [key, item] : _raw) {
        r.kvs.push_back(item);
    }
    _model = std::make_shared<const model>(build_model(_k, r));
    std::string lines;
    for (const auto& [key, item] : _raw) {
        const std::string rel = key.substr(_k.prefix.size());
        if (rel.rfind("presence/", 0) == 0 || rel.rfind("seen/", 0) == 0 ||
            rel.rfind("jobs/", 0) == 0) {
            continue;
        }
        lines += key + "\t" + std::to_string(item.mod_revision) + "\n";
    }
    _digest = to_hex(sha256(lines));
    std::string fleet;
    for (const auto& [node, r] : _model->relays) {
        fleet += node + " " + r.address + " " + r.region + " " +
                 (r.draining || _model->drain_requests.count(node) != 0 ? "1" : "0") + "\n";
    }
    // Which relays hold which connector's tunnels: the forwarding hop routes on it.
    for (const auto& [conn, tunnels] : _model->presence) {
        fleet += "t " + conn;
        for (const auto& t : tunnels) {
            fleet += " " + t.node;
        }
        fleet += "\n";
    }
    if (fleet != _fleet_signature) {
        _fleet_signature = std::move(fleet);
        ++_fleet_epoch;
    }
}

uint64_t fleet_member::fleet_epoch() const {
    std::lock_guard<std::mutex> g(_mu);
    return _fleet_epoch;
}

store_result<void> fleet_member::reread() {
    auto r = _c.range_prefix(_k.prefix);
    if (!r) {
        return r.err();
    }
    std::lock_guard<std::mutex> g(_mu);
    std::map<std::string, kv> fresh;
    for (auto& item : r->kvs) {
        model scratch;
        std::string why;
        if (!decode_record(_k, item, scratch, &why)) {
            ++_skipped;
            log::warn("etcd_record_skipped", {{"key", item.key}, {"reason", why}});
            // The previous good value of this key, if any, stays in force.
            if (auto old = _raw.find(item.key); old != _raw.end()) {
                fresh.emplace(item.key, old->second);
            }
            continue;
        }
        fresh.emplace(item.key, std::move(item));
    }
    _raw = std::move(fresh);
    _revision = r->revision;
    ++_rereads;
    _last_current = clock::now();
    publish_locked();
    return {};
}

void fleet_member::watch_loop() {
    auto backoff = std::chrono::milliseconds(100);
    bool need_reread = false;
    bool open_failed = false;
    std::string last_failure; // each distinct reason logged once per outage
    while (!_stop) {
        if (need_reread) {
            if (auto r = reread(); !r) {
                std::unique_lock<std::mutex> lk(_mu);
                _cv.wait_for(lk, backoff, [&] { return _stop.load(); });
                backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
                continue;
            }
            log::info("etcd_reread", {{"revision", _revision}, {"rereads", _rereads}});
            need_reread = false;
        }
        int64_t from = 0;
        {
            std::lock_guard<std::mutex> g(_mu);
            from = _revision + 1;
        }
        auto w = _c.watch_prefix(_k.prefix, from);
        {
            std::lock_guard<std::mutex> g(_mu);
            if (_stop) {
                break;
            }
            _watcher = w.get(); // the destructor can now cancel even a pending open()
        }
        auto opened = w->open();
        if (!opened) {
            std::lock_guard<std::mutex> g(_mu);
            _watcher = nullptr;
        }
        if (!opened) {
            if (opened.err().message != last_failure) {
                log::warn("etcd_watch_failed",
                          {{"from", from}, {"reason", opened.err().message}});
                last_failure = opened.err().message;
            }
            open_failed = true;
            std::unique_lock<std::mutex> lk(_mu);
            _watch_up = false;
            _cv.wait_for(lk, backoff, [&] { return _stop.load(); });
            backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
            continue;
        }
        {
            std::lock_guard<std::mutex> g(_mu);
            _watch_up = true;
        }
        backoff = std::chrono::milliseconds(100);
        if (open_failed) {
            log::info("etcd_watch_open", {{"from", from}});
            open_failed = false;
            last_failure.clear();
        }
        while (!_stop) {
            auto b = w->next();
            if (!b) {
                log::warn("etcd_watch_lost", {{"reason", b.err().message}});
                open_failed = true;
                break;
            }
            if (b->compact_revision > 0) {
                // Our start revision is gone: only a whole re-read sees the deletions since.
                log::warn("etcd_compacted", {{"from", from}, {"compacted", b->compact_revision}});
                need_reread = true;
                break;
            }
            if (b->canceled) {
                break;
            }
            std::lock_guard<std::mutex> g(_mu);
            for (auto& e : b->events) {
                if (e.deleted) {
                    _raw.erase(e.item.key);
                    continue;
                }
                model scratch;
                std::string why;
                if (!decode_record(_k, e.item, scratch, &why)) {
                    ++_skipped;
                    log::warn("etcd_record_skipped", {{"key", e.item.key}, {"reason", why}});
                    continue; // the previous value of the key stays in force
                }
                _raw[e.item.key] = std::move(e.item);
            }
            const int64_t seen_rev =
                b->events.empty() ? b->revision : b->events.back().item.mod_revision;
            _revision = std::max(_revision, seen_rev);
            _last_current = clock::now();
            if (!b->events.empty()) {
                publish_locked();
            }
        }
        std::lock_guard<std::mutex> g(_mu);
        _watcher = nullptr;
        _watch_up = false;
        if (!_stop) {
            ++_watch_restarts;
        }
    }
}

// Proves the copy current: a linearizable read of config_version (needs a quorum).
void fleet_member::heartbeat() {
    auto r = _c.get(_k.version());
    if (!r) {
        return;
    }
    std::lock_guard<std::mutex> g(_mu);
    const int64_t mod = r->kvs.empty() ? 0 : r->kvs.front().mod_revision;
    if (mod <= _revision) {
        _last_current = clock::now();
        return;
    }
    // etcd has a newer config than the copy: the watch lags; past the limit, restart it.
    if (clock::now() - _last_current > k_lag_limit && _watcher != nullptr) {
        log::warn("etcd_watch_lagging", {{"copy", _revision}, {"etcd", mod}});
        _watcher->cancel();
    }
}

void fleet_member::set_tunnel(const std::string& id, bool up, int64_t now) {
    std::lock_guard<std::mutex> g(_mu);
    if (up) {
        auto [it, fresh] = _tunnels.try_emplace(id, "");
        if (fresh) {
            _tunnel_since[id] = now;
        }
    } else {
        _tunnels.erase(id);
        _tunnel_since.erase(id);
        auto& s = _seen_queue[id];
        s.last_seen = now;
    }
    _dirty.insert(id);
    _kick = true;
    _cv.notify_all();
}

void fleet_member::seen(const std::string& id, const std::string& version, int64_t now) {
    std::lock_guard<std::mutex> g(_mu);
    if (auto it = _tunnels.find(id); it != _tunnels.end() && it->second != version) {
        it->second = version;
        _dirty.insert(id);
    }
    _seen_queue[id] = seen_rec{now, version};
}

void fleet_member::set_address(const std::string& address) {
    std::lock_guard<std::mutex> g(_mu);
    _address = address;
    _relay_dirty = true;
    _kick = true;
    _cv.notify_all();
}

void fleet_member::set_draining(bool draining) {
    std::lock_guard<std::mutex> g(_mu);
    _draining = draining;
    _relay_dirty = true;
    _kick = true;
    _cv.notify_all();
}

// One pass of presence upkeep; false when etcd refused or could not be reached (retry later).
bool fleet_member::presence_round(int64_t now) {
    if (_lease == 0) {
        auto l = _c.lease_grant(_o.fleet.lease_ttl_s);
        if (!l) {
            return false;
        }
        std::lock_guard<std::mutex> g(_mu);
        _lease = l.value();
        _lease_held = true;
        _last_keepalive = clock::now();
        // Everything under the old lease is gone (or going): announce it all again.
        _relay_dirty = true;
        for (const auto& [id, v] : _tunnels) {
            _dirty.insert(id);
        }
        log::info("fleet_lease_granted", {{"node", _o.fleet.node}, {"lease", _lease}});
    }
    std::vector<op> ops;
    std::set<std::string> writing;
    std::map<std::string, seen_rec> seen;
    bool relay = false;
    {
        std::lock_guard<std::mutex> g(_mu);
        // Announced once its listener is bound (a configured port 0 is not an address).
        const bool addressed = _address.size() < 2 || _address.compare(_address.size() - 2, 2, ":0") != 0;
        if (_relay_dirty && addressed) {
            relay_rec r{_o.fleet.node, _address, _o.fleet.region, _draining, _started,
                        _model ? _model->config_version : 0, stale_locked(), 0};
            _announced_version = r.config_version;
            _announced_stale = r.stale;
            ops.push_back({op::kind::put, _k.relay_presence(_o.fleet.node), encode(r), _lease});
            relay = true;
        }
        for (const auto& id : _dirty) {
            if (ops.size() >= k_ops_per_txn) {
                break;
            }
            writing.insert(id);
            const auto key = _k.tunnel_presence(id, _o.fleet.node);
            if (auto it = _tunnels.find(id); it != _tunnels.end()) {
                ops.push_back(
                    {op::kind::put, key, encode(tunnel_rec{_o.fleet.node, _tunnel_since[id],
                                                           it->second}),
                     _lease});
            } else {
                ops.push_back({op::kind::del, key, "", 0});
            }
        }
        for (const auto& [id, s] : _seen_queue) {
            if (ops.size() >= k_ops_per_txn) {
                break;
            }
            seen.emplace(id, s);
            ops.push_back({op::kind::put, _k.seen(id), encode(s), 0});
        }
    }
    if (!ops.empty()) {
        auto r = _c.txn({}, ops);
        if (!r) {
            return false;
        }
        std::lock_guard<std::mutex> g(_mu);
        if (relay) {
            _relay_dirty = false;
        }
        for (const auto& id : writing) {
            _dirty.erase(id);
        }
        for (const auto& [id, s] : seen) {
            auto it = _seen_queue.find(id);
            if (it != _seen_queue.end() && it->second.last_seen == s.last_seen &&
                it->second.version == s.version) {
                _seen_queue.erase(it);
            }
        }
    }
    (void)now;
    return true;
}

void fleet_member::presence_loop() {
    const auto keepalive_every =
        std::chrono::milliseconds(std::max<int64_t>(500, _o.fleet.lease_ttl_s * 1000 / 3));
    auto next_keepalive = clock::now() + keepalive_every;
    while (!_stop) {
        const auto now = clock::now();
        if (_lease != 0 && now >= next_keepalive) {
            auto ttl = _c.lease_keepalive(_lease);
            if (ttl && ttl.value() <= 0) {
                // Expired while we could not reach etcd: a new lease, everything again.
                log::warn("fleet_lease_lost", {{"node", _o.fleet.node}, {"lease", _lease}});
                std::lock_guard<std::mutex> g(_mu);
                _lease = 0;
                _lease_held = false;
            } else if (ttl) {
                next_keepalive = now + keepalive_every;
                std::lock_guard<std::mutex> g(_mu);
                _lease_held = true;
                _last_keepalive = now;
            } else {
                next_keepalive = now + std::chrono::milliseconds(300);
                // Unconfirmed for a whole TTL: etcd has let the lease (and presence) go.
                std::lock_guard<std::mutex> g(_mu);
                if (now - _last_keepalive > std::chrono::seconds(_o.fleet.lease_ttl_s)) {
                    _lease_held = false;
                }
            }
        }
        heartbeat();
        {
            // The relay record carries how current this relay's copy is ("relays list"):
            // rewritten when that changes, at most every 2 s.
            std::lock_guard<std::mutex> g(_mu);
            const uint64_t v = _model ? _model->config_version : 0;
            if ((v != _announced_version || stale_locked() != _announced_stale) &&
                now - _last_relay_write > std::chrono::seconds(2)) {
                _relay_dirty = true;
                _last_relay_write = now;
            }
        }
        (void)presence_round(unix_now());
        std::unique_lock<std::mutex> lk(_mu);
        _cv.wait_for(lk, k_tick, [&] { return _stop.load() || _kick; });
        _kick = false;
    }
}

} // namespace apprelay::control::etcd
