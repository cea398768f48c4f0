#include "tests/support/etcd_cluster.hh"

#include <algorithm>
#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <numeric>
#include <poll.h>
#include <string_view>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace apprelay::testing {
namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto k_healthy_timeout = 20s;
constexpr auto k_leader_timeout = 5s;
constexpr auto k_peer_serving_timeout = 3s;
constexpr auto k_poll_interval = 50ms;
constexpr int k_log_tail_lines = 40;

// $OVERRIDE, else the first executable `name` on PATH, else `name` (execve then fails loudly
// into the member's log). Resolved in the parent: execvp's PATH walk is not fork-safe.
std::string find_binary(const char* override_var, const char* name) {
    if (const char* v = std::getenv(override_var); v != nullptr && *v != '\0')
        return v;
    const char* path = std::getenv("PATH");
    std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
    size_t pos = 0;
    while (pos <= dirs.size()) {
        size_t end = dirs.find(':', pos);
        if (end == std::string::npos)
            end = dirs.size();
        std::string dir = dirs.substr(pos, end - pos);
        if (!dir.empty()) {
            std::string candidate = dir + "/" + name;
            if (::access(candidate.c_str(), X_OK) == 0)
                return candidate;
        }
        pos = end + 1;
    }
    return name;
}

const std::string& etcd_bin() {
    static const std::string path = find_binary("APPRELAY_ETCD", "etcd");
    return path;
}

const std::string& etcdctl_bin() {
    static const std::string path = find_binary("APPRELAY_ETCDCTL", "etcdctl");
    return path;
}

// Our environment without ETCD_* / ETCDCTL_*: etcd and etcdctl refuse to run when a variable
// duplicates a flag we pass, and stray ones (ETCDCTL_ENDPOINTS...) would redirect them.
std::vector<std::string> child_env() {
    std::vector<std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string_view kv = *e;
        if (kv.starts_with("ETCD_") || kv.starts_with("ETCDCTL_"))
            continue;
        env.emplace_back(kv);
    }
    env.emplace_back("ETCDCTL_API=3");
    return env;
}

// A NULL-terminated char* array over owned strings, built before fork (no allocation after).
class c_strings {
public:
    explicit c_strings(std::vector<std::string> v) : store_(std::move(v)) {
        for (auto& s : store_)
            ptrs_.push_back(s.data());
        ptrs_.push_back(nullptr);
    }
    c_strings(const c_strings&) = delete;
    c_strings& operator=(const c_strings&) = delete;
    char** get() { return ptrs_.data(); }

private:
    std::vector<std::string> store_;
    std::vector<char*> ptrs_;
};

// Runs in the forked child: async-signal-safe calls only.
[[noreturn]] void exec_child(const char* path, char** argv, char** envp, int out_fd, int err_fd,
                             pid_t parent) {
    // Die with the test even if it crashes; the getppid check covers a parent that died
    // between fork and prctl.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
        ::_exit(127);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0)
        ::dup2(null_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    // Keep the test's other descriptors (listeners, pipes) out of a long-lived etcd.
    if (::close_range(3, ~0U, 0) != 0) {
        for (int fd = 3; fd < 4096; ++fd)
            ::close(fd);
    }
    // Undo whatever the test did to signals; the mask and SIG_IGN survive exec.
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD})
        ::sigaction(sig, &dfl, nullptr);
    ::execve(path, argv, envp);
    static const char msg[] = "etcd_cluster: execve failed\n";
    [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
    ::_exit(127);
}

// Reaps pid, polling until the deadline. True once it is gone.
bool reap(pid_t pid, std::chrono::milliseconds timeout, int* status = nullptr) {
    auto deadline = clock_type::now() + timeout;
    for (;;) {
        int st = 0;
        pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status != nullptr)
                *status = st;
            return true;
        }
        // ECHILD: already reaped (SIGCHLD ignored by the test); nothing left to wait for.
        if (r < 0 && errno == ECHILD)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
        if (clock_type::now() >= deadline)
            return false;
        std::this_thread::sleep_for(2ms);
    }
}

struct run_result {
    int exit_code = -1; // -1: killed by a signal, timed out or not started
    bool timed_out = false;
    std::string out;
    std::string err;
};

