// The update sequence (UPDATE.md), one step per log event:
//   verified -> staged (PATH.new written, fsync) -> draining (SIGTERM to run.json's pid)
//   -> drained -> installed (PATH.prev = old, rename PATH.new -> PATH, fsync dir)
//   -> started (fork/exec with run.json's args) -> update_applied (tunnels_up > 0 in the stats
//   file written by the new pid, with the manifest's version)
// and on a failure after `installed`: update_failed -> rolling_back (stop the new process,
// rename PATH.prev -> PATH) -> started -> rolled_back (the old version has a tunnel again).
// Nothing before `draining` changes the running connector; a refusal removes PATH.new.
// Supervised (--supervised: systemd's Restart=always starts every connector, the updater never
// forks one), `installed` comes first and `started` is the pid the supervisor started:
//   verified -> staged -> installed -> draining (restart_cmd, else SIGTERM) -> drained
//   -> started (run.json names a new pid) -> tunnel_up -> update_applied
// and on a failure: update_failed -> rolling_back (rename PATH.prev -> PATH, restart the same
// way) -> started -> rolled_back. A connector that does not exit puts PATH.prev back (exit 2).
#include "dataplane/connector/updater.hh"

#include "dataplane/base/log.hh"
#include "dataplane/connector/package.hh"
#include "dataplane/connector/relay_update.hh"
#include "tls/ca.hh"
#include "tls/sign.hh"

#include <algorithm>
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

// True once the process `r` describes is gone (or was not running) by `end`; polled through
// /proc, since it is not our child.
bool wait_gone(const run_record& r, clock::time_point end) {
    while (is_recorded_connector(r) && clock::now() < end) {
        std::this_thread::sleep_for(k_poll);
    }
    return !is_recorded_connector(r);
}

long long ms_since(clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0).count();
}

// The parent of `pid` (/proc/PID/stat's 4th field), or 0.
int parent_of(int pid) {
    std::string stat;
    if (!slurp("/proc/" + std::to_string(pid) + "/stat", &stat)) {
        return 0;
    }
    auto paren = stat.rfind(')');
    return paren == std::string::npos ? 0 : std::atoi(stat.c_str() + paren + 4);
}

// The connector wait_tunnel waits for: our child `pid` (waitpid tells how it exited), or, with
// a non-empty `state_dir` (supervised), the first pid DIR/run.json names that is not one of
// `replaced` and runs the recorded command: the supervisor started it. Found, it is logged
// `started` and watched through /proc (`rec`: its record).
struct successor {
    pid_t pid = 0;
    std::string stats_file;
    std::string state_dir;
    std::vector<int> replaced;
    run_record rec;
};

// Supervised: looks for the successor in run.json once; true when found.
bool find_successor(successor* s, const std::string& version) {
    auto r = read_run_record(s->state_dir, nullptr);
    if (!r.ok() || std::find(s->replaced.begin(), s->replaced.end(), r->pid) != s->replaced.end() ||
        !is_recorded_connector(*r)) {
        return false;
    }
    s->pid = r->pid;
    s->stats_file = r->stats_file;
    s->rec = std::move(*r);
    log::info("started", {{"pid", s->pid},
                          {"version", version},
                          {"supervised", true},
                          {"parent", parent_of(s->pid)}});
    return true;
}

