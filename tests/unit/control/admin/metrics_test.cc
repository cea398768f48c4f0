// /metrics rendering: the output must parse as Prometheus text format 0.0.4 (checked by a small
// strict parser below) and carry the right values.
#include "control/admin/metrics.hh"
#include "dataplane/relay/counters.hh"

#include <gtest/gtest.h>
#include <map>
#include <set>
#include <sstream>

namespace apprelay::control {
namespace {

struct sample {
    std::string name;
    std::map<std::string, std::string> labels;
    uint64_t value = 0;
};

struct exposition {
    std::map<std::string, std::string> types; // family -> counter/gauge
    std::map<std::string, std::string> help;
    std::vector<sample> samples;
};

bool name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool name_char(char c) {
    return name_start(c) || (c >= '0' && c <= '9');
}

// Reads a metric or label name at s[i]; empty on failure.
std::string read_name(const std::string& s, std::size_t& i) {
    std::size_t start = i;
    if (i >= s.size() || !name_start(s[i])) {
        return {};
    }
    while (i < s.size() && name_char(s[i])) {
        ++i;
    }
    return s.substr(start, i - start);
}

// Strict parser for what render_prometheus may emit. Throws std::string naming the line.
exposition parse(const std::string& text) {
    exposition e;
    std::istringstream in(text);
    std::string line;
    int n = 0;
    std::string current; // family whose samples are being read
    std::set<std::string> finished;
    std::set<std::string> series;
    if (text.empty() || text.back() != '\n') {
        throw std::string("output must end with a newline");
    }
    while (std::getline(in, line)) {
        ++n;
        auto fail = [&](const std::string& why) {
            throw "line " + std::to_string(n) + " (" + line + "): " + why;
        };
        if (line.empty()) {
            fail("empty line");
        }
        if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
            std::size_t i = 7;
            std::string name = read_name(line, i);
            if (name.empty() || i >= line.size() || line[i] != ' ') {
                fail("bad metric name");
            }
            std::string rest = line.substr(i + 1);
            if (line[2] == 'H') {
                for (std::size_t k = 0; k < rest.size(); ++k) {
                    if (rest[k] == '\\' &&
                        (k + 1 >= rest.size() || (rest[k + 1] != '\\' && rest[k + 1] != 'n'))) {
                        fail("bad escape in HELP");
                    }
                    if (rest[k] == '\\') {
                        ++k;
                    }
                }
                if (!e.help.emplace(name, rest).second) {
                    fail("second HELP");
                }
            } else {
                if (rest != "counter" && rest != "gauge") {
                    fail("unexpected type");
                }
                if (e.types.count(name) != 0 || finished.count(name) != 0) {
                    fail("second TYPE");
                }
                if (!current.empty()) {
                    finished.insert(current);
                }
                current = name;
                e.types[name] = rest;
            }
            continue;
        }
        if (line[0] == '#') {
            fail("unexpected comment");
        }
        sample s;
        std::size_t i = 0;
        s.name = read_name(line, i);
        if (s.name.empty()) {
            fail("bad metric name");
        }
        if (s.name != current) {
            fail("sample outside its family (TYPE " + current + ")");
        }
        if (i < line.size() && line[i] == '{') {
            ++i;
            while (true) {
                std::string label = read_name(line, i);
                if (label.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
                    fail("bad label");
                }
                i += 2;
                std::string value;
                while (i < line.size() && line[i] != '"') {
                    if (line[i] == '\\') {
                        if (i + 1 >= line.size()) {
                            fail("dangling escape");
                        }
                        char c = line[i + 1];
                        if (c == 'n') {
                            value += '\n';
                        } else if (c == '\\' || c == '"') {
                            value += c;
                        } else {
                            fail("bad escape in label value");
                        }
                        i += 2;
                    } else {
                        value += line[i++];
                    }
                }
                if (i >= line.size()) {
                    fail("unterminated label value");
                }
                ++i;
                if (!s.labels.emplace(label, value).second) {
                    fail("duplicate label");
                }
                if (i < line.size() && line[i] == ',') {
                    ++i;
                    continue;
                }
                if (i < line.size() && line[i] == '}') {
                    ++i;
                    break;
                }
                fail("expected , or }");
            }
        }
        if (i >= line.size() || line[i] != ' ') {
            fail("expected a space before the value");
        }
        std::string value = line.substr(i + 1);
        if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos) {
            fail("value is not a non-negative integer");
        }
        s.value = std::stoull(value);
        std::string key = s.name;
        for (auto& [k, v] : s.labels) {
            key += "|" + k + "=" + v;
        }
        if (!series.insert(key).second) {
            fail("duplicate series");
        }
        e.samples.push_back(std::move(s));
    }
    return e;
}

const sample* find(const exposition& e, const std::string& name,
                   const std::map<std::string, std::string>& labels) {
    for (const auto& s : e.samples) {
        if (s.name == name && s.labels == labels) {
            return &s;
        }
    }
    return nullptr;
}

metrics_input relay_input() {
    using relay::relay_counter;
    constexpr auto n = static_cast<std::size_t>(relay_counter::count_);
    static constexpr std::string_view k_gauges[] = {"tunnels_up", "user_conns_open"};
    metrics_input in;
    in.counter_names = relay::relay_counter_names;
    in.counter_help = relay::relay_counter_help;
    in.gauge_names = k_gauges;
    in.workers.assign(2, std::vector<uint64_t>(n, 0));
    in.workers[0][static_cast<std::size_t>(relay_counter::streams_opened)] = 5;
    in.workers[1][static_cast<std::size_t>(relay_counter::streams_opened)] = 7;
    in.workers[0][static_cast<std::size_t>(relay_counter::tunnels_up)] = 3;
    in.workers[1][static_cast<std::size_t>(relay_counter::tunnels_up)] = 1;
    in.workers[1][static_cast<std::size_t>(relay_counter::bytes_user_to_backend)] =
        18446744073709551615ull; // u64 max prints exactly, no float rounding
    in.connectors = {{"contoso", "Default", "active", 2},
                     {"contoso", "Default", "inactive", 1},
                     {"fab\"rik\\am\n", "eu-west", "active", 4}};
    in.connector_versions = {{"contoso", "Default", "0.1.0", 2}, {"contoso", "Default", "0.2.0", 1}};
    in.config_version = 42;
    in.uptime_s = 3600;
    return in;
}

