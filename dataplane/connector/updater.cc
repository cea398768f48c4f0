// The update sequence (UPDATE.md), one step per log event:
//   verified -> staged (PATH.new written, fsync) -> draining (SIGTERM to run.json's pid)
//   -> drained -> installed (PATH.prev = old, rename PATH.new -> PATH, fsync dir)
//   -> started (fork/exec with run.json's args) -> update_applied (tunnels_up > 0 in the stats
//   file written by the new pid, with the manifest's version)
// and on a failure after `installed`: update_failed -> rolling_back (stop the new process,
// rename PATH.prev -> PATH) -> started -> rolled_back (the old version has a tunnel again).
// Nothing before `draining` changes the running connector; a refusal removes PATH.new.
#include "dataplane/connector/updater.hh"

#include "dataplane/base/log.hh"
#include "dataplane/connector/package.hh"
#include "tls/ca.hh"
#include "tls/sign.hh"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace apprelay::connector {

namespace {

using clock = std::chrono::steady_clock;

// Poll periods of the bounded waits below (a stats file is rewritten every 200 ms).
constexpr auto k_poll = std::chrono::milliseconds(50);
// A started process that fails is stopped with SIGTERM, then SIGKILL after this long.
constexpr auto k_stop_grace = std::chrono::seconds(5);

void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

bool slurp(const std::string& path, std::string* out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        return false;
    }
    out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return !f.bad();
}

// Writes `data` to `path` (created with `mode`) and fsyncs it.
bool write_synced(const std::string& path, std::string_view data, mode_t mode, std::string* why) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        set_why(why, "cannot create " + path + ": " + std::strerror(errno));
        return false;
    }
    std::size_t off = 0;
    while (off < data.size()) {
        ssize_t n = ::write(fd, data.data() + off, data.size() - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            set_why(why, "cannot write " + path + ": " + std::strerror(errno));
            ::close(fd);
            return false;
        }
        off += std::size_t(n);
    }
    // The mode argument of open() is filtered by the umask; an executable must be executable.
    bool ok = ::fchmod(fd, mode) == 0 && ::fsync(fd) == 0;
    if (!ok) {
        set_why(why, "cannot fsync " + path + ": " + std::strerror(errno));
    }
    ::close(fd);
    return ok;
}

std::string dir_of(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

// A rename is durable once its directory is synced.
void sync_dir(const std::string& path) {
    int fd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

// The process `pid` is the connector run.json describes: alive (not a zombie) and running with
// the recorded arguments (a recycled pid runs something else).
bool is_recorded_connector(const run_record& r) {
    if (r.pid <= 0) {
        return false;
    }
    std::string stat;
    if (!slurp("/proc/" + std::to_string(r.pid) + "/stat", &stat)) {
        return false;
    }
    auto paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z') {
        return false;
    }
    std::string cmdline;
    if (!slurp("/proc/" + std::to_string(r.pid) + "/cmdline", &cmdline)) {
        return false;
    }
    std::vector<std::string> argv;
    std::size_t start = 0;
    for (std::size_t i = 0; i < cmdline.size(); ++i) {
        if (cmdline[i] == '\0') {
            argv.push_back(cmdline.substr(start, i - start));
            start = i + 1;
        }
    }
    return argv.size() == r.args.size() + 1 &&
           std::equal(r.args.begin(), r.args.end(), argv.begin() + 1);
}

// Starts `exe` with the recorded args and cwd in its own session, output appended to `log_path`.
// Returns the pid, or 0 (and *why) when fork fails; exec and chdir failures show as exit codes 127
// and 126.
pid_t spawn(const std::string& exe, const run_record& rec, const std::string& log_path,
            std::string* why) {
    const auto& args = rec.args;
    int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (out < 0) {
        set_why(why, "cannot open " + log_path + ": " + std::strerror(errno));
        return 0;
    }
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(exe.c_str()));
    for (const auto& a : args) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
        // Child: only async-signal-safe calls until exec.
        ::setsid();
        if (!rec.cwd.empty() && ::chdir(rec.cwd.c_str()) != 0) {
            ::_exit(126);
        }
        int in = ::open("/dev/null", O_RDONLY);
        ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(out, 2);
        ::close_range(3, ~0U, 0);
        ::execv(exe.c_str(), argv.data());
        ::_exit(127);
    }
    ::close(out);
    if (pid < 0) {
        set_why(why, std::string("fork failed: ") + std::strerror(errno));
        return 0;
    }
    return pid;
}

