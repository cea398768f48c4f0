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
        }
    }
    if (!have_tenant || !have_group) {
        return error(errc::protocol_error, "CONFIG lacks tenant or group");
    }
    std::sort(c.backends.begin(), c.backends.end());
    c.backends.erase(std::unique(c.backends.begin(), c.backends.end()), c.backends.end());
    return c;
}

} // namespace apprelay::tunnel
