// The fleet manager of a connector (fleet.hh).
#include "dataplane/connector/fleet.hh"

#include "dataplane/base/log.hh"
#include "dataplane/connector/status_http.hh"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <unistd.h>
#include <vector>

namespace apprelay::connector {

namespace {

using clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

constexpr std::size_t k_attach = 2;        // K: relay hosts a connector keeps tunnels to
constexpr auto k_tick = ms(100);
constexpr auto k_stats_every = ms(200);
// An attachment to a relay that does not answer gives up this soon (another relay takes over).
constexpr uint32_t k_attach_give_up_ms = 4000;
constexpr auto k_backoff_base = ms(500);
constexpr auto k_backoff_cap = ms(8000);

struct relay_info {
    std::string node;
    std::string region;
    bool draining = false;
    clock::time_point retry_at{}; // failed recently: not before this
    int failures = 0;
};

struct attachment {
    std::string address;
    std::string stats_path;
    std::atomic<bool> stop{false};
    std::atomic<int> code{-1}; // run_agent's exit code once it returned
    std::thread thread;
    clock::time_point started;
    bool retiring = false;      // asked to stop (its relay drains, or we have enough)
    bool ever_up = false;
    uint64_t goaways = 0;
    nlohmann::json status = nlohmann::json::object(); // its last stats
};

bool read_json(const std::string& path, nlohmann::json* out) {
    std::ifstream f(path);
    if (!f) {
        return false;
    }
    std::stringstream ss;
    ss << f.rdbuf();
    auto j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        return false;
    }
    *out = std::move(j);
    return true;
}

class manager {
public:
    manager(const agent_options& o, const std::atomic<bool>& stop)
        : _o(o), _stop(stop), _rng(std::random_device{}()) {
        for (const auto& r : o.relays) {
            _relays[r];
        }
        if (!o.relay.empty()) {
            _relays[o.relay];
        }
        _stats_base = o.stats_file.empty()
                          ? "/tmp/apprelay-connector-" + std::to_string(::getpid()) + "-attach"
                          : o.stats_file + ".attach";
    }

    int run() {
        log::info("fleet_connector", {{"relays", _relays.size()}, {"attach", k_attach}});
        if (!_o.metrics_listen.empty()) {
            std::string why;
            _http = status_http::start(_o.metrics_listen, &why);
            if (!_http) {
                log::error("metrics_failed", {{"reason", why}});
                return 2;
            }
            log::info("metrics_listening", {{"port", _http->port()}});
        }
        _last_up = clock::now();
        auto next_stats = clock::now();
        int code = 0;
        while (!_stop.load(std::memory_order_relaxed)) {
            observe();
            if (int fatal = reap(); fatal != 0) {
                code = fatal;
                break;
            }
            retire_draining();
            attach_more();
            const auto now = clock::now();
            if (total_up() > 0) {
                _last_up = now;
            } else if (now - _last_up > ms(_o.give_up_after_ms)) {
                log::error("giving_up", {{"reason", "no tunnel to any relay of the fleet"},
                                         {"after_ms", _o.give_up_after_ms}});
                code = 3;
                break;
            }
            if (now >= next_stats) {
                next_stats = now + k_stats_every;
                write_stats();
            }
            std::this_thread::sleep_for(k_tick);
        }
        for (auto& a : _attached) {
            a->stop.store(true);
        }
        for (auto& a : _attached) {
            if (a->thread.joinable()) {
                a->thread.join();
            }
        }
        observe();
        write_stats();
        for (auto& a : _attached) {
            std::remove(a->stats_path.c_str());
        }
        return code;
    }

private:
    // What each attachment learned: its stats, the fleet from CONFIG, GOAWAYs.
    void observe() {
        for (auto& a : _attached) {
            nlohmann::json j;
            if (!read_json(a->stats_path, &j)) {
                continue;
            }
            a->status = j;
            if (j.value("tunnels_up", uint64_t(0)) > 0) {
                a->ever_up = true;
                auto& r = _relays[a->address];
                r.failures = 0;
            }
            auto counters = j.find("counters");
            const uint64_t g = counters != j.end() && counters->is_object()
                                   ? counters->value("relay_goaways", uint64_t(0))
                                   : 0;
            if (g > a->goaways) {
                a->goaways = g;
                _relays[a->address].draining = true; // it told us: it is going away
            }
            auto fleet = j.find("fleet");
            if (fleet == j.end() || !fleet->is_array()) {
                continue;
            }
            _region = j.value("region", std::string());
            std::map<std::string, relay_info> next;
            for (const auto& r : *fleet) {
                if (!r.is_object()) {
                    continue;
                }
                const std::string addr = r.value("address", std::string());
                if (addr.empty()) {
                    continue;
                }
                relay_info info = _relays.count(addr) != 0 ? _relays[addr] : relay_info{};
                info.node = r.value("node", std::string());
                info.region = r.value("region", std::string());
                // Draining from CONFIG, or from a GOAWAY we saw on a tunnel still open.
                bool goaway = false;
                for (const auto& b : _attached) {
                    goaway |= b->address == addr && b->goaways > 0 && b->code.load() < 0;
                }
                info.draining = r.value("draining", false) || goaway;
                next[addr] = info;
            }
            // Attached relays stay known even if CONFIG no longer lists them (they left).
            for (const auto& b : _attached) {
                if (next.count(b->address) == 0 && _relays.count(b->address) != 0) {
                    next[b->address] = _relays[b->address];
                    next[b->address].draining = true;
                }
            }
            _relays = std::move(next);
        }
    }

