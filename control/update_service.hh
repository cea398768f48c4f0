#pragma once
// What the relay answers a registered connector on its enrollment listener (control/enroll/
// PROTOCOL.md "Connector requests"): where the latest connector version is (update_info), the
// update package itself in chunks (update_fetch), and a turn to update (update_turn, turns.hh).
// Runs on the enrollment thread with that thread's own store connection.
#include "control/enroll/server.hh"
#include "control/store/model.hh"
#include "control/turns.hh"
#include "dataplane/base/result.hh"

#include <cstdint>
#include <memory>
#include <string>

namespace apprelay::control {

class store;
struct relay_settings;

// The package in [connectors] update_package, as far as the relay checks it: the manifest is
// JSON with a version, an architecture, a size and a SHA-256; the signature is 64 bytes and the
// binary has the manifest's size. The relay does not hold the operator's public key: every
// connector verifies the signature itself before using anything of it.
struct package_summary {
    std::string version;
    std::string arch;
    std::string sha256;
    uint64_t size = 0;
};
result<package_summary> inspect_update_package(const std::string& dir, std::string* why);
// With [connectors] update_package set: checks the package and makes its version the latest
// version advertised; false with *why when the package is bad, or its version differs from an
// explicit latest_version or is older than min_version.
bool resolve_update_package(relay_settings* s, std::string* why);

// The files a connector may fetch, and nothing else of the directory.
constexpr const char* k_package_files[] = {"manifest.json", "manifest.sig", "apprelay-connector"};

class connector_service {
public:
    connector_service(store& st, const relay_settings& settings, update_turns& turns)
        : _store(st), _settings(settings), _turns(turns) {}
    enroll::service_reply handle(const enroll::service_request& req, int64_t now);

private:
    enroll::service_reply info();
    enroll::service_reply fetch(const enroll::service_request& req);

    store& _store;
    const relay_settings& _settings;
    update_turns& _turns;
    std::unique_ptr<store_view> _view; // the last read of the store, at _view_at (unix s)
    int64_t _view_at = 0;
};

} // namespace apprelay::control
