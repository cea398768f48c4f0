// apprelay-connector: argument parsing and signal wiring only (agent.cc does the work).
#include "dataplane/base/log.hh"
#include "dataplane/connector/agent.hh"
#include "dataplane/connector/enroll.hh"
#include "dataplane/connector/fleet.hh"
#include "dataplane/connector/status_http.hh"
#include "dataplane/connector/updater.hh"

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) {
    g_stop.store(true);
}
} // namespace

int main(int argc, char** argv) {
    CLI::App app{"apprelay-connector: outbound-only connector agent"};
    app.require_subcommand(1);
    apprelay::connector::agent_options o;
    o.version = apprelay::connector::connector_version();
    std::string level_name = "info";
    auto* run = app.add_subcommand("run", "keep tunnels to the relay and serve streams");
    std::string state_dir;
    auto* state_opt = run->add_option("--state-dir", state_dir,
                                      "directory written by `register` (replaces "
                                      "--relay --cert --key --ca --id --server-name)");
    // Without --state-dir every identity flag is needed; with it, none may be given.
    for (auto* opt : {run->add_option("--relay", o.relay, "relay tunnel listener HOST:PORT"),
                      run->add_option("--cert", o.cert_path, "connector certificate (PEM)"),
                      run->add_option("--key", o.key_path, "connector private key (PEM)"),
                      run->add_option("--ca", o.ca_path, "relay CA certificate (PEM)"),
                      run->add_option("--id", o.id, "connector id (as registered at the relay)")}) {
        opt->excludes(state_opt);
    }
    run->add_option("--server-name", o.server_name, "relay certificate name to verify")
        ->excludes(state_opt);
    run->add_option(
        "--stats-file", o.stats_file,
        "rewrite counters JSON every 200 ms (default with --state-dir: DIR/stats.json)");
    run->add_option("--metrics-listen", o.metrics_listen,
                    "serve GET /metrics and /status on HOST:PORT (e.g. 127.0.0.1:9464)");
    run->add_option("--backoff-base-ms", o.backoff_base_ms, "reconnect backoff base");
    run->add_option("--backoff-cap-ms", o.backoff_cap_ms, "reconnect backoff cap");
    run->add_option("--io-coalesce-us", o.io_coalesce_us,
                    "after waking for one event, wait this long for more (0 = off)")
        ->check(CLI::Range(0u, 1000u));
    run->add_option("--core-map", o.core_map,
                    "control=CPU,workers=LIST[,shared=1]: one pinned loop per worker cpu");
    run->add_option("--log-level", level_name, "debug|info|warn|error")
        ->check(CLI::IsMember({"debug", "info", "warn", "error"}));

    apprelay::connector::register_options reg;
    reg.version = o.version;
    auto* enroll = app.add_subcommand("register", "enroll with a relay using a one-time token");
    enroll->add_option("--relay", reg.relay, "relay enrollment listener HOST:PORT")->required();
    enroll->add_option("--token", reg.token, "enrollment token (art1....)")->required();
    enroll->add_option("--state-dir", reg.state_dir, "where to write key, certificates, relay")
        ->required();
    enroll->add_option("--name", reg.name, "connector name shown by the relay (default: hostname)");

    std::string status_addr = "127.0.0.1:9464";
    bool status_json = false;
    auto* status = app.add_subcommand("status", "show a running connector's state");
    status->add_option("--metrics", status_addr, "the connector's --metrics-listen HOST:PORT");
    status->add_flag("--json", status_json, "print the JSON as is");

    apprelay::connector::sign_options sign;
    auto* sign_cmd = app.add_subcommand("update-sign", "build a signed update package (UPDATE.md)");
    sign_cmd->add_option("--key", sign.key_path, "Ed25519 private key (PEM)")->required();
    sign_cmd->add_option("--binary", sign.binary_path, "the new connector binary")->required();
    sign_cmd->add_option("--version", sign.version, "its version (dotted numbers)")->required();
    sign_cmd->add_option("--arch", sign.arch, "its architecture (default: this host's)");
    sign_cmd->add_option("--out", sign.out_dir, "package directory to write")->required();

    std::string keygen_dir;
    auto* keygen = app.add_subcommand("update-keygen", "make an Ed25519 update signing key pair");
    keygen->add_option("--out", keygen_dir, "directory for update-key.pem and update-pub.pem")
        ->required();

    apprelay::connector::update_options upd;
    auto* update = app.add_subcommand(
        "update", "verify a signed package and swap it in under the running connector");
    update->add_option("--state-dir", upd.state_dir, "the running connector's --state-dir")
        ->required();
    auto* pkg_opt =
        update->add_option("--package", upd.package_dir, "package directory (update-sign --out)");
    auto* from_relay = update->add_flag(
        "--from-relay", upd.from_relay,
        "download the package the relay serves ([connectors] update_package) instead");
    pkg_opt->excludes(from_relay);
    bool no_turn = false;
    update->add_flag("--no-turn", no_turn,
                     "do not ask the relay for the group's update turn (UPDATE.md \"Turns\")");
    update
        ->add_option("--turn-timeout-s", upd.turn_timeout_s,
                     "refuse the update (touching nothing) without a turn within this")
        ->check(CLI::Range(1u, 24u * 3600u));
    update->add_option("--relay-enroll", upd.relay_enroll,
                       "the relay's enrollment listener HOST:PORT (default: DIR/relay.json's)");
    update->add_option("--pubkey", upd.pubkey_path, "Ed25519 public key (PEM) that signs packages")
        ->required();
    update->add_option("--install", upd.install_path,
                       "binary to replace (default: the running connector's executable)");
    update
        ->add_option("--deadline-s", upd.deadline_s,
                     "the new binary must bring a tunnel up within this, else roll back")
        ->check(CLI::Range(1u, 3600u));
    update
        ->add_option("--drain-timeout-s", upd.drain_timeout_s,
                     "the old connector must exit within this after SIGTERM")
        ->check(CLI::Range(1u, 3600u));
    update->add_option("--log", upd.log_path,
                       "output of the started connector (default: DIR/connector.log; not "
                       "with --supervised)");
    update->add_flag("--supervised", upd.supervised,
                     "a supervisor (systemd Restart=always) starts the connector: install, "
                     "restart it, watch run.json for the new pid; never start one");
    update
        ->add_option("--restart-cmd", upd.restart_cmd,
                     "with --supervised: shell command that restarts the connector (e.g. "
                     "\"systemctl restart apprelay-connector@NAME\"); default: SIGTERM")
        ->needs("--supervised");

    app.set_version_flag("--version", o.version);
    CLI11_PARSE(app, argc, argv);
    if (sign_cmd->parsed()) {
        return apprelay::connector::run_update_sign(sign);
    }
    if (keygen->parsed()) {
        return apprelay::connector::run_update_keygen(keygen_dir);
    }
    if (update->parsed()) {
        upd.turn = !no_turn;
        if (upd.package_dir.empty() && !upd.from_relay) {
            std::fprintf(stderr, "update: give --package DIR or --from-relay\n");
            return 2;
        }
        return apprelay::connector::run_update(upd);
    }
    if (status->parsed()) {
        return apprelay::connector::print_status(status_addr, status_json);
    }
    if (enroll->parsed()) {
        std::string why;
        auto done = apprelay::connector::register_connector(reg, &why);
        if (!done.ok()) {
            std::fprintf(stderr, "%s\n", why.c_str());
            return done.code() == apprelay::errc::refused ? 1 : 2;
        }
        std::printf("registered connector %s in group %s of tenant %s\n",
                    done->connector_id.c_str(), done->group.c_str(), done->tenant.c_str());
        return 0;
    }
    if (!state_dir.empty()) {
        std::string why;
        auto st = apprelay::connector::load_state(state_dir, &why);
        if (!st.ok()) {
            std::fprintf(stderr, "%s\n", why.c_str());
            return 2;
        }
        o.relay = st->relay;
        o.relays = st->relays;
        o.server_name = st->server_name;
        o.cert_path = st->cert_path;
        o.key_path = st->key_path;
        o.ca_path = st->ca_path;
        o.id = st->connector_id;
        if (o.stats_file.empty()) {
            o.stats_file = state_dir + "/stats.json";
        }
        // What `update` needs to drain this process and start its successor the same way.
        if (!apprelay::connector::record_this_run(state_dir, {argv + 1, argv + argc}, o.version,
                                                  o.stats_file, &why)
                 .ok()) {
            std::fprintf(stderr, "warning: %s (updates cannot find this connector)\n", why.c_str());
        }
    } else if (o.relay.empty() || o.cert_path.empty() || o.key_path.empty() || o.ca_path.empty() ||
               o.id.empty()) {
        std::fprintf(stderr, "run needs --state-dir, or all of --relay --cert --key --ca --id\n");
        return 2;
    }
    using apprelay::log::level;
    apprelay::log::set_level(level_name == "debug"   ? level::debug
                             : level_name == "warn"  ? level::warn
                             : level_name == "error" ? level::error
                                                     : level::info);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    if (o.relays.size() >= 2) {
        return apprelay::connector::run_fleet(o, g_stop); // tunnels to two relay hosts
    }
    return apprelay::connector::run_agent(o, g_stop);
}