TEST(metrics, output_parses_as_text_format_0_0_4) {
    std::string text = render_prometheus(relay_input());
    exposition e;
    try {
        e = parse(text);
    } catch (const std::string& why) {
        FAIL() << why << "\n" << text;
    }
    // One family per counter plus connectors, connector_versions, config_version and uptime.
    EXPECT_EQ(e.types.size(), static_cast<std::size_t>(relay::relay_counter::count_) + 4);
    EXPECT_EQ(e.help.size(), e.types.size());
}

TEST(metrics, counters_have_per_worker_series_and_a_total) {
    exposition e = parse(render_prometheus(relay_input()));
    EXPECT_EQ(e.types["apprelay_streams_opened_total"], "counter");
    EXPECT_EQ(e.help["apprelay_streams_opened_total"], "streams opened towards a connector");
    const auto* w0 = find(e, "apprelay_streams_opened_total", {{"worker", "0"}});
    const auto* w1 = find(e, "apprelay_streams_opened_total", {{"worker", "1"}});
    const auto* total = find(e, "apprelay_streams_opened_total", {});
    ASSERT_TRUE(w0 && w1 && total);
    EXPECT_EQ(w0->value, 5u);
    EXPECT_EQ(w1->value, 7u);
    EXPECT_EQ(total->value, 12u); // 5 + 7
    const auto* big = find(e, "apprelay_bytes_user_to_backend_total", {{"worker", "1"}});
    ASSERT_TRUE(big);
    EXPECT_EQ(big->value, 18446744073709551615ull);
    const auto* zero = find(e, "apprelay_user_tls_failed_total", {});
    ASSERT_TRUE(zero);
    EXPECT_EQ(zero->value, 0u);
}

TEST(metrics, gauges_have_no_total_suffix) {
    exposition e = parse(render_prometheus(relay_input()));
    EXPECT_EQ(e.types.count("apprelay_tunnels_up_total"), 0u);
    EXPECT_EQ(e.types["apprelay_tunnels_up"], "gauge");
    EXPECT_EQ(e.types["apprelay_user_conns_open"], "gauge");
    const auto* total = find(e, "apprelay_tunnels_up", {});
    ASSERT_TRUE(total);
    EXPECT_EQ(total->value, 4u); // 3 + 1
}

TEST(metrics, connectors_config_version_and_uptime) {
    exposition e = parse(render_prometheus(relay_input()));
    EXPECT_EQ(e.types["apprelay_connectors"], "gauge");
    const auto* active = find(e, "apprelay_connectors",
                              {{"tenant", "contoso"}, {"group", "Default"}, {"status", "active"}});
    ASSERT_TRUE(active);
    EXPECT_EQ(active->value, 2u);
    // The parser unescapes: the round trip proves the escaping.
    const auto* odd =
        find(e, "apprelay_connectors",
             {{"tenant", "fab\"rik\\am\n"}, {"group", "eu-west"}, {"status", "active"}});
    ASSERT_TRUE(odd);
    EXPECT_EQ(odd->value, 4u);
    EXPECT_EQ(e.types["apprelay_connector_versions"], "gauge");
    const auto* older = find(e, "apprelay_connector_versions",
                             {{"tenant", "contoso"}, {"group", "Default"}, {"version", "0.2.0"}});
    ASSERT_TRUE(older);
    EXPECT_EQ(older->value, 1u);
    const auto* version = find(e, "apprelay_config_version", {});
    ASSERT_TRUE(version);
    EXPECT_EQ(version->value, 42u);
    const auto* uptime = find(e, "apprelay_uptime_seconds", {});
    ASSERT_TRUE(uptime);
    EXPECT_EQ(uptime->value, 3600u);
}

TEST(metrics, no_workers_still_renders_totals) {
    metrics_input in = relay_input();
    in.workers.clear();
    in.connectors.clear();
    exposition e = parse(render_prometheus(in));
    const auto* total = find(e, "apprelay_streams_opened_total", {});
    ASSERT_TRUE(total);
    EXPECT_EQ(total->value, 0u);
}

TEST(metrics, label_value_escaping) {
    EXPECT_EQ(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    EXPECT_EQ(escape_label_value("plain"), "plain");
}

TEST(metrics, strict_parser_rejects_malformed_lines) {
    // The parser must be able to fail, or the tests above prove nothing.
    EXPECT_THROW(parse("# TYPE a counter\na{x=\"1} 1\n"), std::string);
    EXPECT_THROW(parse("# TYPE a counter\na{x=\"\\t\"} 1\n"), std::string);
    EXPECT_THROW(parse("a 1\n"), std::string);
    EXPECT_THROW(parse("# TYPE a counter\na 1\na 2\n"), std::string);
    EXPECT_THROW(parse("# TYPE a counter\na 1.5\n"), std::string);
    EXPECT_THROW(parse("# TYPE a counter\na 1"), std::string);
    EXPECT_NO_THROW(parse("# HELP a h\n# TYPE a counter\na{x=\"\\\"\"} 1\n"));
}

} // namespace
} // namespace apprelay::control
