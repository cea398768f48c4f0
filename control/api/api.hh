#pragma once
// The admin API routes (control/API.md): a request value in, a response value out. The HTTP
// transport (control/admin/) and authentication live elsewhere; the store holds every rule, the
// routes only parse JSON, call the store and render its answer or its error.
#include "control/api/http_types.hh"
#include "control/store/store.hh"

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace apprelay::control {

// What only the running relay knows, sampled by the control thread for each request.
struct live_view {
    int64_t now = 0;                                                     // unix seconds
    std::function<uint32_t(const std::string& connector_id)> tunnels_of; // live tunnel count
    // Tunnels still open after the connector sent GOAWAY (it is stopping; streams finish).
    std::function<uint32_t(const std::string& connector_id)> draining_of;
    // The connector's update turn (control/turns.hh): null when it holds none, else {version,
    // since, lease_end, stuck}.
    std::function<nlohmann::json(const std::string& connector_id)> update_of;
    nlohmann::json relay_status; // version, uptime_s, workers, ports, tunnels_up, config_stale,...
    std::function<std::string()> render_metrics;
    int64_t token_ttl_max_s = 30 * 24 * 3600;
};

class admin_api {
public:
    explicit admin_api(store& s) : _store(s) {}
    // Never throws: any failure inside becomes a 500 with its message.
    http_response handle(const http_request& r, const live_view& live);

private:
    http_response route(const http_request& r, const live_view& live);
    http_response overview(const live_view& live);

    store& _store;
};

} // namespace apprelay::control
