#!/usr/bin/env python3
"""Real etcd clusters on loopback for integration tests. Stdlib only.

Every member is an `etcd` process (from PATH, or $APPRELAY_ETCD; etcdctl from PATH or
$APPRELAY_ETCDCTL) listening on 127.0.0.1 ports picked at start, with its data dir and log
(mN/, mN.log) in one temp dir. Members get PR_SET_PDEATHSIG(SIGKILL), so a crashed test leaves
no etcd behind; close() kills them by pid and removes the dir. Every wait is bounded.

    with EtcdCluster(3) as c:          # start() on enter, close() on exit
        c.put("/k", "v")
        c.kill(c.leader()); ...

Not thread-safe. PDEATHSIG fires when the *thread* that started a member exits, so start (and
restart) members from a thread that outlives them.

CLI:  etcd_cluster.py selftest     (3 members: leader failover, restart, stop/cont, compact)
"""
import base64
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HEALTHY_TIMEOUT = 20.0  # start() / restart(): until every member answers endpoint health
LEADER_TIMEOUT = 5.0  # leader(): until some member reports itself leader
PEER_SERVING_TIMEOUT = 3.0  # start(): per member, see _launch()
POLL = 0.05
LOG_TAIL_LINES = 40

PR_SET_PDEATHSIG = 1


class EtcdError(RuntimeError):
    pass


def _find(override_var, name):
    return os.environ.get(override_var) or shutil.which(name) or name


ETCD_BIN = _find("APPRELAY_ETCD", "etcd")
ETCDCTL_BIN = _find("APPRELAY_ETCDCTL", "etcdctl")

# Loaded before any fork: the preexec hook must not import or allocate much.
_libc = ctypes.CDLL(None, use_errno=True)


def _child_env():
    """Our environment without ETCD_* / ETCDCTL_*: etcd and etcdctl refuse to run when a
    variable duplicates a flag we pass, and stray ones (ETCDCTL_ENDPOINTS...) redirect them."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ETCD_") and not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def _die_with_parent(parent_pid):
    def hook():
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl: then nobody would kill us.
        if os.getppid() != parent_pid:
            os._exit(127)
    return hook


def _popen(args, **kw):
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, env=_child_env(), close_fds=True,
                            start_new_session=False, preexec_fn=_die_with_parent(os.getpid()),
                            **kw)


def _run_many(cmds, timeout):
    """Runs every command at once (a poll round over N members costs one etcdctl timeout, not
    N); returns [(returncode or None if killed/timed out, stdout, stderr)]."""
    procs = []
    for args in cmds:
        try:
            procs.append(_popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        except OSError as e:
            procs.append(e)
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        if isinstance(p, OSError):
            results.append((None, "", str(p)))
            continue
        try:
            out, err = p.communicate(timeout=max(0.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=5)
            results.append((None, out or "", (err or "") + "\netcdctl timed out"))
    return results


def _pick_ports(n):
    """n distinct free loopback ports: all sockets stay open while picking so the kernel cannot
    hand out one twice. Someone may still take one before etcd binds it (start() retries)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tcp_open(port):
    """Cheap "is anything listening": etcdctl against a closed port burns its whole timeout."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _http_answers(port, path):
    """An HTTP server answers on 127.0.0.1:port (tells a served etcd port from a bound one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.1)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class _Member:
    def __init__(self, name, directory, client_port, peer_port):
        self.name = name
        self.data_dir = os.path.join(directory, name)
        self.log_path = os.path.join(directory, name + ".log")
        self.client_port = client_port
        self.peer_port = peer_port
        self.proc = None  # None: killed (or never started)
        self.stopped = False

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.client_port}"

    @property
    def live(self):
        """Running and not stopped: it can answer."""
        return self.proc is not None and not self.stopped


class _PortTaken(Exception):
    pass


