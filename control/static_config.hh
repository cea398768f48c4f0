#pragma once
// The relay's static configuration file (TOML). The SQLite control plane replaces the object
// tables later; the [relay] section stays. Start-up code: errors are messages, not exceptions.
#include "dataplane/relay/snapshot.hh"

#include <memory>
#include <string>

namespace apprelay::control {

struct relay_settings {
    std::string user_listen = "127.0.0.1:8443";
    std::string tunnel_listen = "127.0.0.1:8444";
    std::string cert_path; // tunnel listener certificate (relay identity)
    std::string key_path;
    std::string core_map; // empty: control=0 + one worker per remaining cpu
};

struct loaded_config {
    relay_settings relay;
    std::shared_ptr<relay::snapshot> snap;
};

// Loads and validates the whole file; on error returns nullptr-free result with *why naming the
// key and the problem ("apps[2].group: no group 'DR' in tenant 'contoso'").
bool load_static_config(const std::string& path, loaded_config* out, std::string* why);

} // namespace apprelay::control
