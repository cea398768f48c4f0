#include "control/turns.hh"

#include "dataplane/base/log.hh"

namespace apprelay::control {

namespace {
// How soon a refused connector should ask again: the holder needs at least a drain and a
// restart, which take seconds.
constexpr uint32_t k_retry_busy_ms = 2000;
constexpr uint32_t k_retry_degraded_ms = 5000;
} // namespace

turn_decision update_turns::request(const std::string& group_key, const std::string& connector,
                                    const std::string& target_version,
                                    const std::vector<turn_peer>& others, int64_t now) {
    std::lock_guard lock(_mu);
    turn_decision d;
    auto it = _by_group.find(group_key);
    if (it != _by_group.end() && it->second.connector != connector) {
        d.holder = it->second.connector;
        d.reason = it->second.stuck
                       ? "connector " + d.holder + "'s update is stuck (no tunnel since it drained)"
                       : "connector " + d.holder + " is updating";
        d.retry_after_ms = k_retry_busy_ms;
        return d;
    }
    if (it == _by_group.end()) {
        // A new turn only while the rest of the group serves: each other connector has a tunnel.
        for (const auto& p : others) {
            if (!p.active) {
                d.reason = "connector " + p.id + (p.name.empty() ? "" : " (" + p.name + ")") +
                           " of the group has no tunnel";
                d.retry_after_ms = k_retry_degraded_ms;
                return d;
            }
        }
        turn_info t;
        t.group_key = group_key;
        t.connector = connector;
        t.granted_at = now;
        it = _by_group.emplace(group_key, std::move(t)).first;
        log::info("update_turn_granted", {{"group", group_key},
                                          {"connector", connector},
                                          {"version", target_version},
                                          {"lease_s", _lease_s}});
    }
    // Granted, or renewed for the holder asking again (an updater that retried).
    it->second.target_version = target_version;
    it->second.lease_end = now + _lease_s;
    it->second.stuck = false;
    d.granted = true;
    d.lease_s = _lease_s;
    return d;
}

void update_turns::connector_up(const std::string& connector, const std::string& version,
                                int64_t now) {
    std::lock_guard lock(_mu);
    for (auto it = _by_group.begin(); it != _by_group.end(); ++it) {
        if (it->second.connector != connector) {
            continue;
        }
        if (version == it->second.target_version) {
            end(it, "updated");
        } else if (it->second.went_down) {
            end(it, "back at another version");
        }
        (void)now;
        return;
    }
}

void update_turns::connector_down(const std::string& connector, int64_t) {
    std::lock_guard lock(_mu);
    for (auto& [g, t] : _by_group) {
        if (t.connector == connector) {
            t.went_down = true;
        }
    }
}

std::vector<turn_info> update_turns::list() const {
    std::lock_guard lock(_mu);
    std::vector<turn_info> out;
    out.reserve(_by_group.size());
    for (const auto& [g, t] : _by_group) {
        out.push_back(t);
    }
    return out;
}

void update_turns::end(std::unordered_map<std::string, turn_info>::iterator it, const char* why) {
    log::info("update_turn_ended", {{"group", it->second.group_key},
                                    {"connector", it->second.connector},
                                    {"version", it->second.target_version},
                                    {"why", why}});
    _by_group.erase(it);
}

} // namespace apprelay::control