// Stops our child `pid`, still running and not reaped: SIGTERM, SIGKILL after k_stop_grace,
// reaped.
void stop_child(pid_t pid) {
    ::kill(pid, SIGTERM);
    auto end = clock::now() + k_stop_grace;
    while (clock::now() < end) {
        pid_t r = ::waitpid(pid, nullptr, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) {
            return;
        }
        std::this_thread::sleep_for(k_poll);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
}

// Waits until the stats file is written by `pid` with tunnels_up > 0 and version `version`.
// False (and *why) when the child exits (then reaped: *exited), reports another version, or the
// deadline passes.
bool wait_tunnel(pid_t pid, const std::string& stats_file, const std::string& version,
                 uint32_t deadline_s, bool* exited, std::string* why) {
    *exited = false;
    auto t0 = clock::now();
    auto end = t0 + std::chrono::seconds(deadline_s);
    auto ms = [&] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0).count();
    };
    while (clock::now() < end) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            *exited = true;
            set_why(why, "pid " + std::to_string(pid) + " exited (" +
                             (WIFEXITED(status) ? "code " + std::to_string(WEXITSTATUS(status))
                                                : "signal " + std::to_string(WTERMSIG(status))) +
                             ") " + std::to_string(ms()) + " ms after start");
            return false;
        }
        std::string text;
        if (slurp(stats_file, &text)) {
            auto j = nlohmann::json::parse(text, nullptr, false);
            if (j.is_object() && j.value("pid", int64_t(0)) == pid &&
                j.value("tunnels_up", uint64_t(0)) > 0) {
                std::string reported = j.value("version", std::string());
                if (reported != version) {
                    set_why(why, "pid " + std::to_string(pid) + " reports version " + reported +
                                     ", expected " + version);
                    return false;
                }
                log::info("tunnel_up", {{"pid", pid},
                                        {"tunnels", j.value("tunnels_up", uint64_t(0))},
                                        {"version", reported},
                                        {"after_ms", ms()}});
                return true;
            }
        }
        std::this_thread::sleep_for(k_poll);
    }
    set_why(why, "pid " + std::to_string(pid) + " brought no tunnel up within " +
                     std::to_string(deadline_s) + " s");
    return false;
}

int refuse(const std::string& why) {
    log::error("update_refused", {{"reason", why}});
    std::fprintf(stderr, "update refused: %s\n", why.c_str());
    return k_update_refused;
}

} // namespace

std::string connector_version() {
    const char* v = std::getenv("APPRELAY_CONNECTOR_VERSION_OVERRIDE");
    return v != nullptr && *v != '\0' ? std::string(v) : std::string(APPRELAY_VERSION);
}

result<void> write_run_record(const std::string& state_dir, const run_record& r, std::string* why) {
    nlohmann::json j = {{"pid", r.pid},
                        {"exe", r.exe},
                        {"args", r.args},
                        {"version", r.version},
                        {"stats_file", r.stats_file},
                        {"cwd", r.cwd}};
    std::string path = state_dir + "/run.json";
    std::string tmp = path + ".tmp";
    if (!write_synced(tmp, j.dump() + "\n", 0600, why) ||
        std::rename(tmp.c_str(), path.c_str()) != 0) {
        set_why(why, "cannot write " + path);
        return errc::io_error;
    }
    return {};
}

result<void> record_this_run(const std::string& state_dir, std::vector<std::string> args,
                             const std::string& version, const std::string& stats_file,
                             std::string* why) {
    char buf[4096];
    run_record r;
    r.pid = int(::getpid());
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    r.exe.assign(buf, n > 0 ? std::size_t(n) : 0);
    if (::getcwd(buf, sizeof(buf)) != nullptr) {
        r.cwd = buf;
    }
    r.args = std::move(args);
    r.version = version;
    r.stats_file = stats_file;
    return write_run_record(state_dir, r, why);
}