    // Joins attachments that ended; a relay that failed is backed off.
    int reap() {
        for (auto it = _attached.begin(); it != _attached.end();) {
            auto& a = **it;
            const int c = a.code.load();
            if (c < 0) {
                ++it;
                continue;
            }
            if (a.thread.joinable()) {
                a.thread.join();
            }
            std::remove(a.stats_path.c_str());
            if (c == 4) {
                return 4; // refused for good: version too old
            }
            if (!a.retiring) {
                auto& r = _relays[a.address];
                r.failures = std::min(r.failures + 1, 10);
                auto cap = std::min<int64_t>(k_backoff_cap.count(),
                                             k_backoff_base.count() << (r.failures - 1));
                std::uniform_int_distribution<int64_t> d(cap / 2, cap); // jittered
                r.retry_at = clock::now() + ms(d(_rng));
                log::warn("fleet_relay_lost", {{"relay", a.address},
                                               {"code", c},
                                               {"retry_in_ms", (r.retry_at - clock::now()) /
                                                                   ms(1)}});
            } else {
                log::info("fleet_relay_released", {{"relay", a.address}});
            }
            it = _attached.erase(it);
        }
        return 0;
    }

    bool draining(const std::string& addr) const {
        auto it = _relays.find(addr);
        return it != _relays.end() && it->second.draining;
    }

    // A relay outside the group's region is wanted only while the region has fewer than K
    // relays to offer; otherwise its attachment moves to one in the region (make before break).
    bool wanted(const std::string& addr) const {
        auto it = _relays.find(addr);
        if (it == _relays.end() || it->second.draining) {
            return false;
        }
        if (_region.empty() || it->second.region == _region) {
            return true;
        }
        std::size_t in_region = 0;
        const auto now = clock::now();
        for (const auto& [a, r] : _relays) {
            in_region += r.region == _region && !r.draining && r.retry_at <= now;
        }
        return in_region < k_attach;
    }

    std::size_t healthy() const {
        std::size_t n = 0;
        for (const auto& a : _attached) {
            n += !a->retiring && wanted(a->address);
        }
        return n;
    }

    // A draining relay's attachment goes once a healthy one is up, or once nothing else is left
    // to attach to (then it stays until the relay itself closes).
    void retire_draining() {
        std::size_t up_elsewhere = 0;
        for (const auto& a : _attached) {
            if (!a->retiring && wanted(a->address) &&
                a->status.value("tunnels_up", uint64_t(0)) > 0) {
                ++up_elsewhere;
            }
        }
        for (auto& a : _attached) {
            if (a->retiring || wanted(a->address) || up_elsewhere == 0) {
                continue;
            }
            if (!draining(a->address) && up_elsewhere < k_attach) {
                continue; // out of region: leaves once the region's relays carry K tunnels
            }
            log::info(draining(a->address) ? "fleet_relay_draining" : "fleet_relay_out_of_region",
                      {{"relay", a->address}, {"moved_to", up_elsewhere}});
            a->retiring = true;
            a->stop.store(true);
        }
    }

