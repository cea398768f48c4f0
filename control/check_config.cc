#include "control/check_config.hh"

#include "control/settings.hh"
#include "control/update_service.hh"
#include "dataplane/core/core_map.hh"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

namespace apprelay::control {

config_check check_config(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return {2, path + ": cannot read: " + std::strerror(errno)};
    }
    if (!S_ISREG(st.st_mode)) {
        return {2, path + ": cannot read: not a regular file"};
    }
    std::ifstream f(path, std::ios::binary);
    if (!f.is_open()) {
        return {2, path + ": cannot read: " + std::strerror(errno)};
    }
    std::ostringstream text;
    text << f.rdbuf();
    if (f.bad()) {
        return {2, path + ": cannot read: " + std::strerror(errno)};
    }
    relay_settings s;
    std::string why;
    if (!parse_settings(text.str(), path, &s, &why)) {
        // TOML syntax errors already start with the file's name.
        const bool named = why.rfind(path + ": ", 0) == 0;
        return {1, named ? why : path + ": " + why};
    }
    if (!resolve_update_package(&s, &why)) {
        return {1, path + ": " + why};
    }
    if (!s.core_map.empty()) {
        auto cm = core::parse_core_map(s.core_map, core::available_cpus(), &why);
        if (!cm) {
            return {1, path + ": relay.core_map: " + why + " (on this machine)"};
        }
    }
    return {0, path + ": ok"};
}

} // namespace apprelay::control