result<run_record> read_run_record(const std::string& state_dir, std::string* why) {
    std::string path = state_dir + "/run.json";
    std::string text;
    if (!slurp(path, &text)) {
        set_why(why, "no " + path + ": no connector has run from this state directory");
        return errc::not_found;
    }
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_object() || !j.contains("pid") || !j["pid"].is_number_integer() ||
        !j.contains("args") || !j["args"].is_array() || !j.contains("stats_file") ||
        !j["stats_file"].is_string()) {
        set_why(why, path + " is malformed");
        return errc::protocol_error;
    }
    run_record r;
    r.pid = j["pid"].get<int>();
    r.exe = j.value("exe", std::string());
    r.version = j.value("version", std::string());
    r.stats_file = j["stats_file"].get<std::string>();
    r.cwd = j.value("cwd", std::string());
    for (const auto& a : j["args"]) {
        if (!a.is_string()) {
            set_why(why, path + ": args must be strings");
            return errc::protocol_error;
        }
        r.args.push_back(a.get<std::string>());
    }
    return r;
}

int run_update_sign(const sign_options& o) {
    std::string key;
    std::string binary;
    if (!slurp(o.key_path, &key)) {
        std::fprintf(stderr, "cannot read key %s\n", o.key_path.c_str());
        return 1;
    }
    if (!slurp(o.binary_path, &binary) || binary.empty()) {
        std::fprintf(stderr, "cannot read binary %s (or it is empty)\n", o.binary_path.c_str());
        return 1;
    }
    manifest m;
    m.version = o.version;
    m.arch = o.arch.empty() ? host_arch() : normalize_arch(o.arch);
    m.size = binary.size();
    m.sha256 = tls::sha256_hex(binary);
    std::string text = manifest_text(m);
    std::string why;
    auto sig = tls::ed25519_sign(key, text, &why);
    if (!sig.ok()) {
        std::fprintf(stderr, "cannot sign with %s: %s\n", o.key_path.c_str(), why.c_str());
        return 1;
    }
    if (::mkdir(o.out_dir.c_str(), 0755) != 0 && errno != EEXIST) {
        std::fprintf(stderr, "cannot create %s: %s\n", o.out_dir.c_str(), std::strerror(errno));
        return 1;
    }
    auto in = [&](std::string_view name) { return o.out_dir + "/" + std::string(name); };
    if (!write_synced(in(k_binary_file), binary, 0755, &why) ||
        !write_synced(in(k_manifest_file), text, 0644, &why) ||
        !write_synced(in(k_signature_file), *sig, 0644, &why)) {
        std::fprintf(stderr, "%s\n", why.c_str());
        return 1;
    }
    std::printf("signed %s %s for %s (sha256 %s) into %s\n", m.name.c_str(), m.version.c_str(),
                m.arch.c_str(), m.sha256.c_str(), o.out_dir.c_str());
    return 0;
}

int run_update_keygen(const std::string& out_dir) {
    std::string why;
    auto keys = tls::ed25519_generate(&why);
    if (!keys.ok() ||
        !tls::write_pem_file(out_dir + "/update-key.pem", keys->private_pem, true, &why).ok() ||
        !tls::write_pem_file(out_dir + "/update-pub.pem", keys->public_pem, false, &why).ok()) {
        std::fprintf(stderr, "%s\n", why.c_str());
        return 1;
    }
    std::printf("wrote %s/update-key.pem (keep it offline) and %s/update-pub.pem\n",
                out_dir.c_str(), out_dir.c_str());
    return 0;
}