    void attach_more() {
        const auto now = clock::now();
        while (healthy() < k_attach) {
            std::vector<std::string> same;
            std::vector<std::string> other;
            for (const auto& [addr, r] : _relays) {
                bool attached = std::any_of(_attached.begin(), _attached.end(),
                                            [&](const auto& a) { return a->address == addr; });
                if (attached || r.draining || r.retry_at > now || !wanted(addr)) {
                    continue;
                }
                (!_region.empty() && r.region == _region ? same : other).push_back(addr);
            }
            auto& pool = !same.empty() ? same : other;
            if (pool.empty()) {
                return;
            }
            std::uniform_int_distribution<std::size_t> d(0, pool.size() - 1);
            start(pool[d(_rng)]);
        }
    }

    void start(const std::string& addr) {
        auto a = std::make_unique<attachment>();
        a->address = addr;
        a->stats_path = _stats_base + "-" + std::to_string(_next++) + ".json";
        a->started = clock::now();
        agent_options o = _o;
        o.relay = addr;
        o.relays.clear();
        o.stats_file = a->stats_path;
        o.metrics_listen.clear();
        o.give_up_after_ms = std::min(_o.give_up_after_ms, k_attach_give_up_ms);
        o.backoff_base_ms = std::min<uint32_t>(_o.backoff_base_ms, 250);
        o.backoff_cap_ms = std::min<uint32_t>(_o.backoff_cap_ms, 2000);
        attachment* raw = a.get();
        a->thread = std::thread([raw, o] { raw->code.store(run_agent(o, raw->stop)); });
        log::info("fleet_relay_attach", {{"relay", addr},
                                         {"region", _relays[addr].region},
                                         {"attached", _attached.size() + 1}});
        _attached.push_back(std::move(a));
    }

    uint64_t total_up() const {
        uint64_t n = 0;
        for (const auto& a : _attached) {
            n += a->status.value("tunnels_up", uint64_t(0));
        }
        return n;
    }

    void write_stats() {
        if (_o.stats_file.empty() && !_http) {
            return;
        }
        nlohmann::json out = nlohmann::json::object();
        nlohmann::json counters = nlohmann::json::object();
        nlohmann::json relays = nlohmann::json::array();
        for (const auto& a : _attached) {
            const auto& s = a->status;
            if (!s.is_object()) {
                continue;
            }
            if (auto c = s.find("counters"); c != s.end() && c->is_object()) {
                for (const auto& [k, v] : c->items()) {
                    if (v.is_number_unsigned()) {
                        counters[k] = counters.value(k, uint64_t(0)) + v.get<uint64_t>();
                    }
                }
            }
            for (const char* k : {"id", "pid", "version", "latest_version", "tenant", "group",
                                  "config_version", "region"}) {
                if (s.contains(k)) {
                    out[k] = s[k];
                }
            }
            relays.push_back({{"relay", a->address},
                              {"node", _relays.count(a->address) ? _relays[a->address].node : ""},
                              {"tunnels_up", s.value("tunnels_up", uint64_t(0))},
                              {"draining", draining(a->address)},
                              {"retiring", a->retiring}});
        }
        out["counters"] = counters;
        out["tunnels_up"] = total_up();
        out["relays"] = relays;
        out["relay"] = _attached.empty() ? "" : _attached.front()->address;
        if (!_o.stats_file.empty()) {
            write_file_atomically(_o.stats_file, out.dump());
        }
        if (_http) {
            std::vector<uint64_t> values(std::size_t(connector_counter::count_), 0);
            for (std::size_t i = 0; i < values.size(); ++i) {
                values[i] = counters.value(std::string(connector_counter_names[i]), uint64_t(0));
            }
            _http->publish(metrics_for(values, out.value("config_version", uint64_t(0)), 0),
                           out.dump());
        }
    }

    agent_options _o;
    const std::atomic<bool>& _stop;
    std::mt19937_64 _rng;
    std::map<std::string, relay_info> _relays; // by address
    std::string _region;
    std::vector<std::unique_ptr<attachment>> _attached;
    std::string _stats_base;
    uint64_t _next = 0;
    clock::time_point _last_up;
    std::unique_ptr<status_http> _http; // --metrics-listen: the fleet connector's sums
};

} // namespace

int run_fleet(const agent_options& opts, const std::atomic<bool>& stop) {
    log::set_component("connector");
    manager m(opts, stop);
    return m.run();
}

} // namespace apprelay::connector
