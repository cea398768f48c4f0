#pragma once
// /metrics: Prometheus text exposition format 0.0.4 from values the control thread already
// holds (summed worker counters, connector status from the store). Pure function: no I/O.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::control {

// Connectors of one (tenant, group) in one status ("active", "inactive").
struct connector_status_count {
    std::string tenant;
    std::string group;
    std::string status;
    uint64_t count = 0;
};

// Registered connectors of one (tenant, group) reporting one version (the last HELLO's).
struct connector_version_count {
    std::string tenant;
    std::string group;
    std::string version;
    uint64_t count = 0;
};

struct metrics_input {
    // Counter table (X-macro names and help texts, e.g. relay::relay_counter_names/_help).
    // Names are C++ identifiers by construction, hence valid Prometheus metric names.
    std::span<const std::string_view> counter_names;
    std::span<const std::string_view> counter_help; // same length as names, or empty
    // Counters in the table that are levels (tunnels_up, user_conns_open), not running totals.
    std::span<const std::string_view> gauge_names;
    // workers[w][i]: worker w's value of counter i.
    std::vector<std::vector<uint64_t>> workers;
    std::vector<connector_status_count> connectors;
    std::vector<connector_version_count> connector_versions;
    uint64_t config_version = 0;
    uint64_t uptime_s = 0;
};

// Counters: `apprelay_<name>_total{worker="N"}` per worker plus `apprelay_<name>_total` (the
// sum); gauges the same without `_total`. Then apprelay_connectors{tenant,group,status},
// apprelay_connector_versions{tenant,group,version}, apprelay_config_version,
// apprelay_uptime_seconds.
std::string render_prometheus(const metrics_input& in);

// Label value escaping of the text format: backslash, double quote and newline.
std::string escape_label_value(std::string_view v);

} // namespace apprelay::control
