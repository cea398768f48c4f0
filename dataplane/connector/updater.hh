#pragma once
// The connector updater (UPDATE.md): `update-sign` builds a signed package, `update` verifies one
// and swaps it in under a running connector: drain (SIGTERM: GOAWAY, streams finish), replace the
// binary atomically keeping PATH.prev, start the new one with the recorded arguments (supervised:
// let systemd restart it from PATH), and roll back to PATH.prev if it brings no tunnel up within
// the deadline. `run --state-dir DIR` records what the updater needs in DIR/run.json. CLI code:
// blocking, allocating, no exceptions.
#include "dataplane/base/result.hh"

#include <cstdint>
#include <string>
#include <vector>

namespace apprelay::connector {

// APPRELAY_VERSION, or APPRELAY_CONNECTOR_VERSION_OVERRIDE when set. The override is for tests
// only (test_update.py builds a "newer" connector from the same binary); it changes what the
// connector reports (HELLO, stats, --version), never what it is.
std::string connector_version();

// DIR/run.json, written by `run --state-dir DIR` at start.
struct run_record {
    int pid = 0;
    std::string exe;               // /proc/self/exe of the recording process
    std::vector<std::string> args; // argv[1..]: what a successor is started with
    std::string version;           // connector_version() of the recording process
    std::string stats_file;        // where it writes its stats (pid, version, tunnels_up)
    std::string cwd;               // relative paths in args are relative to it
};
result<void> write_run_record(const std::string& state_dir, const run_record& r, std::string* why);
// The record of the calling process (pid, /proc/self/exe, cwd) with these args, written.
result<void> record_this_run(const std::string& state_dir, std::vector<std::string> args,
                             const std::string& version, const std::string& stats_file,
                             std::string* why);
result<run_record> read_run_record(const std::string& state_dir, std::string* why);

struct sign_options {
    std::string key_path;    // Ed25519 private key PEM
    std::string binary_path; // the new connector binary
    std::string version;
    std::string arch; // empty: this host's
    std::string out_dir;
};
// Writes manifest.json, manifest.sig and apprelay-connector into out_dir. 0 or 1 (message on
// stderr).
int run_update_sign(const sign_options& o);

// Writes out_dir/update-key.pem (0600) and out_dir/update-pub.pem. 0 or 1.
int run_update_keygen(const std::string& out_dir);

// Exit codes of `update`.
constexpr int k_update_applied = 0;
constexpr int k_update_refused = 1;         // nothing touched: the connector runs on as it was
constexpr int k_update_failed = 2;          // the old connector did not stop: binary not replaced
constexpr int k_update_rolled_back = 3;     // the new binary failed; the old one runs again
constexpr int k_update_rollback_failed = 4; // the old one did not come back either

struct update_options {
    std::string state_dir;
    std::string package_dir;
    std::string pubkey_path;
    std::string install_path;      // empty: the running connector's executable (run.json exe)
    std::string log_path;          // the started connector's output; empty: DIR/connector.log
    uint32_t deadline_s = 60;      // a started binary must bring a tunnel up within this
    uint32_t drain_timeout_s = 45; // the old connector must exit within this after SIGTERM
    // Ask the relay for the group's update turn after staging, before draining (UPDATE.md
    // "Turns"); refused (nothing touched) without one within turn_timeout_s.
    bool turn = true;
    uint32_t turn_timeout_s = 600;
    // Download the package the relay serves instead of package_dir (into DIR/update-download).
    bool from_relay = false;
    std::string relay_enroll; // the relay's enrollment listener; empty: DIR/relay.json's
    // A supervisor (systemd, Restart=always) starts every connector: install first, then have it
    // restart the connector (restart_cmd, else SIGTERM) and watch run.json for the pid it starts;
    // never fork one (UPDATE.md, "Under systemd").
    bool supervised = false;
    std::string restart_cmd; // run by /bin/sh -c; empty: SIGTERM to run.json's pid
};
int run_update(const update_options& o);

} // namespace apprelay::connector
