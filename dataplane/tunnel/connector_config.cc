#include "dataplane/tunnel/connector_config.hh"

#include <algorithm>

namespace apprelay::tunnel {

bool connector_config::allows(std::string_view target) const noexcept {
    return std::binary_search(backends.begin(), backends.end(), target);
}

std::string encode_connector_config(const connector_config& c) {
    std::string out;
    out += "tenant " + c.tenant + "\n";
    out += "group " + c.group + "\n";
    std::vector<std::string> sorted = c.backends;
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    for (const auto& b : sorted) {
        out += "backend " + b + "\n";
    }
    if (!c.region.empty()) {
        out += "region " + c.region + "\n";
    }
    for (const auto& r : c.relays) {
        out += "relay " + r.node + " " + r.address + " " + (r.region.empty() ? "-" : r.region) +
               (r.draining ? " 1\n" : " 0\n");
    }
    return out;
}

result<connector_config> decode_connector_config(std::span<const std::byte> body) {
    std::string_view text(reinterpret_cast<const char*>(body.data()), body.size());
    connector_config c;
    bool have_tenant = false;
    bool have_group = false;
    while (!text.empty()) {
        auto nl = text.find('\n');
        if (nl == std::string_view::npos) {
            return error(errc::protocol_error, "CONFIG line not terminated");
        }
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl + 1);
        if (line.size() > k_max_config_line) {
            return error(errc::protocol_error, "CONFIG line too long");
        }
        for (char ch : line) {
            if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
                return error(errc::protocol_error, "CONFIG line has control bytes");
            }
        }
        auto sp = line.find(' ');
        if (sp == 0 || sp == std::string_view::npos || sp + 1 == line.size()) {
            return error(errc::protocol_error, "CONFIG line is not 'key value'");
        }
        std::string_view key = line.substr(0, sp);
        std::string_view value = line.substr(sp + 1);
        if (key == "tenant") {
            c.tenant = value;
            have_tenant = true;
        } else if (key == "group") {
            c.group = value;
            have_group = true;
        } else if (key == "backend") {
            if (c.backends.size() == k_max_config_backends) {
                return error(errc::protocol_error, "CONFIG has too many backends");
            }
            c.backends.emplace_back(value);
        } else if (key == "region") {
            c.region = value;
        } else if (key == "relay") {
            if (c.relays.size() == k_max_config_relays) {
                return error(errc::protocol_error, "CONFIG has too many relays");
            }
            fleet_relay_info r;
            std::string_view rest = value;
            std::string_view f[4];
            for (int i = 0; i < 4; ++i) {
                auto s = rest.find(' ');
                f[i] = rest.substr(0, s);
                if (f[i].empty() || (i < 3 && s == std::string_view::npos)) {
                    return error(errc::protocol_error, "CONFIG relay is not 'node addr region 0|1'");
                }
                rest = s == std::string_view::npos ? std::string_view() : rest.substr(s + 1);
            }
            if (!rest.empty() || (f[3] != "0" && f[3] != "1") ||
                f[1].find(':') == std::string_view::npos) {
                return error(errc::protocol_error, "CONFIG relay is not 'node addr region 0|1'");
            }
            r.node = f[0];
            r.address = f[1];
            r.region = f[2] == "-" ? std::string() : std::string(f[2]);
            r.draining = f[3] == "1";
            c.relays.push_back(std::move(r));
        }
    }
    if (!have_tenant || !have_group) {
        return error(errc::protocol_error, "CONFIG lacks tenant or group");
    }
    std::sort(c.relays.begin(), c.relays.end(),
              [](const fleet_relay_info& a, const fleet_relay_info& b) { return a.node < b.node; });
    std::sort(c.backends.begin(), c.backends.end());
    c.backends.erase(std::unique(c.backends.begin(), c.backends.end()), c.backends.end());
    return c;
}

} // namespace apprelay::tunnel
