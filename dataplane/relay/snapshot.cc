#include "dataplane/relay/snapshot.hh"

#include "dataplane/tunnel/connector_config.hh"

namespace apprelay::relay {

int compare_versions(std::string_view a, std::string_view b) noexcept {
    // Component by component; a missing component is 0, so "1.2" == "1.2.0".
    while (!a.empty() || !b.empty()) {
        auto take = [](std::string_view& s) {
            uint64_t v = 0;
            std::size_t i = 0;
            for (; i < s.size() && s[i] != '.'; ++i) {
                if (s[i] >= '0' && s[i] <= '9' && v < (UINT64_MAX - 9) / 10) {
                    v = v * 10 + uint64_t(s[i] - '0');
                }
            }
            s.remove_prefix(i < s.size() ? i + 1 : i);
            return v;
        };
        uint64_t x = take(a);
        uint64_t y = take(b);
        if (x != y) {
            return x < y ? -1 : 1;
        }
    }
    return 0;
}

std::string lowercase_hostname(std::string_view host) {
    std::string out(host);
    for (char& c : out) {
        c = ascii_lower(c);
    }
    return out;
}

void finalize(snapshot& s) {
    s.connector_by_fingerprint.clear();
    s.app_by_hostname.clear();
    std::vector<std::vector<std::string>> backends(s.groups.size());
    for (std::size_t i = 0; i < s.apps.size(); ++i) {
        const auto& a = s.apps[i];
        backends[a.group].push_back(a.backend);
        if (!a.hostname.empty()) {
            s.app_by_hostname.emplace(lowercase_hostname(a.hostname), uint32_t(i));
        }
    }
    for (std::size_t i = 0; i < s.connectors.size(); ++i) {
        auto& c = s.connectors[i];
        s.connector_by_fingerprint.emplace(c.fingerprint, uint32_t(i));
        tunnel::connector_config cc{s.tenants[c.tenant].name, s.groups[c.group].name,
                                    backends[c.group], s.groups[c.group].region, s.fleet};
        c.config_body = tunnel::encode_connector_config(cc);
    }
}

} // namespace apprelay::relay