class EtcdCluster:
    def __init__(self, members=3, tmpdir=None):
        if members < 1:
            raise ValueError("need at least one member")
        self.size = members
        self.tmpdir = tmpdir  # where the cluster's own temp dir goes (default: /tmp)
        self.dir = None
        self.token = None
        self.members = []
        self.start_seconds = None  # how long the last start() took

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self):
        """Starts the members and waits (bounded) until every one answers endpoint health.
        Retries once with new ports if a port was taken between picking and etcd's bind."""
        t0 = time.monotonic()
        for attempt in range(2):
            try:
                self._launch()
                self.start_seconds = time.monotonic() - t0
                return self
            except _PortTaken as e:
                self.close()
                if attempt == 1:
                    raise EtcdError(f"port taken twice; last attempt: {e}") from None
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self):
        """Kills every member (by pid) and removes the temp dir. Idempotent."""
        for i in range(len(self.members)):
            self.kill(i)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.members = []

    def __enter__(self):
        if not self.members:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- addresses ------------------------------------------------------------------------------

    @property
    def endpoints(self):
        """["127.0.0.1:C0", ...]: every member, live or not (host:port, no scheme)."""
        return [m.endpoint for m in self.members]

    @property
    def endpoints_csv(self):
        return ",".join(self.endpoints)

    def endpoint(self, i):
        return self.members[i].endpoint

    def running(self, i):
        """Not killed (it may be stopped)."""
        return self.members[i].proc is not None

    def stopped(self, i):
        return self.members[i].stopped

    # -- faults ---------------------------------------------------------------------------------

    def kill(self, i):
        """SIGKILL + reap; a no-op on a member that is already dead."""
        m = self.members[i]
        if m.proc is None:
            return
        # SIGKILL works on a stopped process too; SIGCONT first so nothing lingers stopped.
        if m.stopped:
            self._signal(m, signal.SIGCONT)
        self._signal(m, signal.SIGKILL)
        try:
            m.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        m.proc = None
        m.stopped = False

    def stop(self, i):
        """SIGSTOP; returns once the kernel reports the member stopped (bounded, 2 s)."""
        m = self.members[i]
        if m.proc is None or m.stopped:
            return
        self._signal(m, signal.SIGSTOP)
        m.stopped = True
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{m.proc.pid}/stat") as f:
                    # The state follows the ")" that ends the command name.
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if state in ("T", "t"):
                return
            time.sleep(0.001)

    def cont(self, i):
        """SIGCONT: the kernel resumes it when the signal is sent, nothing to wait for."""
        m = self.members[i]
        if m.proc is None or not m.stopped:
            return
        self._signal(m, signal.SIGCONT)
        m.stopped = False

    def restart(self, i):
        """Starts a killed member again on its old data dir and ports (etcd ignores the
        --initial-* flags then) and waits (bounded, 20 s) until it is healthy."""
        m = self.members[i]
        if m.proc is not None:
            raise EtcdError(f"{m.name} is still running; kill() it first")
        # A marker so log_tail() shows which run a line came from.
        with open(m.log_path, "a") as f:
            f.write(f"--- etcd_cluster: restarting {m.name} ---\n")
        self._spawn(i)
        try:
            self._wait_healthy([i])
        except _PortTaken as e:
            raise EtcdError(str(e)) from None

    # -- queries --------------------------------------------------------------------------------

    def healthy(self, i):
        """Running, not stopped, and `etcdctl endpoint health` passes (needs quorum)."""
        m = self.members[i]
        return m.live and self._health_checks([i])[0]

    def leader(self):
        """Index of the member that reports itself leader (highest raft term if several do),
        asking every live member; polls up to 5 s, -1 if none."""
        deadline = time.monotonic() + LEADER_TIMEOUT
        while True:
            asked = [i for i, m in enumerate(self.members) if m.live]
            results = _run_many([self._ctl_cmd(i, ["endpoint", "status", "-w", "json"], "1s")
                                 for i in asked], timeout=5.0) if asked else []
            best, best_term = -1, -1
            for i, (rc, out, _err) in zip(asked, results):
                if rc != 0:
                    continue
                try:
                    for e in json.loads(out):
                        st = e["Status"]
                        lead, term = st.get("leader", 0), st.get("raftTerm", 0)
                        # A member that was stopped may still claim an old term: newest wins.
                        if lead and st["header"]["member_id"] == lead and term > best_term:
                            best, best_term = i, term
                except (ValueError, KeyError, TypeError):
                    continue
            if best >= 0:
                return best
            if time.monotonic() >= deadline:
                return -1
            time.sleep(POLL)

    def ctl(self, i, args, command_timeout="5s", timeout=15.0):
        """`etcdctl --endpoints=http://<endpoint(i)> --command-timeout=.. args...` (process
        bounded); returns (returncode or None, stdout, stderr)."""
        return _run_many([self._ctl_cmd(i, args, command_timeout)], timeout)[0]

    def ctl_any(self, args):
        """ctl() through the first live member that succeeds; stdout, or EtcdError."""
        errors = []
        for i, m in enumerate(self.members):
            if not m.live:
                continue
            rc, out, err = self.ctl(i, args)
            if rc == 0:
                return out
            errors.append(f"{m.name}: {err.strip()}")
            # The cluster's answer, not a member's trouble: asking another will not help.
            if "required revision" in err:
                break
        raise EtcdError(f"etcdctl {' '.join(args)}: " + ("; ".join(errors) or "no live member"))

    def put(self, key, value):
        self.ctl_any(["put", key, value])

    def get(self, key):
        """The value (str) or None if the key does not exist. Linearizable read."""
        doc = json.loads(self.ctl_any(["get", key, "-w", "json"]))
        kvs = doc.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def revision(self):
        """The cluster's current revision (header of a linearizable get)."""
        return int(json.loads(self.ctl_any(["get", "/", "-w", "json"]))["header"]["revision"])

    def compact(self, rev):
        """`etcdctl compact REV` through a live member; EtcdError if it fails (e.g. "required
        revision has been compacted" / "is a future revision")."""
        self.ctl_any(["compact", str(int(rev))])

    def log_tail(self, i, lines=LOG_TAIL_LINES):
        m = self.members[i]
        try:
            with open(m.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return f"(no log at {m.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return tail or "(empty log)"

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _signal(m, sig):
        try:
            os.kill(m.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _ctl_cmd(self, i, args, command_timeout):
        return [ETCDCTL_BIN, f"--endpoints=http://{self.members[i].endpoint}",
                f"--command-timeout={command_timeout}"] + list(args)

    def _member_args(self, i):
        m = self.members[i]
        client = f"http://127.0.0.1:{m.client_port}"
        peer = f"http://127.0.0.1:{m.peer_port}"
        initial = ",".join(f"{o.name}=http://127.0.0.1:{o.peer_port}" for o in self.members)
        # On restart the data dir already holds the membership and etcd ignores --initial-*.
        return [ETCD_BIN,
                "--name", m.name,
                "--data-dir", m.data_dir,
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
                "--max-txn-ops", "1024",
                "--quota-backend-bytes", "268435456",
                "--logger", "zap",
                "--log-level", "error"]

    def _launch(self):
        self.dir = tempfile.mkdtemp(prefix="apprelay-etcd-", dir=self.tmpdir or "/tmp")
        self.token = f"apprelay-test-{os.getpid()}-{time.time_ns()}"
        ports = _pick_ports(2 * self.size)
        self.members = [_Member(f"m{i}", self.dir, ports[2 * i], ports[2 * i + 1])
                        for i in range(self.size)]
        # One after another, each once its peer port serves: at bootstrap etcd 3.4 asks every
        # other peer whether the cluster already exists, with a fixed 1 s timeout, and a peer
        # that has bound its port but is not serving it yet eats that second (starts took up
        # to 2.3 s when launched all at once, ~0.3 s staggered). Past the bound we go on: it
        # is only an optimisation, _wait_healthy() decides.
        for i, m in enumerate(self.members):
            self._spawn(i)
            deadline = time.monotonic() + PEER_SERVING_TIMEOUT
            while not _http_answers(m.peer_port, "/version") and time.monotonic() < deadline:
                self._check_exited(i)
                time.sleep(0.005)
        # Then one wait for all: none is healthy before a quorum runs.
        self._wait_healthy(range(self.size))

    def _spawn(self, i):
        m = self.members[i]
        with open(m.log_path, "ab") as log:
            m.proc = _popen(self._member_args(i), stdout=log, stderr=subprocess.STDOUT)
        m.stopped = False

    def _check_exited(self, i):
        m = self.members[i]
        if m.proc is None or m.proc.poll() is None:
            return
        rc = m.proc.returncode
        m.proc = None
        m.stopped = False
        tail = self.log_tail(i)
        msg = (f"etcd {m.name} (client :{m.client_port}, peer :{m.peer_port}) exited "
               f"({rc}); log tail:\n{tail}")
        if "address already in use" in tail:
            raise _PortTaken(msg)
        raise EtcdError(msg)

    def _health_checks(self, indices):
        """`etcdctl endpoint health` on several members at once; a port that does not accept
        connections is skipped (etcdctl would burn its whole timeout on it)."""
        indices = list(indices)
        ok = [False] * len(indices)
        todo = [k for k, i in enumerate(indices) if _tcp_open(self.members[i].client_port)]
        results = _run_many([self._ctl_cmd(indices[k], ["endpoint", "health"], "1s")
                             for k in todo], timeout=5.0) if todo else []
        for k, (rc, _out, _err) in zip(todo, results):
            ok[k] = rc == 0
        return ok

    def _wait_healthy(self, indices):
        pending = list(indices)
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while True:
            for i in pending:
                self._check_exited(i)
            passed = self._health_checks(pending)
            pending = [i for i, ok in zip(pending, passed) if not ok]
            if not pending:
                return
            if time.monotonic() >= deadline:
                tails = "".join(f"\n--- {self.members[i].name} ({self.endpoint(i)}) log tail:\n"
                                f"{self.log_tail(i)}" for i in pending)
                raise EtcdError(f"etcd members not healthy after {HEALTHY_TIMEOUT:.0f} s:{tails}")
            time.sleep(POLL)


# ---------------------------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------------------------

def _check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"  ok: {what}", flush=True)


def selftest():
    with EtcdCluster(3) as c:
        print(f"  started 3 members in {c.start_seconds:.2f} s: {c.endpoints_csv}", flush=True)
        _check(c.endpoints_csv == ",".join(c.endpoints) and len(c.endpoints) == 3, "endpoints")
        old = c.leader()
        _check(old >= 0, f"leader is m{old}")
        c.put("/selftest/key", "value-1")
        _check(c.get("/selftest/key") == "value-1", "put/get")
        _check(c.get("/selftest/missing") is None, "get of a missing key is None")

        c.kill(old)
        t0 = time.monotonic()
        new = c.leader()
        took = time.monotonic() - t0
        _check(new >= 0 and new != old and took < 5.0,
               f"new leader m{new} after killing m{old} ({took:.2f} s)")
        survivor = (old + 1) % 3
        rc, out, err = c.ctl(survivor, ["get", "/selftest/key", "--print-value-only"])
        _check(rc == 0 and out == "value-1\n", f"key reads through surviving m{survivor}")

        c.restart(old)
        _check(c.healthy(old), f"restarted m{old} is healthy")
        rc, out, _ = c.ctl(old, ["get", "/selftest/key", "--print-value-only"])
        _check(rc == 0 and out == "value-1\n", f"restarted m{old} serves the key")

        # Compaction: revisions move, compacting twice fails with etcd's message.
        for k in range(3):
            c.put("/selftest/c", str(k))
        rev = c.revision()
        _check(rev >= 5, f"revision {rev}")
        c.compact(rev - 1)
        try:
            c.compact(rev - 1)
            _check(False, "compacting twice fails")
        except EtcdError as e:
            _check("compacted" in str(e), "compacting twice fails: already compacted")

        # Stop/cont: a stopped leader is replaced, and rejoins once continued.
        lead = c.leader()
        c.stop(lead)
        _check(c.stopped(lead) and not c.healthy(lead), f"m{lead} stopped")
        other = c.leader()
        _check(other >= 0 and other != lead, f"m{other} leads while m{lead} is stopped")
        c.cont(lead)
        deadline = time.monotonic() + 10
        while not c.healthy(lead) and time.monotonic() < deadline:
            time.sleep(POLL)
        _check(c.healthy(lead), f"m{lead} healthy again after SIGCONT")
        c.stop((lead + 1) % 3)  # close() must cope with a stopped member
        pids = [m.proc.pid for m in c.members if m.proc]
        directory = c.dir
    _check(not os.path.exists(directory), "close() removed the temp dir")
    _check(not any(_etcd_running(p) for p in pids), "close() left no member running")
    print("etcd_cluster selftest ok", flush=True)


def _etcd_running(pid):
    """pid is a live (not zombie) etcd; a reaped pid reused by something else is not."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return comm == "etcd" and state != "Z"


def main(argv):
    if len(argv) >= 2 and argv[1] == "selftest":
        selftest()
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
