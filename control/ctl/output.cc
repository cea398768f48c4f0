#include "control/ctl/output.hh"

#include <algorithm>
#include <ctime>
#include <fmt/format.h>

namespace apprelay::ctl {

using nlohmann::json;

namespace {

// One table cell from whatever JSON type the field has.
std::string cell(const json& obj, const char* key) {
    if (!obj.is_object() || !obj.contains(key)) {
        return "-";
    }
    const json& v = obj.at(key);
    if (v.is_string()) {
        std::string s = v.get<std::string>();
        return s.empty() ? "-" : s;
    }
    if (v.is_boolean()) {
        return v.get<bool>() ? "yes" : "no";
    }
    if (v.is_number_unsigned()) {
        return std::to_string(v.get<uint64_t>());
    }
    if (v.is_number_integer()) {
        return std::to_string(v.get<int64_t>());
    }
    if (v.is_array()) {
        std::string out;
        for (const auto& e : v) {
            if (!out.empty()) {
                out += ',';
            }
            out += e.is_string() ? e.get<std::string>() : e.dump();
        }
        return out.empty() ? "-" : out;
    }
    if (v.is_null()) {
        return "-";
    }
    return v.dump();
}

int64_t number(const json& obj, const char* key) {
    if (obj.is_object() && obj.contains(key) && obj.at(key).is_number_integer()) {
        return obj.at(key).get<int64_t>();
    }
    return 0;
}

// The array under key; an empty one when absent so an empty list still prints its header.
const json& list(const json& j, const char* key) {
    static const json empty = json::array();
    if (j.is_object() && j.contains(key) && j.at(key).is_array()) {
        return j.at(key);
    }
    return empty;
}

std::string format_duration(int64_t s) {
    if (s < 60) {
        return fmt::format("{}s", s);
    }
    if (s < 3600) {
        return fmt::format("{}m {}s", s / 60, s % 60);
    }
    if (s < 86400) {
        return fmt::format("{}h {}m", s / 3600, s % 3600 / 60);
    }
    return fmt::format("{}d {}h", s / 86400, s % 86400 / 3600);
}

} // namespace

std::string render_table(const std::vector<std::string>& headers,
                         const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> width(headers.size());
    for (std::size_t c = 0; c < headers.size(); ++c) {
        width[c] = headers[c].size();
        for (const auto& r : rows) {
            if (c < r.size()) {
                width[c] = std::max(width[c], r[c].size());
            }
        }
    }
    std::string out;
    auto line = [&](const std::vector<std::string>& cells) {
        std::string l;
        for (std::size_t c = 0; c < headers.size(); ++c) {
            const std::string& v = c < cells.size() ? cells[c] : std::string();
            l += v;
            if (c + 1 < headers.size()) {
                l.append(width[c] - v.size() + 2, ' ');
            }
        }
        while (!l.empty() && l.back() == ' ') {
            l.pop_back();
        }
        out += l;
        out += '\n';
    };
    line(headers);
    for (const auto& r : rows) {
        line(r);
    }
    return out;
}

std::string format_age(int64_t then_s, int64_t now_s) {
    if (then_s <= 0) {
        return "-";
    }
    int64_t d = now_s - then_s;
    if (d <= 0) {
        return "now";
    }
    if (d < 60) {
        return fmt::format("{}s ago", d);
    }
    if (d < 3600) {
        return fmt::format("{}m ago", d / 60);
    }
    if (d < 86400) {
        return fmt::format("{}h ago", d / 3600);
    }
    return fmt::format("{}d ago", d / 86400);
}

std::string format_time(int64_t unix_s) {
    if (unix_s <= 0) {
        return "-";
    }
    std::time_t t = static_cast<std::time_t>(unix_s);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%SZ", &tm);
    return buf;
}

std::string format_status(const json& j) {
    const json& conns = j.is_object() && j.contains("connectors") ? j.at("connectors") : json{};
    std::string config = cell(j, "config_version");
    if (j.is_object() && j.value("config_stale", false)) {
        config += " (stale: serving the last good configuration)";
    }
    std::vector<std::vector<std::string>> rows = {
        {"version", cell(j, "version")},
        {"config version", config},
        {"uptime", format_duration(number(j, "uptime_s"))},
        {"workers", cell(j, "workers")},
        {"ports", fmt::format("user {}, tunnel {}, enroll {}", cell(j, "user_port"),
                              cell(j, "tunnel_port"), cell(j, "enroll_port"))},
        {"tunnels up", cell(j, "tunnels_up")},
        {"connectors",
         fmt::format("{} active, {} inactive", cell(conns, "active"), cell(conns, "inactive"))},
        {"connector version",
         fmt::format("latest {}, minimum {}", cell(j, "latest_connector_version"),
                     cell(j, "min_connector_version"))},
    };
    // Key/value pairs: the same alignment as a table, without a header line.
    std::string table = render_table({"", ""}, rows);
    return table.substr(table.find('\n') + 1);
}

// The fleet's relays: where each is, what it holds and how current its copy is.
std::string format_relays(const json& j) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : list(j, "relays")) {
        std::string state = r.value("draining", false) ? "draining" : "serving";
        std::string copy = r.value("stale", false) ? "stale" : "current";
        if (r.value("versions_behind", 0) > 0) {
            copy += " (" + std::to_string(r.value("versions_behind", 0)) + " behind)";
        }
        rows.push_back({cell(r, "node"), cell(r, "region"), cell(r, "address"), state,
                        cell(r, "tunnels"), cell(r, "config_version"), copy});
    }
    return render_table({"NODE", "REGION", "ADDRESS", "STATE", "TUNNELS", "CONFIG", "COPY"}, rows);
}