// Waits until the stats file is written by the successor with tunnels_up > 0 and version
// `version`. False (and *why) when it exits (a child is then reaped: *exited), reports another
// version, or the deadline passes (supervised: also when no new pid recorded itself by then).
bool wait_tunnel(successor* s, const std::string& version, uint32_t deadline_s, bool* exited,
                 std::string* why) {
    *exited = false;
    const bool supervised = !s->state_dir.empty();
    auto t0 = clock::now();
    auto end = t0 + std::chrono::seconds(deadline_s);
    while (clock::now() < end) {
        int status = 0;
        if (!supervised && ::waitpid(s->pid, &status, WNOHANG) == s->pid) {
            *exited = true;
            set_why(why, "pid " + std::to_string(s->pid) + " exited (" +
                             (WIFEXITED(status) ? "code " + std::to_string(WEXITSTATUS(status))
                                                : "signal " + std::to_string(WTERMSIG(status))) +
                             ") " + std::to_string(ms_since(t0)) + " ms after start");
            return false;
        }
        if (supervised && s->pid == 0 && !find_successor(s, version)) {
            std::this_thread::sleep_for(k_poll);
            continue;
        }
        if (supervised && !is_recorded_connector(s->rec)) {
            *exited = true;
            set_why(why, "pid " + std::to_string(s->pid) + " (started by the supervisor) exited " +
                             std::to_string(ms_since(t0)) + " ms after the restart");
            return false;
        }
        std::string text;
        if (slurp(s->stats_file, &text)) {
            auto j = nlohmann::json::parse(text, nullptr, false);
            if (j.is_object() && j.value("pid", int64_t(0)) == s->pid &&
                j.value("tunnels_up", uint64_t(0)) > 0) {
                std::string reported = j.value("version", std::string());
                if (reported != version) {
                    set_why(why, "pid " + std::to_string(s->pid) + " reports version " + reported +
                                     ", expected " + version);
                    return false;
                }
                log::info("tunnel_up", {{"pid", s->pid},
                                        {"tunnels", j.value("tunnels_up", uint64_t(0))},
                                        {"version", reported},
                                        {"after_ms", ms_since(t0)}});
                return true;
            }
        }
        std::this_thread::sleep_for(k_poll);
    }
    if (s->pid == 0) {
        set_why(why, "no new connector recorded itself in " + s->state_dir + "/run.json within " +
                         std::to_string(deadline_s) + " s");
    } else {
        set_why(why, "pid " + std::to_string(s->pid) + " brought no tunnel up within " +
                         std::to_string(deadline_s) + " s");
    }
    return false;
}

int refuse(const std::string& why) {
    log::error("update_refused", {{"reason", why}});
    std::fprintf(stderr, "update refused: %s\n", why.c_str());
    return k_update_refused;
}

// One swap: PATH, PATH.new (staged, fsynced), PATH.prev, and PATH's mode.
struct swap_paths {
    std::string install;
    std::string staged;
    std::string prev;
    mode_t mode = 0;
};

// `installed`: PATH.prev is a second name for the old inode; the rename swaps PATH in one step.
// False (PATH.new removed, message on stderr) when either fails.
bool install_staged(const swap_paths& p, const std::string& version) {
    std::string why;
    ::unlink(p.prev.c_str());
    if (::link(p.install.c_str(), p.prev.c_str()) != 0) {
        std::string old;
        if (!slurp(p.install, &old) || !write_synced(p.prev, old, p.mode & 07777, &why)) {
            ::unlink(p.staged.c_str());
            log::error("update_failed", {{"reason", "cannot keep the old binary"}, {"why", why}});
            std::fprintf(stderr, "update failed: cannot keep %s: %s\n", p.prev.c_str(),
                         why.c_str());
            return false;
        }
    }
    if (std::rename(p.staged.c_str(), p.install.c_str()) != 0) {
        ::unlink(p.staged.c_str());
        std::fprintf(stderr, "update failed: rename %s: %s\n", p.staged.c_str(),
                     std::strerror(errno));
        return false;
    }
    sync_dir(p.install);
    log::info("installed", {{"path", p.install}, {"prev", p.prev}, {"version", version}});
    return true;
}

// rename(PATH.prev, PATH): the old binary byte for byte. False (and *why) when it fails.
bool restore_prev(const swap_paths& p, std::string* why) {
    if (std::rename(p.prev.c_str(), p.install.c_str()) != 0) {
        set_why(why, "rename " + p.prev + ": " + std::strerror(errno));
        return false;
    }
    sync_dir(p.install);
    return true;
}

