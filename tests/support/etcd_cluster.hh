#pragma once
// Real etcd clusters on loopback for tests: every member is an `etcd` process (found on PATH,
// or $APPRELAY_ETCD / $APPRELAY_ETCDCTL) listening on 127.0.0.1 ports picked at start, with its
// data dir and log under one mkdtemp dir. Members get PR_SET_PDEATHSIG(SIGKILL), so a crashed
// test leaves no etcd behind; the destructor kills them (by pid) and removes the dir.
//
// Not thread-safe: use one etcd_cluster from one thread. PDEATHSIG fires when the *thread* that
// forked a member exits, so create (and restart()) members from a thread that outlives them.
#include <cstdint>
#include <memory>
#include <string>
#include <sys/types.h>
#include <vector>

namespace apprelay::testing {

class etcd_cluster {
public:
    // Starts `members` members and waits (bounded, 20 s) until every one answers
    // `etcdctl endpoint health`. Retries once with new ports if a port was taken meanwhile.
    // On failure returns nullptr and says why (with the members' log tails).
    static std::unique_ptr<etcd_cluster> start(int members, std::string* why);

    ~etcd_cluster();
    etcd_cluster(const etcd_cluster&) = delete;
    etcd_cluster& operator=(const etcd_cluster&) = delete;

    int size() const;
    // "127.0.0.1:C0,127.0.0.1:C1,..." (host:port, no scheme), every member, live or not.
    std::string endpoints() const;
    std::string endpoint(int i) const;
    // The temp dir holding mN/ (data) and mN.log.
    const std::string& dir() const;

    // SIGKILL + reap; a no-op on a member that is already dead.
    void kill(int i);
    // SIGSTOP, and returns once the kernel reports the member stopped (bounded, 2 s).
    void stop(int i);
    void cont(int i);
    // Starts a killed member again on its old data dir and ports; waits (bounded, 20 s) until
    // it is healthy. False (with why) if it was not killed, exited or never became healthy.
    bool restart(int i, std::string* why);

    // Not killed (it may be stopped).
    bool running(int i) const;
    bool stopped(int i) const;

    // Index of the member that reports itself leader (highest raft term wins if several do),
    // asking every running, non-stopped member; polls for up to 5 s, -1 if none.
    int leader() const;
    // `etcdctl compact REV` through the first running member that answers.
    bool compact(int64_t revision, std::string* why);
    // Running, not stopped, and `etcdctl endpoint health` succeeds (needs quorum).
    bool healthy(int i);
    // The last ~40 lines of member i's log, for failure messages.
    std::string log_tail(int i);

    // Runs `etcdctl --endpoints=http://<endpoint(i)> --command-timeout=5s <args...>` (process
    // bounded to 15 s). True on exit status 0; *out gets stdout, *err (if given) stderr.
    bool ctl(int i, const std::vector<std::string>& args, std::string* out,
             std::string* err = nullptr) const;

private:
    struct member {
        std::string name;     // "mN"
        std::string data_dir; // <dir>/mN
        std::string log_path; // <dir>/mN.log
        int client_port = 0;
        int peer_port = 0;
        pid_t pid = -1; // -1: killed (or never started)
        bool stopped = false;
    };

    etcd_cluster() = default;
    bool launch(int members, std::string* why, bool* port_taken);
    bool spawn(int i, std::string* why);
    bool wait_healthy(const std::vector<int>& which, std::string* why, bool* port_taken);
    bool check_exited(int i, std::string* why, bool* port_taken);
    std::vector<std::string> member_args(int i) const;

    std::string dir_;
    std::string token_;
    std::vector<member> members_;
};

} // namespace apprelay::testing