// fork/execs every command at once with stdout and stderr captured, and collects them all;
// any still running at the timeout is SIGKILLed. Concurrent so that a poll round over N
// members costs one etcdctl timeout, not N.
std::vector<run_result> run_commands(const std::vector<std::vector<std::string>>& cmds,
                                     std::chrono::milliseconds timeout) {
    struct child {
        pid_t pid = -1;
        int fds[2] = {-1, -1}; // stdout, stderr read ends
    };
    std::vector<run_result> res(cmds.size());
    std::vector<child> kids(cmds.size());
    c_strings envp(child_env());
    pid_t parent = ::getpid();
    for (size_t k = 0; k < cmds.size(); ++k) {
        int out_pipe[2];
        int err_pipe[2];
        if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
            res[k].err = std::string("pipe2: ") + std::strerror(errno);
            continue;
        }
        if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
            res[k].err = std::string("pipe2: ") + std::strerror(errno);
            ::close(out_pipe[0]);
            ::close(out_pipe[1]);
            continue;
        }
        c_strings argv(cmds[k]);
        pid_t pid = ::fork();
        if (pid == 0)
            exec_child(cmds[k][0].c_str(), argv.get(), envp.get(), out_pipe[1], err_pipe[1],
                       parent);
        ::close(out_pipe[1]);
        ::close(err_pipe[1]);
        if (pid < 0) {
            res[k].err = std::string("fork: ") + std::strerror(errno);
            ::close(out_pipe[0]);
            ::close(err_pipe[0]);
            continue;
        }
        kids[k].pid = pid;
        kids[k].fds[0] = out_pipe[0];
        kids[k].fds[1] = err_pipe[0];
    }

    // Read until every pipe hits EOF (the children exited) or the deadline passes.
    auto deadline = clock_type::now() + timeout;
    bool timed_out = false;
    for (;;) {
        std::vector<pollfd> fds;
        std::vector<std::string*> sinks;
        std::vector<int*> slots;
        for (size_t k = 0; k < kids.size(); ++k) {
            for (int s = 0; s < 2; ++s) {
                if (kids[k].fds[s] < 0)
                    continue;
                fds.push_back({kids[k].fds[s], POLLIN, 0});
                sinks.push_back(s == 0 ? &res[k].out : &res[k].err);
                slots.push_back(&kids[k].fds[s]);
            }
        }
        if (fds.empty())
            break;
        auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        int r = ::poll(fds.data(), fds.size(), static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            timed_out = true;
            break;
        }
        for (size_t f = 0; f < fds.size(); ++f) {
            if (fds[f].revents == 0)
                continue;
            char buf[4096];
            ssize_t n = ::read(fds[f].fd, buf, sizeof buf);
            if (n > 0) {
                sinks[f]->append(buf, static_cast<size_t>(n));
            } else if (n == 0 || errno != EINTR) {
                ::close(fds[f].fd);
                *slots[f] = -1;
            }
        }
    }

    for (size_t k = 0; k < kids.size(); ++k) {
        for (int& fd : kids[k].fds) {
            if (fd >= 0)
                ::close(fd);
            fd = -1;
        }
        if (kids[k].pid < 0)
            continue;
        int status = 0;
        // Pipes closed means it is exiting; give it a moment, then stop waiting politely.
        if (timed_out || !reap(kids[k].pid, 2000ms, &status)) {
            ::kill(kids[k].pid, SIGKILL);
            reap(kids[k].pid, 5000ms, &status);
            res[k].timed_out = true;
            continue;
        }
        if (WIFEXITED(status))
            res[k].exit_code = WEXITSTATUS(status);
    }
    return res;
}

// n distinct free loopback ports: all n sockets are held open while picking, so the kernel
// cannot hand out one port twice. Someone may still take one before etcd binds it.
bool pick_ports(int n, std::vector<int>* ports, std::string* why) {
    std::vector<int> fds;
    bool ok = true;
    for (int k = 0; k < n && ok; ++k) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            *why = std::string("socket: ") + std::strerror(errno);
            ok = false;
            break;
        }
        fds.push_back(fd);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        socklen_t len = sizeof addr;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            *why = std::string("bind/getsockname 127.0.0.1:0: ") + std::strerror(errno);
            ok = false;
            break;
        }
        ports->push_back(ntohs(addr.sin_port));
    }
    for (int fd : fds)
        ::close(fd);
    return ok;
}