int run_update(const update_options& o) {
    log::set_component("updater");
    std::string why;
    auto rec = read_run_record(o.state_dir, &why);
    if (!rec.ok()) {
        return refuse(why);
    }
    std::string pub;
    if (!slurp(o.pubkey_path, &pub)) {
        return refuse("cannot read the update public key " + o.pubkey_path);
    }
    const bool running = is_recorded_connector(*rec);
    auto m = verify_package(read_package(o.package_dir), pub,
                            package_expect{host_arch(), rec->version}, &why);
    if (!m.ok()) {
        return refuse(why);
    }
    const std::string install = o.install_path.empty() ? rec->exe : o.install_path;
    struct stat st {};
    if (install.empty() || ::stat(install.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return refuse("no connector binary at " + (install.empty() ? "(unknown)" : install) +
                      " to replace");
    }
    log::info("verified", {{"version", m->version},
                           {"from", rec->version},
                           {"arch", m->arch},
                           {"sha256", m->sha256},
                           {"install", install}});
    // Stage the new binary next to the old one before anything stops, so a full disk or a
    // read-only directory refuses the update with the connector still serving.
    std::string binary;
    const std::string staged = install + ".new";
    const std::string prev = install + ".prev";
    if (!slurp(o.package_dir + "/" + std::string(k_binary_file), &binary) ||
        tls::sha256_hex(binary) != m->sha256) {
        return refuse("the package's binary changed while it was verified");
    }
    if (!write_synced(staged, binary, 0755, &why)) {
        ::unlink(staged.c_str());
        return refuse(why);
    }
    log::info("staged", {{"path", staged}});

    auto t_drain = clock::now();
    if (running) {
        log::info("draining", {{"pid", rec->pid}, {"timeout_s", o.drain_timeout_s}});
        ::kill(rec->pid, SIGTERM);
        auto end = t_drain + std::chrono::seconds(o.drain_timeout_s);
        while (is_recorded_connector(*rec) && clock::now() < end) {
            std::this_thread::sleep_for(k_poll);
        }
        if (is_recorded_connector(*rec)) {
            ::unlink(staged.c_str());
            log::error("update_failed", {{"reason", "connector did not exit after SIGTERM"},
                                         {"pid", rec->pid},
                                         {"timeout_s", o.drain_timeout_s}});
            std::fprintf(stderr,
                         "update failed: connector pid %d did not exit within %u s of "
                         "SIGTERM; binary not replaced\n",
                         rec->pid, o.drain_timeout_s);
            return k_update_failed;
        }
        log::info("drained", {{"pid", rec->pid},
                              {"after_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                               clock::now() - t_drain)
                                               .count()}});
    } else {
        log::info("not_running", {{"pid", rec->pid}, {"reason", "run.json's process is gone"}});
    }

    // PATH.prev is a second name for the old inode; the rename swaps PATH in one step.
    ::unlink(prev.c_str());
    if (::link(install.c_str(), prev.c_str()) != 0) {
        std::string old;
        if (!slurp(install, &old) || !write_synced(prev, old, st.st_mode & 07777, &why)) {
            ::unlink(staged.c_str());
            log::error("update_failed", {{"reason", "cannot keep the old binary"}, {"why", why}});
            std::fprintf(stderr, "update failed: cannot keep %s: %s\n", prev.c_str(), why.c_str());
            return k_update_failed;
        }
    }
    if (std::rename(staged.c_str(), install.c_str()) != 0) {
        ::unlink(staged.c_str());
        std::fprintf(stderr, "update failed: rename %s: %s\n", staged.c_str(),
                     std::strerror(errno));
        return k_update_failed;
    }
    sync_dir(install);
    log::info("installed", {{"path", install}, {"prev", prev}, {"version", m->version}});

    const std::string log_path = o.log_path.empty() ? o.state_dir + "/connector.log" : o.log_path;
    pid_t child = spawn(install, *rec, log_path, &why);
    if (child > 0) {
        log::info("started", {{"pid", child}, {"version", m->version}, {"log", log_path}});
        bool exited = false;
        if (wait_tunnel(child, rec->stats_file, m->version, o.deadline_s, &exited, &why)) {
            log::info("update_applied", {{"pid", child}, {"version", m->version}});
            std::printf("updated to %s: pid %d has a tunnel up\n", m->version.c_str(), int(child));
            return k_update_applied;
        }
        log::error("update_failed", {{"reason", why}, {"version", m->version}});
        if (!exited) {
            stop_child(child);
        }
    } else {
        log::error("update_failed", {{"reason", why}});
    }
    std::fprintf(stderr, "update failed: %s; rolling back to %s\n", why.c_str(),
                 rec->version.c_str());
    log::info("rolling_back", {{"path", install}, {"to", rec->version}});
    if (std::rename(prev.c_str(), install.c_str()) != 0) {
        std::fprintf(stderr, "rollback failed: rename %s: %s\n", prev.c_str(),
                     std::strerror(errno));
        return k_update_rollback_failed;
    }
    sync_dir(install);
    child = spawn(install, *rec, log_path, &why);
    if (child > 0) {
        log::info("started", {{"pid", child}, {"version", rec->version}, {"log", log_path}});
        bool exited = false;
        if (wait_tunnel(child, rec->stats_file, rec->version, o.deadline_s, &exited, &why)) {
            log::info("rolled_back", {{"pid", child}, {"version", rec->version}});
            std::fprintf(stderr, "rolled back: %s runs again as pid %d\n", rec->version.c_str(),
                         int(child));
            return k_update_rolled_back;
        }
        if (!exited) {
            stop_child(child);
        }
    }
    log::error("rollback_failed", {{"reason", why}});
    std::fprintf(stderr, "rollback failed: %s\n", why.c_str());
    return k_update_rollback_failed;
}

} // namespace apprelay::connector
