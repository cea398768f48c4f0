#pragma once
// Update turns (dataplane/connector/UPDATE.md "Turns"): the relay lets at most one connector of a
// group update at a time, and only while every other connector of the group holds a tunnel, so
// that the group keeps serving its apps while one of its connectors drains and restarts.
//
// The enrollment thread asks (request), the control thread reports what the workers saw
// (connector_up / connector_down) and runs the clock (expire); the admin API lists the turns. A
// mutex guards the book: every caller is off the data path, and each call is a few map lookups.
//
// A turn (a lease) ends:
//   - when its connector comes back with the version it asked for (updated);
//   - when it comes back with another version after having gone down (rolled back);
//   - at the lease's end if the connector never went down (the updater gave up before draining);
//   - when the connector is gone from the store (deleted, purged).
// A lease that ends while its connector is down is *stuck*: it is kept (the group is already one
// connector short), reported as an alert, and ends when the connector comes back or is removed.
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace apprelay::control {

struct turn_decision {
    bool granted = false;
    uint32_t lease_s = 0;         // granted: how long the turn is held at most
    std::string reason;           // refused: why, for the updater's log
    uint32_t retry_after_ms = 0;  // refused: when asking again makes sense
    std::string holder;           // refused because another connector holds the group's turn
};

// One connector of the asking connector's group, as the store sees it.
struct turn_peer {
    std::string id;
    std::string name;
    bool active = false; // holds at least one tunnel
};

struct turn_info {
    std::string group_key; // tenant/group
    std::string connector;
    std::string target_version;
    int64_t granted_at = 0;
    int64_t lease_end = 0;
    bool went_down = false;
    bool stuck = false;
};

class update_turns {
public:
    explicit update_turns(uint32_t lease_s = 600) : _lease_s(lease_s) {}

    // `others`: the group's other connectors. Asking again while holding the turn renews it.
    turn_decision request(const std::string& group_key, const std::string& connector,
                          const std::string& target_version, const std::vector<turn_peer>& others,
                          int64_t now);
    // The connector's first tunnel came up (with this version) / its last tunnel went down.
    void connector_up(const std::string& connector, const std::string& version, int64_t now);
    void connector_down(const std::string& connector, int64_t now);
    // Ends leases past their end (or marks them stuck), and those of connectors no longer in
    // the store (`exists`).
    template <typename Exists> void expire(int64_t now, Exists exists);
    std::vector<turn_info> list() const;
    void set_lease_s(uint32_t s) {
        std::lock_guard lock(_mu);
        _lease_s = s;
    }

private:
    void end(std::unordered_map<std::string, turn_info>::iterator it, const char* why);

    mutable std::mutex _mu;
    uint32_t _lease_s;
    std::unordered_map<std::string, turn_info> _by_group; // group_key -> its one turn
};

template <typename Exists> void update_turns::expire(int64_t now, Exists exists) {
    std::lock_guard lock(_mu);
    for (auto it = _by_group.begin(); it != _by_group.end();) {
        auto next = std::next(it);
        if (!exists(it->second.connector)) {
            end(it, "connector removed");
        } else if (now >= it->second.lease_end) {
            if (it->second.went_down) {
                it->second.stuck = true;
            } else {
                end(it, "lease ended unused");
            }
        }
        it = next;
    }
}

} // namespace apprelay::control