// A cheap "is anything listening" probe: etcdctl against a closed port burns its whole
// command timeout, so we only ask etcdctl once the port accepts connections.
bool tcp_open(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = false;
    int r = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (r == 0) {
        ok = true;
    } else if (errno == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, 200) == 1) {
            int err = 0;
            socklen_t len = sizeof err;
            ok = ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
        }
    }
    ::close(fd);
    return ok;
}

// True if an HTTP server answers GET path on 127.0.0.1:port within ~200 ms. Used to tell an
// etcd whose peer port is merely bound from one that is serving it.
bool http_answers(int port, const char* path) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = false;
    int r = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    pollfd p{fd, POLLOUT, 0};
    if (r == 0 || (errno == EINPROGRESS && ::poll(&p, 1, 100) == 1)) {
        int err = 0;
        socklen_t len = sizeof err;
        std::string req = std::string("GET ") + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0 &&
            ::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
            p = {fd, POLLIN, 0};
            char buf[16];
            if (::poll(&p, 1, 100) == 1) {
                ssize_t n = ::recv(fd, buf, sizeof buf, 0);
                ok = n >= 7 && std::string_view(buf, 7) == "HTTP/1.";
            }
        }
    }
    ::close(fd);
    return ok;
}

std::string make_token() {
    static std::atomic<unsigned> counter{0};
    auto now = std::chrono::system_clock::now().time_since_epoch().count();
    return "apprelay-test-" + std::to_string(::getpid()) + "-" + std::to_string(now) + "-" +
           std::to_string(counter++);
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r'))
        s.pop_back();
    return s;
}

std::vector<std::string> ctl_command(int client_port, const std::vector<std::string>& args,
                                     const char* command_timeout) {
    std::vector<std::string> argv = {
        etcdctl_bin(),
        "--endpoints=http://127.0.0.1:" + std::to_string(client_port),
        std::string("--command-timeout=") + command_timeout,
    };
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
}

run_result run_ctl(int client_port, const std::vector<std::string>& args,
                   const char* command_timeout, std::chrono::milliseconds process_timeout) {
    return run_commands({ctl_command(client_port, args, command_timeout)}, process_timeout)[0];
}

// `etcdctl endpoint health` on several members at once; true per member that passed. A port
// that does not accept connections is skipped: etcdctl would burn its whole timeout on it.
std::vector<bool> health_checks(const std::vector<int>& client_ports) {
    std::vector<bool> ok(client_ports.size(), false);
    std::vector<std::vector<std::string>> cmds;
    std::vector<size_t> which;
    for (size_t k = 0; k < client_ports.size(); ++k) {
        if (!tcp_open(client_ports[k]))
            continue;
        cmds.push_back(ctl_command(client_ports[k], {"endpoint", "health"}, "1s"));
        which.push_back(k);
    }
    if (cmds.empty())
        return ok;
    auto res = run_commands(cmds, 5000ms);
    for (size_t c = 0; c < res.size(); ++c)
        ok[which[c]] = res[c].exit_code == 0;
    return ok;
}

} // namespace

std::unique_ptr<etcd_cluster> etcd_cluster::start(int members, std::string* why) {
    std::string local_why;
    if (why == nullptr)
        why = &local_why;
    if (members < 1) {
        *why = "etcd_cluster::start: need at least one member";
        return nullptr;
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
        std::unique_ptr<etcd_cluster> c(new etcd_cluster());
        bool port_taken = false;
        if (c->launch(members, why, &port_taken))
            return c;
        // A picked port was taken between our close() and etcd's bind(): once more, new ports.
        if (!port_taken)
            return nullptr;
        if (attempt == 1)
            *why = "port taken twice; last attempt: " + *why;
    }
    return nullptr;
}

