#include "dataplane/relay/snapshot.hh"

#include "dataplane/tunnel/connector_config.hh"

namespace apprelay::relay {

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
