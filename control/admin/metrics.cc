#include "control/admin/metrics.hh"

#include <algorithm>
#include <cassert>

namespace apprelay::control {

namespace {

// HELP text escaping (text format 0.0.4): only backslash and newline.
std::string escape_help(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out.push_back(c);
        }
    }
    return out;
}

void family_header(std::string& out, std::string_view name, std::string_view help,
                   std::string_view type) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += escape_help(help);
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

void sample(std::string& out, std::string_view name, std::string_view labels, uint64_t v) {
    out += name;
    if (!labels.empty()) {
        out += '{';
        out += labels;
        out += '}';
    }
    out += ' ';
    out += std::to_string(v);
    out += '\n';
}

} // namespace

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::string render_prometheus(const metrics_input& in) {
    assert(in.counter_help.empty() || in.counter_help.size() == in.counter_names.size());
    std::string out;
    out.reserve(256 + in.counter_names.size() * (160 + 48 * in.workers.size()));
    for (std::size_t i = 0; i < in.counter_names.size(); ++i) {
        std::string_view base = in.counter_names[i];
        bool gauge =
            std::find(in.gauge_names.begin(), in.gauge_names.end(), base) != in.gauge_names.end();
        std::string name = "apprelay_" + std::string(base);
        if (!gauge) {
            name += "_total";
        }
        family_header(out, name, in.counter_help.empty() ? base : in.counter_help[i],
                      gauge ? "gauge" : "counter");
        uint64_t sum = 0;
        for (std::size_t w = 0; w < in.workers.size(); ++w) {
            assert(in.workers[w].size() == in.counter_names.size());
            uint64_t v = i < in.workers[w].size() ? in.workers[w][i] : 0;
            sum += v;
            sample(out, name, "worker=\"" + std::to_string(w) + "\"", v);
        }
        sample(out, name, {}, sum);
    }

    family_header(out, "apprelay_connectors", "registered connectors by tenant, group and status",
                  "gauge");
    for (const auto& c : in.connectors) {
        sample(out, "apprelay_connectors",
               "tenant=\"" + escape_label_value(c.tenant) + "\",group=\"" +
                   escape_label_value(c.group) + "\",status=\"" + escape_label_value(c.status) +
                   "\"",
               c.count);
    }
    family_header(out, "apprelay_connector_versions",
                  "registered connectors by tenant, group and reported version", "gauge");
    for (const auto& c : in.connector_versions) {
        sample(out, "apprelay_connector_versions",
               "tenant=\"" + escape_label_value(c.tenant) + "\",group=\"" +
                   escape_label_value(c.group) + "\",version=\"" +
                   escape_label_value(c.version) + "\"",
               c.count);
    }
    family_header(out, "apprelay_config_version", "version of the published configuration",
                  "gauge");
    sample(out, "apprelay_config_version", {}, in.config_version);
    family_header(out, "apprelay_uptime_seconds", "seconds since the relay started", "gauge");
    sample(out, "apprelay_uptime_seconds", {}, in.uptime_s);
    return out;
}

} // namespace apprelay::control