etcd_cluster::~etcd_cluster() {
    for (int i = 0; i < size(); ++i)
        kill(i);
    if (!dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

int etcd_cluster::size() const {
    return static_cast<int>(members_.size());
}

std::string etcd_cluster::endpoint(int i) const {
    return "127.0.0.1:" + std::to_string(members_.at(i).client_port);
}

std::string etcd_cluster::endpoints() const {
    std::string s;
    for (int i = 0; i < size(); ++i) {
        if (i > 0)
            s += ',';
        s += endpoint(i);
    }
    return s;
}

const std::string& etcd_cluster::dir() const {
    return dir_;
}

bool etcd_cluster::running(int i) const {
    return members_.at(i).pid > 0;
}

bool etcd_cluster::stopped(int i) const {
    return members_.at(i).stopped;
}

std::vector<std::string> etcd_cluster::member_args(int i) const {
    const member& m = members_.at(i);
    std::string client = "http://127.0.0.1:" + std::to_string(m.client_port);
    std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
    std::string initial;
    for (const member& o : members_) {
        if (!initial.empty())
            initial += ',';
        initial += o.name + "=http://127.0.0.1:" + std::to_string(o.peer_port);
    }
    // On restart the data dir already holds the membership and etcd ignores --initial-*.
    // Flag / value pairs read best one per line.
    // clang-format off
    return {
        etcd_bin(),
        "--name", m.name,
        "--data-dir", m.data_dir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token_,
        "--heartbeat-interval", "50",
        "--election-timeout", "500",
        "--max-txn-ops", "1024",
        "--quota-backend-bytes", "268435456",
        "--logger", "zap",
        "--log-level", "error",
    };
    // clang-format on
}

bool etcd_cluster::launch(int n, std::string* why, bool* port_taken) {
    std::string tmpl = "/tmp/apprelay-etcd-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
        *why = std::string("mkdtemp: ") + std::strerror(errno);
        return false;
    }
    dir_ = tmpl;
    token_ = make_token();
    std::vector<int> ports;
    if (!pick_ports(2 * n, &ports, why))
        return false;
    members_.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
        member& m = members_[static_cast<size_t>(i)];
        m.name = "m" + std::to_string(i);
        m.data_dir = dir_ + "/" + m.name;
        m.log_path = dir_ + "/" + m.name + ".log";
        m.client_port = ports[static_cast<size_t>(2 * i)];
        m.peer_port = ports[static_cast<size_t>(2 * i + 1)];
    }
    // One after another, each once its peer port serves: at bootstrap etcd 3.4 asks every
    // other peer whether the cluster already exists, with a fixed 1 s timeout, and a peer that
    // has bound its port but is not serving it yet eats that second (starts took up to 2.3 s
    // when launched all at once, ~0.3 s staggered). Past the bound we just go on: it is only
    // an optimisation, wait_healthy() decides.
    for (int i = 0; i < n; ++i) {
        if (!spawn(i, why))
            return false;
        auto deadline = clock_type::now() + k_peer_serving_timeout;
        while (!http_answers(members_[static_cast<size_t>(i)].peer_port, "/version") &&
               clock_type::now() < deadline) {
            if (check_exited(i, why, port_taken))
                return false;
            std::this_thread::sleep_for(5ms);
        }
    }
    // Then one wait for all: none is healthy before a quorum runs.
    std::vector<int> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    return wait_healthy(all, why, port_taken);
}

bool etcd_cluster::spawn(int i, std::string* why) {
    member& m = members_.at(i);
    c_strings argv(member_args(i));
    c_strings envp(child_env());
    int log_fd = ::open(m.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
        *why = "open " + m.log_path + ": " + std::strerror(errno);
        return false;
    }
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid == 0)
        exec_child(etcd_bin().c_str(), argv.get(), envp.get(), log_fd, log_fd, parent);
    ::close(log_fd);
    if (pid < 0) {
        *why = std::string("fork: ") + std::strerror(errno);
        return false;
    }
    m.pid = pid;
    m.stopped = false;
    return true;
}

bool etcd_cluster::check_exited(int i, std::string* why, bool* port_taken) {
    member& m = members_.at(i);
    if (m.pid <= 0)
        return false;
    pid_t pid = m.pid;
    int st = 0;
    pid_t r = ::waitpid(pid, &st, WNOHANG);
    bool gone = r == pid || (r < 0 && errno == ECHILD && ::kill(pid, 0) != 0);
    if (!gone)
        return false;
    m.pid = -1;
    m.stopped = false;
    std::string tail = log_tail(i);
    if (tail.find("address already in use") != std::string::npos)
        *port_taken = true;
    std::string how = r != pid          ? "status unknown"
                      : WIFEXITED(st)   ? "exit " + std::to_string(WEXITSTATUS(st))
                      : WIFSIGNALED(st) ? "signal " + std::to_string(WTERMSIG(st))
                                        : "status " + std::to_string(st);
    *why = "etcd " + m.name + " (client :" + std::to_string(m.client_port) +
           ", peer :" + std::to_string(m.peer_port) + ") exited (" + how + "); log tail:\n" + tail;
    return true;
}