// Runs `cmd` with /bin/sh -c in its own process group (stdout onto stderr: stdout carries the
// updater's result line) for at most `limit`, then kills the group; logs `restart_cmd`. True
// when it exited 0; otherwise *why names how it ended.
bool run_restart_cmd(const std::string& cmd, std::chrono::seconds limit, std::string* why) {
    auto t0 = clock::now();
    pid_t pid = ::fork();
    if (pid == 0) {
        // Child: only async-signal-safe calls until exec.
        ::setpgid(0, 0);
        int in = ::open("/dev/null", O_RDONLY);
        ::dup2(in, 0);
        ::dup2(2, 1);
        ::close_range(3, ~0U, 0);
        ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    if (pid < 0) {
        set_why(why, std::string("cannot run the restart command: fork failed: ") +
                         std::strerror(errno));
        return false;
    }
    ::setpgid(pid, pid); // also here: the kill below must reach the group even if it ran first
    int status = 0;
    pid_t r = 0;
    while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 && clock::now() < t0 + limit) {
        std::this_thread::sleep_for(k_poll);
    }
    if (r == 0) {
        ::kill(-pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        log::error("restart_cmd", {{"cmd", cmd}, {"timeout_s", int64_t(limit.count())}});
        set_why(why, "restart command `" + cmd + "` still ran after " +
                         std::to_string(limit.count()) + " s (killed)");
        return false;
    }
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    std::string how = WIFEXITED(status) ? "code " + std::to_string(WEXITSTATUS(status))
                                        : "signal " + std::to_string(WTERMSIG(status));
    if (ok) {
        log::info("restart_cmd", {{"cmd", cmd}, {"exit", how}, {"after_ms", ms_since(t0)}});
    } else {
        log::warn("restart_cmd", {{"cmd", cmd}, {"exit", how}, {"after_ms", ms_since(t0)}});
        set_why(why, "restart command `" + cmd + "` exited (" + how + ")");
    }
    return ok;
}

// Has the supervisor replace the connector `r` (nullptr: none runs): the restart command, else
// SIGTERM to r's pid once /proc shows the recorded command (Restart=always starts PATH again
// after any exit). False (and *why) when the restart command failed.
bool request_restart(const update_options& o, const run_record* r, std::string* why) {
    if (!o.restart_cmd.empty()) {
        return run_restart_cmd(o.restart_cmd,
                               std::chrono::seconds(o.drain_timeout_s) + k_stop_grace, why);
    }
    if (r != nullptr && is_recorded_connector(*r)) {
        ::kill(r->pid, SIGTERM);
    }
    return true;
}

// --supervised, after `staged` (see the top of the file): install, have the supervisor restart
// the connector, watch run.json for the pid it starts; roll back the same way.
int update_supervised(const update_options& o, const run_record& rec, const manifest& m,
                      const swap_paths& p) {
    if (!install_staged(p, m.version)) {
        return k_update_failed;
    }
    std::string why;
    const std::string via = o.restart_cmd.empty() ? "SIGTERM" : "restart_cmd";
    auto t_drain = clock::now();
    if (is_recorded_connector(rec)) {
        log::info("draining", {{"pid", rec.pid},
                               {"timeout_s", o.drain_timeout_s},
                               {"supervised", true},
                               {"via", via}});
        bool asked = request_restart(o, &rec, &why);
        bool gone = asked ? wait_gone(rec, t_drain + std::chrono::seconds(o.drain_timeout_s))
                          : !is_recorded_connector(rec);
        if (!gone) {
            // It runs on, with the old code: PATH names the old binary again, as before.
            std::string reason = asked ? "connector pid " + std::to_string(rec.pid) +
                                             " did not exit within " +
                                             std::to_string(o.drain_timeout_s) + " s of " +
                                             (o.restart_cmd.empty() ? "SIGTERM" : "the restart")
                                       : why;
            std::string undo;
            bool restored = restore_prev(p, &undo);
            log::error("update_failed", {{"reason", reason},
                                         {"pid", rec.pid},
                                         {"timeout_s", o.drain_timeout_s},
                                         {"restored", restored}});
            std::fprintf(stderr, "update failed: %s; %s\n", reason.c_str(),
                         restored ? "the old binary is back at its path"
                                  : ("the old binary could not be put back: " + undo).c_str());
            return restored ? k_update_failed : k_update_rollback_failed;
        }
        log::info("drained", {{"pid", rec.pid}, {"after_ms", ms_since(t_drain)}});
    } else {
        log::info(
            "not_running",
            {{"pid", rec.pid}, {"reason", "run.json's process is gone"}, {"supervised", true}});
        if (!request_restart(o, nullptr, &why)) {
            log::warn("restart_failed", {{"reason", why}});
        }
    }

    successor next{0, {}, o.state_dir, {rec.pid}, {}};
    bool exited = false;
    if (wait_tunnel(&next, m.version, o.deadline_s, &exited, &why)) {
        log::info("update_applied",
                  {{"pid", next.pid}, {"version", m.version}, {"supervised", true}});
        std::printf("updated to %s: pid %d (started by its supervisor) has a tunnel up\n",
                    m.version.c_str(), int(next.pid));
        return k_update_applied;
    }
    log::error("update_failed", {{"reason", why}, {"version", m.version}});
    std::fprintf(stderr, "update failed: %s; rolling back to %s\n", why.c_str(),
                 rec.version.c_str());
    log::info("rolling_back", {{"path", p.install}, {"to", rec.version}, {"supervised", true}});
    if (!restore_prev(p, &why)) {
        std::fprintf(stderr, "rollback failed: %s\n", why.c_str());
        return k_update_rollback_failed;
    }
    // The failed pid, when one recorded itself and runs, is replaced the same way; one that
    // ignores SIGTERM is killed after k_stop_grace, as a failed child would be. A new binary that
    // never recorded itself is left to the supervisor (or the restart command) to replace.
    const run_record* failed = next.pid != 0 && !exited ? &next.rec : nullptr;
    if (!request_restart(o, failed, &why)) {
        log::warn("restart_failed", {{"reason", why}});
    }
    if (failed != nullptr && !wait_gone(*failed, clock::now() + k_stop_grace)) {
        ::kill(failed->pid, SIGKILL);
    }
    successor back{0, {}, o.state_dir, {rec.pid, next.pid}, {}};
    if (wait_tunnel(&back, rec.version, o.deadline_s, &exited, &why)) {
        log::info("rolled_back",
                  {{"pid", back.pid}, {"version", rec.version}, {"supervised", true}});
        std::fprintf(stderr, "rolled back: %s runs again as pid %d (started by its supervisor)\n",
                     rec.version.c_str(), int(back.pid));
        return k_update_rolled_back;
    }
    log::error("rollback_failed", {{"reason", why}});
    std::fprintf(stderr, "rollback failed: %s\n", why.c_str());
    return k_update_rollback_failed;
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
    // The relay's view of this connector (turns, the package it serves): state dir + override.
    state relay_state;
    const bool ask_relay = o.from_relay || o.turn;
    if (ask_relay) {
        auto sst = load_state(o.state_dir, &why);
        if (!sst.ok()) {
            return refuse(why);
        }
        relay_state = *sst;
        if (!o.relay_enroll.empty()) {
            relay_state.enroll = o.relay_enroll;
        }
    }
    std::string package_dir = o.package_dir;
    if (o.from_relay) {
        package_dir = o.state_dir + "/update-download";
        bool up_to_date = false;
        auto f = fetch_relay_package(relay_state, package_dir, rec->version, &up_to_date, &why);
        if (!f.ok()) {
            return refuse(why);
        }
        if (up_to_date) {
            // Following the relay (a timer runs this): nothing to do is not a failure.
            log::info("up_to_date", {{"version", rec->version}, {"relay_package", *f}});
            std::printf("up to date: the connector runs %s, the relay serves %s\n",
                        rec->version.c_str(), f->c_str());
            return k_update_applied;
        }
    }
    auto m = verify_package(read_package(package_dir), pub,
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
    if (!slurp(package_dir + "/" + std::string(k_binary_file), &binary) ||
        tls::sha256_hex(binary) != m->sha256) {
        return refuse("the package's binary changed while it was verified");
    }
    if (!write_synced(staged, binary, 0755, &why)) {
        ::unlink(staged.c_str());
        return refuse(why);
    }
    log::info("staged", {{"path", staged}});
    if (o.turn) {
        // One connector of a group at a time, granted by the relay (UPDATE.md "Turns").
        if (auto t = wait_for_turn(relay_state, m->version, o.turn_timeout_s, &why); !t.ok()) {
            ::unlink(staged.c_str());
            return refuse(why);
        }
    }

    const swap_paths paths{install, staged, prev, st.st_mode};
    if (o.supervised) {
        return update_supervised(o, *rec, *m, paths);
    }
    auto t_drain = clock::now();
    if (running) {
        log::info("draining", {{"pid", rec->pid}, {"timeout_s", o.drain_timeout_s}});
        ::kill(rec->pid, SIGTERM);
        if (!wait_gone(*rec, t_drain + std::chrono::seconds(o.drain_timeout_s))) {
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

    if (!install_staged(paths, m->version)) {
        return k_update_failed;
    }

    const std::string log_path = o.log_path.empty() ? o.state_dir + "/connector.log" : o.log_path;
    pid_t child = spawn(install, *rec, log_path, &why);
    if (child > 0) {
        log::info("started", {{"pid", child}, {"version", m->version}, {"log", log_path}});
        bool exited = false;
        successor next{child, rec->stats_file, {}, {}, {}};
        if (wait_tunnel(&next, m->version, o.deadline_s, &exited, &why)) {
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
    if (!restore_prev(paths, &why)) {
        std::fprintf(stderr, "rollback failed: %s\n", why.c_str());
        return k_update_rollback_failed;
    }
    child = spawn(install, *rec, log_path, &why);
    if (child > 0) {
        log::info("started", {{"pid", child}, {"version", rec->version}, {"log", log_path}});
        bool exited = false;
        successor back{child, rec->stats_file, {}, {}, {}};
        if (wait_tunnel(&back, rec->version, o.deadline_s, &exited, &why)) {
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