std::string format_tenants(const json& j) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& t : list(j, "tenants")) {
        rows.push_back({cell(t, "name"), cell(t, "ca_fingerprint")});
    }
    return render_table({"NAME", "CA-FINGERPRINT"}, rows);
}

std::string format_ca(const json& j) {
    std::string pem = j.at("ca_pem").get<std::string>();
    if (!pem.empty() && pem.back() != '\n') {
        pem += '\n';
    }
    return pem;
}

std::string format_groups(const json& j) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& g : list(j, "groups")) {
        rows.push_back({cell(g, "name"), cell(g, "region"), cell(g, "connectors"),
                        cell(g, "active"), cell(g, "apps")});
    }
    return render_table({"NAME", "REGION", "CONNECTORS", "ACTIVE", "APPS"}, rows);
}

std::string format_connectors(const json& j, int64_t now_s) {
    std::vector<std::vector<std::string>> rows;
    bool fleet = false; // a fleet store says where each connector's tunnels land
    for (const auto& c : list(j, "connectors")) {
        fleet |= c.contains("relays");
    }
    for (const auto& c : list(j, "connectors")) {
        rows.push_back({cell(c, "id"), cell(c, "name"), cell(c, "group"), cell(c, "status"),
                        cell(c, "tunnels"), cell(c, "version"),
                        format_age(number(c, "last_seen"), now_s)});
        if (fleet) {
            std::string relays;
            for (const auto& r : c.value("relays", json::array())) {
                relays += (relays.empty() ? "" : ",") + r.get<std::string>();
            }
            rows.back().push_back(relays.empty() ? "-" : relays);
        }
    }
    std::vector<std::string> headers = {"ID",      "NAME",    "GROUP",    "STATUS",
                                        "TUNNELS", "VERSION", "LAST-SEEN"};
    if (fleet) {
        headers.push_back("RELAYS");
    }
    std::string out = render_table(headers, rows);
    if (j.contains("latest_connector_version")) {
        out += "latest connector version " + cell(j, "latest_connector_version") + ", minimum " +
               cell(j, "min_connector_version") + "\n";
    }
    return out;
}

std::string format_apps(const json& j) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& a : list(j, "apps")) {
        // 0 or absent: the relay's [limits] idle_timeout_ms.
        const bool own_idle = a.is_object() && a.contains("idle_timeout_ms") &&
                              a["idle_timeout_ms"].is_number_integer() &&
                              a["idle_timeout_ms"].get<int64_t>() != 0;
        rows.push_back({cell(a, "name"), cell(a, "hostname"), cell(a, "listen_port"),
                        cell(a, "backend"), cell(a, "group"), cell(a, "access"),
                        cell(a, "allowed_user_groups"),
                        own_idle ? cell(a, "idle_timeout_ms") : "-"});
    }
    return render_table({"NAME", "HOSTNAME", "PORT", "BACKEND", "GROUP", "ACCESS", "USER-GROUPS",
                         "IDLE-TIMEOUT-MS"},
                        rows);
}

std::string format_tokens(const json& j) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& t : list(j, "tokens")) {
        rows.push_back({cell(t, "id"), cell(t, "group"), cell(t, "state"),
                        format_time(number(t, "created_at")),
                        format_time(number(t, "expires_at"))});
    }
    return render_table({"ID", "GROUP", "STATE", "CREATED", "EXPIRES"}, rows);
}

rendered format_token_created(const json& j) {
    rendered r;
    r.out = j.at("token").get<std::string>() + "\n";
    r.err = fmt::format("token {} for group {} expires {}\n", cell(j, "id"), cell(j, "group"),
                        format_time(number(j, "expires_at")));
    return r;
}

std::string format_confirmation(std::string_view action, const json& j) {
    if (j.is_object() && j.contains("config_version")) {
        return fmt::format("{} (config version {})\n", action, cell(j, "config_version"));
    }
    return fmt::format("{}\n", action);
}

std::string format_group_deleted(std::string_view name, const json& j) {
    std::string out = format_confirmation(fmt::format("deleted group {}", name), j);
    const json& moved = list(j, "moved_connectors");
    if (!moved.empty()) {
        std::string ids;
        for (const auto& id : moved) {
            if (!ids.empty()) {
                ids += ", ";
            }
            ids += id.is_string() ? id.get<std::string>() : id.dump();
        }
        out += fmt::format("moved {} connector(s) out of it: {}\n", moved.size(), ids);
    }
    return out;
}

std::vector<std::string> listed_names(const json& j, std::string_view key, std::string_view field,
                                      std::string_view state) {
    std::vector<std::string> out;
    for (const auto& o : list(j, std::string(key).c_str())) {
        if (!o.is_object()) {
            continue;
        }
        auto f = o.find(std::string(field));
        if (f == o.end() || !f->is_string() || f->get_ref<const std::string&>().empty()) {
            continue;
        }
        if (!state.empty() && o.value("state", "") != state) {
            continue;
        }
        out.push_back(f->get<std::string>());
    }
    return out;
}

std::string format_error(std::string_view message, long status, bool as_json) {
    if (as_json) {
        // A relay's message is bytes: replace invalid UTF-8 rather than throw.
        return json{{"error", message}, {"status", status}}.dump(-1, ' ', false,
                                                                 json::error_handler_t::replace) +
               "\n";
    }
    return fmt::format("error: {}\n", message);
}

std::string api_error_message(long status, std::string_view body) {
    json j = json::parse(body, nullptr, false);
    if (j.is_object() && j.contains("error") && j.at("error").is_string()) {
        return j.at("error").get<std::string>();
    }
    std::string_view first = body.substr(0, std::min(body.find('\n'), std::size_t{200}));
    if (first.empty()) {
        return fmt::format("HTTP {}", status);
    }
    return fmt::format("HTTP {}: {}", status, first);
}

} // namespace apprelay::ctl