bool etcd_cluster::wait_healthy(const std::vector<int>& which, std::string* why, bool* port_taken) {
    auto deadline = clock_type::now() + k_healthy_timeout;
    std::vector<bool> ok(which.size(), false);
    for (;;) {
        std::vector<int> ports;
        std::vector<size_t> pending;
        for (size_t k = 0; k < which.size(); ++k) {
            if (ok[k])
                continue;
            if (check_exited(which[k], why, port_taken))
                return false;
            ports.push_back(members_.at(which[k]).client_port);
            pending.push_back(k);
        }
        auto passed = health_checks(ports);
        bool all = true;
        for (size_t p = 0; p < pending.size(); ++p) {
            ok[pending[p]] = passed[p];
            all = all && passed[p];
        }
        if (all)
            return true;
        if (clock_type::now() >= deadline) {
            *why = "etcd members not healthy after 20 s:";
            for (size_t k = 0; k < which.size(); ++k) {
                if (!ok[k]) {
                    const member& m = members_.at(which[k]);
                    *why += "\n--- " + m.name + " (" + endpoint(which[k]) + ") log tail:\n" +
                            log_tail(which[k]);
                }
            }
            return false;
        }
        std::this_thread::sleep_for(k_poll_interval);
    }
}

void etcd_cluster::kill(int i) {
    member& m = members_.at(i);
    if (m.pid <= 0)
        return;
    // SIGKILL works on a stopped process too; SIGCONT first so nothing lingers stopped.
    if (m.stopped)
        ::kill(m.pid, SIGCONT);
    ::kill(m.pid, SIGKILL);
    reap(m.pid, 5000ms);
    m.pid = -1;
    m.stopped = false;
}

void etcd_cluster::stop(int i) {
    member& m = members_.at(i);
    if (m.pid <= 0 || m.stopped)
        return;
    ::kill(m.pid, SIGSTOP);
    m.stopped = true;
    // Return only once it really is stopped, so the caller's next step sees a frozen member.
    auto deadline = clock_type::now() + 2s;
    while (clock_type::now() < deadline) {
        int st = 0;
        pid_t r = ::waitpid(m.pid, &st, WNOHANG | WUNTRACED);
        if (r == m.pid && WIFSTOPPED(st))
            return;
        if (r == m.pid || (r < 0 && errno == ECHILD)) {
            // It died instead (or we cannot watch it); treat as killed if it is gone.
            if (r == m.pid || ::kill(m.pid, 0) != 0) {
                m.pid = -1;
                m.stopped = false;
            }
            return;
        }
        std::this_thread::sleep_for(1ms);
    }
}

void etcd_cluster::cont(int i) {
    member& m = members_.at(i);
    if (m.pid <= 0 || !m.stopped)
        return;
    // The kernel resumes the process when SIGCONT is sent; nothing to wait for.
    ::kill(m.pid, SIGCONT);
    m.stopped = false;
}

bool etcd_cluster::restart(int i, std::string* why) {
    std::string local_why;
    if (why == nullptr)
        why = &local_why;
    member& m = members_.at(i);
    if (m.pid > 0) {
        *why = m.name + " is still running; kill() it first";
        return false;
    }
    // A marker so log_tail() shows which run a line came from.
    if (std::ofstream log(m.log_path, std::ios::app); log)
        log << "--- etcd_cluster: restarting " << m.name << " ---\n";
    if (!spawn(i, why))
        return false;
    bool port_taken = false;
    return wait_healthy({i}, why, &port_taken);
}

int etcd_cluster::leader() const {
    auto deadline = clock_type::now() + k_leader_timeout;
    for (;;) {
        int best = -1;
        uint64_t best_term = 0;
        std::vector<std::vector<std::string>> cmds;
        std::vector<int> asked;
        for (int i = 0; i < size(); ++i) {
            const member& m = members_[static_cast<size_t>(i)];
            if (m.pid <= 0 || m.stopped)
                continue;
            cmds.push_back(ctl_command(m.client_port, {"endpoint", "status", "-w", "json"}, "1s"));
            asked.push_back(i);
        }
        auto results = cmds.empty() ? std::vector<run_result>{} : run_commands(cmds, 5000ms);
        for (size_t a = 0; a < asked.size(); ++a) {
            int i = asked[a];
            const run_result& r = results[a];
            if (r.exit_code != 0)
                continue;
            auto j = nlohmann::json::parse(r.out, nullptr, false);
            if (j.is_discarded() || !j.is_array())
                continue;
            // member_id and leader are uint64 (often above INT64_MAX); compare as such.
            for (const auto& e : j) {
                try {
                    const auto& st = e.at("Status");
                    uint64_t id = st.at("header").at("member_id").get<uint64_t>();
                    uint64_t lead = st.value("leader", uint64_t{0});
                    uint64_t term = st.value("raftTerm", uint64_t{0});
                    // A member that was stopped may still claim an old term: the newest wins.
                    if (lead != 0 && id == lead && (best < 0 || term > best_term)) {
                        best = i;
                        best_term = term;
                    }
                } catch (const nlohmann::json::exception&) {
                    continue;
                }
            }
        }
        if (best >= 0)
            return best;
        if (clock_type::now() >= deadline)
            return -1;
        std::this_thread::sleep_for(k_poll_interval);
    }
}

bool etcd_cluster::compact(int64_t revision, std::string* why) {
    std::string local_why;
    if (why == nullptr)
        why = &local_why;
    std::string errors;
    for (int i = 0; i < size(); ++i) {
        const member& m = members_[static_cast<size_t>(i)];
        if (m.pid <= 0 || m.stopped)
            continue;
        std::string out, err;
        if (ctl(i, {"compact", std::to_string(revision)}, &out, &err))
            return true;
        // "required revision has been compacted" / "is a future revision": every member
        // would give the same answer.
        if (err.find("required revision") != std::string::npos) {
            *why = "compact " + std::to_string(revision) + ": " + trim(err);
            return false;
        }
        errors += "\n" + m.name + ": " + trim(err);
    }
    *why = "compact " + std::to_string(revision) + ": no member did it" +
           (errors.empty() ? std::string(" (none running)") : errors);
    return false;
}

bool etcd_cluster::healthy(int i) {
    const member& m = members_.at(i);
    if (m.pid <= 0 || m.stopped)
        return false;
    return health_checks({m.client_port})[0];
}

std::string etcd_cluster::log_tail(int i) {
    const member& m = members_.at(i);
    std::ifstream in(m.log_path, std::ios::binary);
    if (!in)
        return "(no log at " + m.log_path + ")";
    // Only the end matters; bounded read keeps a chatty log cheap.
    constexpr std::streamoff k_max = 64 * 1024;
    in.seekg(0, std::ios::end);
    std::streamoff len = in.tellg();
    std::streamoff from = len > k_max ? len - k_max : 0;
    in.seekg(from);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t pos = text.size();
    if (pos > 0 && text[pos - 1] == '\n')
        --pos;
    for (int lines = 0; lines < k_log_tail_lines && pos > 0; ++lines) {
        size_t nl = text.rfind('\n', pos - 1);
        if (nl == std::string::npos) {
            pos = 0;
            break;
        }
        pos = nl;
    }
    if (pos > 0)
        ++pos; // skip the newline that ends the line before the tail
    std::string tail = text.substr(pos);
    return tail.empty() ? "(empty log)" : tail;
}

bool etcd_cluster::ctl(int i, const std::vector<std::string>& args, std::string* out,
                       std::string* err) const {
    run_result r = run_ctl(members_.at(i).client_port, args, "5s", 15000ms);
    if (out != nullptr)
        *out = std::move(r.out);
    if (err != nullptr)
        *err = r.timed_out ? "etcdctl timed out\n" + r.err : std::move(r.err);
    return r.exit_code == 0;
}

} // namespace apprelay::testing
