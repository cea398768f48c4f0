#!/usr/bin/env python3
"""Integration test harness for apprelay: real processes, real certificates, loopback only.

Stdlib only. What it gives a test:
  - Env: a temp dir per test, process start/stop with pid tracking, log files in the temp dir
    (printed when the test fails), cleanup of every process it started (by pid).
  - PKI: certificates made with the openssl CLI (EC P-256): a "users' trust" CA + app server
    certs (SAN = hostname) uploaded to the relay with apprelayctl, and CAs no one configured.
    The relay CA and tenant CAs live in the relay's store; connectors get their certificates by
    enrolling (apprelay-connector register) with tokens from apprelayctl.
  - Topology -> relay.toml writer + provisioning of groups, apps and connectors through
    apprelayctl (the admin API) only.
  - Ready-file / stats-file readers and waiters (tunnels_up >= N, counter >= N), all with timeouts.
  - A TLS user client (ssl.SSLObject on memory BIOs over a socket) with SNI, full-duplex pumping
    and TLS half-close (close_notify, then keep reading).

Binaries come from $APPRELAY_BUILD_DIR (default: <repo>/build).

CLI:  harness.py demo [--connectors N] [--workers N] [--streams N] [--concurrency N] [--bytes N]
      harness.py selftest        (checks cert generation + the test backend, no relay needed)
"""
import json
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

def _raise_fd_limit():
    """Many-stream tests hold thousands of sockets; lift the soft limit to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


_raise_fd_limit()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("APPRELAY_BUILD_DIR", os.path.join(REPO, "build")))
RELAY_BIN = os.path.join(BUILD, "control", "apprelay")
CONNECTOR_BIN = os.path.join(BUILD, "dataplane", "connector", "apprelay-connector")
# The test tools (backend, load generator) may come from another build: the sanitizer builds
# are configured without the bench tree (scripts/test sets APPRELAY_TOOLS_DIR=build for them).
TOOLS = os.path.abspath(os.environ.get("APPRELAY_TOOLS_DIR", BUILD))
BACKEND_BIN = os.path.join(TOOLS, "bench", "loadgen", "apprelay-testbackend")
LOADGEN_BIN = os.path.join(TOOLS, "bench", "loadgen", "apprelay-loadgen")
CTL_BIN = os.path.join(TOOLS, "control", "ctl", "apprelayctl")

RELAY_SERVER_NAME = "relay.apprelay.test"
MiB = 1024 * 1024


class TestFailure(AssertionError):
    pass


def check(cond, what):
    """Assert with a message and print it as a checked fact when it holds."""
    if not cond:
        raise TestFailure(what)
    print(f"  ok: {what}", flush=True)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_until(pred, timeout, what, interval=0.05):
    """Poll pred() until it returns a truthy value; bounded by timeout seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # a half-written file, a refused connect...
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TestFailure(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def require_binaries(*paths):
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        raise TestFailure("missing binaries (build first: ninja -C %s): %s" % (BUILD, ", ".join(missing)))


# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------

def _openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise TestFailure("openssl %s failed: %s" % (" ".join(args), r.stderr.strip()))


class PKI:
    """Makes CAs and leaf certs in a directory; returns file names relative to it."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def ca(self, name, cn=None):
        _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3",
                  "-subj", f"/CN={cn or name}",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], self.dir)
        return f"{name}.crt"

    def leaf(self, name, ca, cn, dns=(), usage="serverAuth", ips=()):
        _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}"], self.dir)
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
               f"extendedKeyUsage={usage}"]
        if dns or ips:
            ext.append("subjectAltName=" + ",".join([f"DNS:{d}" for d in dns] +
                                                    [f"IP:{i}" for i in ips]))
        with open(self.path(f"{name}.ext"), "w") as f:
            f.write("\n".join(ext) + "\n")
        _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                  "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{name}.ext",
                  "-out", f"{name}.crt"], self.dir)
        return f"{name}.crt", f"{name}.key"


class Topology:
    """relay.toml (how the relay runs) + the objects the test provisions through apprelayctl."""

    def __init__(self, workers=2, drain_deadline_ms=3000):
        self.workers = workers
        # Tests stop the relay with SIGTERM and escalate after 10 s: drain well within that.
        self.drain_deadline_ms = drain_deadline_ms
        self.limits = {}      # extra [limits] keys
        self.tls = {}         # [tls] keys (strings, booleans, integers)
        self.connector_settings = {}  # [connectors] keys (min_version, inactive_purge_s...)
        self.tenants = []     # dict(name)
        self.groups = []      # dict(tenant, name)
        self.connectors = []  # dict(tenant, id, group): id is the test's name for it
        self.apps = []        # dict(tenant, name, hostname, cert, key, backend, group)
        self.io = "uring"     # [relay] io; "dpdk" needs self.dpdk and fixed listener ports
        self.dpdk = {}        # [dpdk] keys (strings, lists of strings, booleans, integers)
        self.listen_host = "127.0.0.1"
        self.user_port = 0
        self.tunnel_port = 0
        self.store = {}       # [store] keys (kind = "etcd", endpoints, prefix...)
        self.fleet = {}       # [fleet] keys (node, region, address, lease_ttl_s)

    def core_map(self):
        if self.workers <= 1:
            return "control=0,workers=0,shared=1"
        return "control=0,workers=0-%d,shared=1" % (self.workers - 1)

    def to_toml(self, state_dir):
        q = json.dumps  # TOML basic strings accept JSON string escapes for our ASCII values
        def value(v):
            if isinstance(v, bool):
                return str(v).lower()
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(q(x) for x in v) + "]"
            return q(v) if isinstance(v, str) else str(int(v))
        out = ["[relay]", f'user_listen = "{self.listen_host}:{self.user_port}"',
               f'tunnel_listen = "{self.listen_host}:{self.tunnel_port}"',
               'enroll_listen = "127.0.0.1:0"', f"state_dir = {q(state_dir)}",
               f"server_name = {q(RELAY_SERVER_NAME)}", f"core_map = {q(self.core_map())}",
               f"io = {q(self.io)}", ""]
        if self.dpdk:
            out += ["[dpdk]"] + [f"{k} = {value(v)}" for k, v in self.dpdk.items()] + [""]
        if self.store:
            out += ["[store]"] + [f"{k} = {value(v)}" for k, v in self.store.items()] + [""]
        if self.fleet:
            out += ["[fleet]"] + [f"{k} = {value(v)}" for k, v in self.fleet.items()] + [""]
        if self.connector_settings:
            out += ["[connectors]"]
            out += [f"{k} = {q(v)}" for k, v in self.connector_settings.items()] + [""]
        if self.tls:
            out += ["[tls]"]
            out += [f"{k} = {str(v).lower() if isinstance(v, bool) else q(v) if isinstance(v, str) else int(v)}"
                    for k, v in self.tls.items()] + [""]
        out += ["[limits]", f"drain_deadline_ms = {int(self.drain_deadline_ms)}"]
        out += [f"{k} = {int(v)}" for k, v in self.limits.items()] + [""]
        return "\n".join(out)


def make_world(pki, apps, connectors=("c1",), workers=2, with_fabrikam=True):
    """Standard world: tenant contoso (group Default) + its connectors + apps; tenant fabrikam
    (connector f1, enrolled) which must never act as a contoso connector; and a certificate for
    negative tests:
      rogue-ext  (signed by a CA no tenant configured, CN c1)
    apps: list of (name, hostname, backend "127.0.0.1:PORT").
    Returns the Topology; relay.toml is written by Env.start_relay."""
    pki.ca("users-ca", "apprelay users trust CA")
    topo = Topology(workers=workers)
    topo.tenants.append(dict(name="contoso"))
    for cid in connectors:
        topo.connectors.append(dict(tenant="contoso", id=cid, group="Default"))
    for name, hostname, backend in apps:
        crt, key = pki.leaf(f"app-{name}", "users-ca", hostname, dns=[hostname], usage="serverAuth")
        topo.apps.append(dict(tenant="contoso", name=name, hostname=hostname, cert=crt, key=key,
                              backend=backend, group="Default"))
    if with_fabrikam:
        topo.tenants.append(dict(name="fabrikam"))
        topo.connectors.append(dict(tenant="fabrikam", id="f1", group="Default"))
    pki.ca("stranger-ca", "unconfigured CA")
    pki.leaf("rogue-ext", "stranger-ca", "c1", usage="clientAuth")
    return topo


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

class Proc:
    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.pid = self.p.pid
        log(f"started {name} pid={self.pid}: {' '.join(argv)}")

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signal our own pid only; escalate to SIGKILL after timeout. Returns the exit code."""
        if self.p.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} pid={self.pid} did not exit {timeout}s after {sig!r}: SIGKILL")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=10)
        self._log.close()
        return self.p.returncode

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def read_json_file(path):
    with open(path) as f:
        return json.load(f)


class Env:
    """One test's world: temp dir, processes, logs. Use as a context manager."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"apprelay-{name}-")
        self.pki = PKI(os.path.join(self.dir, "pki"))
        self.procs = []
        self.relay = None
        self.relay_info = None
        self.stats_path = os.path.join(self.dir, "relay-stats.json")
        self.state_dir = os.path.join(self.dir, "relay-state")
        self.connector_ids = {}  # the test's name for a connector -> id the relay gave it
        self.provisioned = False
        self.failed = False
        log(f"test {name}: temp dir {self.dir}")

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            self.failed = True
        self.close()
        return False

    def start(self, name, argv):
        p = Proc(name, argv, os.path.join(self.dir, f"{name}.log"))
        self.procs.append(p)
        return p

    def wait_ready(self, proc, path, timeout=15.0):
        def ready():
            if not proc.alive():
                raise TestFailure(f"{proc.name} exited with {proc.p.returncode} before ready "
                                  f"(log {proc.log_path})")
            if os.path.exists(path):
                return read_json_file(path)
            return None
        try:
            return wait_until(ready, timeout, f"{proc.name} ready file {path}")
        except TestFailure as e:
            if not proc.alive():
                raise TestFailure(f"{proc.name} exited with {proc.p.returncode} before writing "
                                  f"its ready file")
            raise e

    # -- backends ----------------------------------------------------------------------------
    def start_backend(self, mode, name=None, threads=1, netns=None):
        require_binaries(BACKEND_BIN)
        name = name or f"backend-{mode}"
        ready = os.path.join(self.dir, f"{name}.ready")
        p = self.start(name, in_netns(netns, [BACKEND_BIN, "--listen", "127.0.0.1:0", "--mode",
                                              mode, "--ready-file", ready, "--threads",
                                              str(threads)]))
        port = self.wait_ready(p, ready)["port"]
        return p, port

    # -- relay ---------------------------------------------------------------------------------
    def start_relay(self, topo, log_level="info", provision=True, name="relay"):
        """Writes relay.toml, starts the relay, and (first time) provisions topo's objects
        through apprelayctl: groups, apps, and each connector enrolled with a token."""
        require_binaries(RELAY_BIN, CTL_BIN, CONNECTOR_BIN)
        cfg = os.path.join(self.pki.dir, "relay.toml")
        with open(cfg, "w") as f:
            f.write(topo.to_toml(self.state_dir))
        ready = os.path.join(self.dir, f"{name}.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        self.relay = self.start(name, [RELAY_BIN, "--config", cfg, "--core-map", topo.core_map(),
                                       "--ready-file", ready, "--stats-file", self.stats_path,
                                       "--log-level", log_level])
        self.relay_info = self.wait_ready(self.relay, ready, timeout=20.0)
        log(f"relay ready: {self.relay_info}")
        if provision and not self.provisioned:
            self.provision(topo)
        return self.relay_info

    # -- admin (apprelayctl) -------------------------------------------------------------------
    def ctl(self, *args, tenant="contoso", json_out=False, expect_rc=0, timeout=30):
        """Runs apprelayctl against this relay; returns (rc, stdout, stderr). Fails the test if
        rc != expect_rc (None: any)."""
        argv = [CTL_BIN, "--socket", self.relay_info["admin_socket"], "--tenant", tenant]
        if json_out:
            argv.append("--json")
        argv += [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if expect_rc is not None and r.returncode != expect_rc:
            raise TestFailure(f"apprelayctl {' '.join(map(str, args))}: exit {r.returncode} "
                              f"(expected {expect_rc}): {r.stderr.strip()} {r.stdout.strip()}")
        return r.returncode, r.stdout, r.stderr

    def ctl_json(self, *args, tenant="contoso"):
        return json.loads(self.ctl(*args, tenant=tenant, json_out=True)[1])

    def enroll(self, cid, tenant="contoso", group="Default", token=None, expect_ok=True):
        """Token from apprelayctl, then `apprelay-connector register`; returns the relay's id."""
        if token is None:
            token = self.ctl("tokens", "create", "--group", group, tenant=tenant)[1].strip()
        state = os.path.join(self.dir, f"conn-{cid}")
        r = subprocess.run([CONNECTOR_BIN, "register", "--relay",
                            f"127.0.0.1:{self.relay_info['enroll_port']}", "--token", token,
                            "--state-dir", state, "--name", cid],
                           capture_output=True, text=True, timeout=30)
        if not expect_ok:
            return r
        if r.returncode != 0:
            raise TestFailure(f"register {cid}: exit {r.returncode}: {r.stderr.strip()}")
        # "registered connector <id> in group <g> of tenant <t>"
        words = r.stdout.split()
        cid_real = words[words.index("connector") + 1]
        self.connector_ids[cid] = cid_real
        return cid_real

    def provision(self, topo):
        for g in topo.groups:
            if g["name"] != "Default":
                self.ctl("groups", "create", g["name"], tenant=g["tenant"])
        for a in topo.apps:
            self.ctl("apps", "create", a["name"], "--backend", a["backend"],
                     "--hostname", a["hostname"], "--group", a["group"],
                     "--cert", self.pki.path(a["cert"]), "--key", self.pki.path(a["key"]),
                     tenant=a["tenant"])
        for c in topo.connectors:
            self.enroll(c["id"], tenant=c["tenant"], group=c["group"])
        self.provisioned = True

    def relay_ca_path(self):
        """The relay CA (from any enrolled connector's state dir)."""
        for cid in self.connector_ids:
            p = os.path.join(self.dir, f"conn-{cid}", "ca.pem")
            if os.path.exists(p):
                return p
        raise TestFailure("no connector enrolled yet: relay CA unknown")

    @property
    def user_port(self):
        return self.relay_info["user_port"]

    @property
    def tunnel_port(self):
        return self.relay_info["tunnel_port"]

    def start_connector(self, cid, cert=None, key=None, name=None, log_level="info",
                        claim_id=None, extra=(), netns=None):
        """An enrolled connector runs from its state dir. With cert/key (PKI file names or
        absolute paths) it runs with explicit identity flags instead, claiming `claim_id`."""
        require_binaries(CONNECTOR_BIN)
        name = name or f"connector-{cid}"
        stats = os.path.join(self.dir, f"{name}-stats.json")
        if cert is None:
            argv = [CONNECTOR_BIN, "run", "--state-dir", os.path.join(self.dir, f"conn-{cid}")]
        else:
            argv = [CONNECTOR_BIN, "run", "--relay", f"127.0.0.1:{self.tunnel_port}",
                    "--cert", self.pki.path(cert), "--key", self.pki.path(key),
                    "--ca", self.relay_ca_path(), "--id", claim_id or cid,
                    "--server-name", RELAY_SERVER_NAME]
        argv += ["--stats-file", stats, "--log-level", log_level] + list(extra)
        return self.start(name, in_netns(netns, argv))

    # -- stats ---------------------------------------------------------------------------------
    def stats(self):
        """The relay's stats file, with connectors keyed by the test's names where known."""
        s = read_json_file(self.stats_path)
        names = {v: k for k, v in self.connector_ids.items()}
        s["connectors"] = {names.get(k, k): v for k, v in s.get("connectors", {}).items()}
        return s

    def counters(self):
        try:
            return self.stats().get("counters", {})
        except (OSError, ValueError):
            return {}

    def counter(self, name):
        return int(self.counters().get(name, 0))

    def wait_stats(self, timeout=10.0):
        return wait_until(lambda: os.path.exists(self.stats_path) and self.stats(), timeout,
                          "relay stats file")

    def wait_tunnels(self, n, timeout=20.0, connector=None):
        def up():
            self._relay_alive()
            s = self.stats()
            if connector is not None:
                return s.get("connectors", {}).get(connector, {}).get("tunnels", 0) >= n and s
            return s.get("tunnels_up", 0) >= n and s
        s = wait_until(up, timeout, f"tunnels_up >= {n}" + (f" for {connector}" if connector else ""))
        log(f"tunnels up: {s.get('tunnels_up')} connectors={s.get('connectors')}")
        return s

    def wait_counter(self, name, at_least, timeout=10.0):
        def reached():
            self._relay_alive()
            return self.counter(name) >= at_least
        wait_until(reached, timeout, f"counter {name} >= {at_least} (now {self.counter(name)})")
        return self.counter(name)

    def wait_counters_sum(self, names, at_least, timeout=10.0):
        def total():
            c = self.counters()
            return sum(int(c.get(n, 0)) for n in names)
        wait_until(lambda: total() >= at_least, timeout,
                   f"sum of {names} >= {at_least} (now {total()})")
        return total()

    def _relay_alive(self):
        if self.relay is not None and not self.relay.alive():
            raise TestFailure(f"relay exited with {self.relay.p.returncode}")

    # -- teardown ------------------------------------------------------------------------------
    def close(self):
        relay_rc = None
        for p in reversed(self.procs):
            rc = p.stop()
            if p is self.relay:
                relay_rc = rc
        if self.relay is not None and relay_rc not in (0, None):
            log(f"relay exit code {relay_rc} after SIGTERM (expected 0)")
            self.failed = True
        if self.failed:
            for p in self.procs:
                print(f"----- log of {p.name} (pid {p.pid}, exit {p.p.returncode}) -----")
                text = p.log_text()
                print(text[-20000:] if len(text) > 20000 else text)
            print(f"----- temp dir kept: {self.dir}")
        elif os.environ.get("APPRELAY_KEEP_TMP"):
            print(f"temp dir kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------

def pattern(n, seed=0):
    """n bytes: byte i = ((i + seed) * 31 + 7) & 0xff (the backend's source pattern at seed 0)."""
    period = bytes((((i + seed) * 31 + 7) & 0xff) for i in range(256))
    reps = n // 256 + 1
    return (period * reps)[:n]


def source_pattern_at(offset, n):
    start = offset % 256
    return pattern(n + start)[start:]


# ---------------------------------------------------------------------------------------------
# TLS user client
# ---------------------------------------------------------------------------------------------

def user_ssl_context(ca_path, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(ca_path)
    ctx.check_hostname = True
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class UserClient:
    """A TLS client on memory BIOs over a nonblocking socket, single-threaded, so one object can
    write and read at once (full duplex) and half-close: close_notify out, then keep reading."""

    def __init__(self, port, sni, ca_path, timeout=15.0, cert=None, key=None, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        ctx = user_ssl_context(ca_path, cert, key)
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=False, server_hostname=sni)
        self.pending = b""      # ciphertext not yet accepted by the socket
        self.tcp_eof = False
        self.closed_notify = False  # peer close_notify seen
        self.sent_close = False
        self._handshake(timeout)

    def _flush(self):
        if self.out.pending:
            self.pending += self.out.read()
        while self.pending:
            try:
                n = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                return False
            self.pending = self.pending[n:]
        return True

    def _fill(self, wait):
        """Read available ciphertext into the session; wait up to `wait` seconds for some."""
        # poll, not select: tests hold more than FD_SETSIZE (1024) sockets at once.
        p = select.poll()
        p.register(self.sock, select.POLLIN | (select.POLLOUT if self.pending else 0))
        ev = p.poll(max(0, int(wait * 1000)))
        if self.pending:
            self._flush()
        if not any(e & (select.POLLIN | select.POLLHUP | select.POLLERR) for _, e in ev):
            return False
        got = False
        for _ in range(64):
            try:
                data = self.sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                self.tcp_eof = True
                self.inc.write_eof()
                return True
            self.inc.write(data)
            got = True
        return got

    def _handshake(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                pass
            self._flush()
            if self.tcp_eof:
                raise ConnectionResetError("connection closed during the TLS handshake")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TLS handshake timed out")
            self._fill(min(left, 0.5))

    def read_some(self, max_bytes=256 * 1024, wait=0.0):
        """Plaintext available now (after waiting up to `wait` for ciphertext). b"" = nothing yet.
        Returns None once the peer sent close_notify. Raises on a reset / truncation."""
        end = time.monotonic() + wait
        while True:
            try:
                b = self.obj.read(max_bytes)
                if not b:
                    # CPython's SSLObject.read returns b"" (not SSLZeroReturnError) once the
                    # peer's close_notify arrived; "no data yet" is SSLWantReadError.
                    self.closed_notify = True
                    return None
                return b
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.closed_notify = True
                return None
            if self.tcp_eof:
                raise ConnectionResetError("TCP closed without close_notify (truncated stream)")
            left = end - time.monotonic()
            if left <= 0:
                return b""
            self._fill(min(left, 0.2))

    def send_all(self, data, timeout=60.0):
        self.transfer(data, expect=0, timeout=timeout)

    def transfer(self, data, expect, timeout=120.0, half_close=False, verify=None,
                 until_close=False, chunk=64 * 1024):
        """Send `data` while reading `expect` bytes back, at once (no deadlock on echo).
        half_close: send close_notify after the last byte. until_close: keep reading until
        the peer's close_notify. verify(offset, bytes) may check bytes as they arrive.
        Returns the number of bytes received."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        off = 0
        got = 0
        while True:
            # Encrypt while the socket keeps up (bounded memory).
            while off < len(view) and len(self.pending) + self.out.pending < 1 * MiB:
                n = self.obj.write(view[off:off + chunk])
                off += n
            self._flush()
            done_reading = (got >= expect and not until_close) or self.closed_notify
            if off == len(view) and not self.pending and done_reading:
                return got
            if (got < expect or until_close) and not self.closed_notify:
                while True:
                    try:
                        b = self.obj.read(256 * 1024)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        self.closed_notify = True
                        break
                    if not b:
                        self.closed_notify = True  # b"" from SSLObject.read = close_notify
                        break
                    if verify:
                        verify(got, b)
                    got += len(b)
                    if got > expect:
                        raise TestFailure(f"received {got} bytes, more than the {expect} expected")
                if self.closed_notify:
                    continue
                if self.tcp_eof:
                    raise ConnectionResetError(
                        f"TCP closed without close_notify after {got} of {expect} bytes")
            if off == len(view) and half_close and not self.sent_close:
                # Only with no complete record buffered: CPython's unwrap() calls SSL_shutdown a
                # second time, which fails on application data it finds (we keep reading after
                # our close_notify, as TLS 1.3 half-close allows).
                try:
                    self.obj.unwrap()
                except ssl.SSLWantReadError:
                    pass
                self.sent_close = True
                self._flush()
            if time.monotonic() > deadline:
                raise TimeoutError(f"transfer timed out: sent {off}/{len(view)}, "
                                   f"received {got}/{expect}")
            self._fill(0.2)

    def close(self):
        try:
            if not self.sent_close:
                try:
                    self.obj.unwrap()
                except (ssl.SSLError, ValueError):
                    pass
                self._flush()
        except OSError:
            pass
        self.sock.close()

    def abort(self):
        """Close with RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def echo_roundtrip(client, data, half_close=True, timeout=300.0):
    """Send data over an echo app, verify the echo byte-exact. Returns (seconds, MB/s)."""
    received = bytearray()
    t0 = time.monotonic()
    got = client.transfer(data, expect=len(data), timeout=timeout, half_close=half_close,
                          until_close=half_close, verify=lambda off, b: received.extend(b))
    secs = time.monotonic() - t0
    if got != len(data):
        raise TestFailure(f"echo returned {got} of {len(data)} bytes")
    if bytes(received) != bytes(data):
        idx = next(i for i in range(len(data)) if received[i] != data[i])
        raise TestFailure(f"echo mismatch at byte {idx} of {len(data)}")
    return secs, (2 * len(data) / secs / 1e6 if secs > 0 else 0.0)


def tls_handshake_error(port, sni, ca_path, timeout=10.0):
    """Try a TLS handshake; return None if it succeeded, else the error text."""
    try:
        c = UserClient(port, sni, ca_path, timeout=timeout)
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    c.close()
    return None


def in_netns(netns, argv):
    """argv run inside network namespace `netns` (None: as it is). `ip netns exec` execs the
    command, so the pid is the command's own."""
    return argv if netns is None else ["ip", "netns", "exec", netns] + list(argv)


def run_loadgen(env, sni, streams, concurrency, nbytes, threads=1, timeout=120, extra=(),
                host="127.0.0.1", netns=None):
    require_binaries(LOADGEN_BIN)
    argv = in_netns(netns, [LOADGEN_BIN, "--connect", f"{host}:{env.user_port}", "--sni", sni,
            "--ca", env.pki.path("users-ca.crt"), "--streams", str(streams),
            "--concurrency", str(concurrency), "--bytes", str(nbytes), "--mode", "echo",
            "--threads", str(threads), "--timeout", str(timeout), "--json"] + list(extra))
    log("run: " + " ".join(argv))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
    print(r.stdout, end="")
    if r.stderr:
        print(r.stderr, end="")
    result = None
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
    return r.returncode, result


def run_test(name, fn):
    """Runs fn(env) in an Env; prints PASS/FAIL; returns the process exit code."""
    t0 = time.monotonic()
    try:
        with Env(name) as env:
            fn(env)
    except Exception:
        traceback.print_exc()
        print(f"FAIL {name} ({time.monotonic() - t0:.1f}s)", flush=True)
        return 1
    print(f"PASS {name} ({time.monotonic() - t0:.1f}s)", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# CLI: demo set-up and self-test
# ---------------------------------------------------------------------------------------------

def demo(connectors, workers, streams, concurrency, nbytes):
    """scripts/demo: echo backend, relay, connectors enrolled with tokens, apprelayctl, traffic."""
    def body(env):
        _, port = env.start_backend("echo")
        cids = [f"c{i + 1}" for i in range(connectors)]
        topo = make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{port}")],
                          connectors=cids, workers=workers, with_fabrikam=False)
        info = env.start_relay(topo)
        print(f"demo: relay pid {env.relay.pid} user_port {info['user_port']} tunnel_port "
              f"{info['tunnel_port']} enroll_port {info['enroll_port']} workers {info['workers']}")
        for cid in cids:
            env.start_connector(cid)
        env.wait_tunnels(connectors * workers)
        print(f"demo: {connectors * workers} tunnels up ({connectors} connectors x {workers} "
              f"workers)\n")
        print("$ apprelayctl --tenant contoso connectors list")
        print(env.ctl("connectors", "list")[1])
        print("$ apprelayctl --tenant contoso apps list")
        print(env.ctl("apps", "list")[1])
        rc, result = run_loadgen(env, "web.contoso.test", streams, concurrency, nbytes, threads=2,
                                 timeout=120)
        check(rc == 0, f"loadgen: {streams} streams x {nbytes} bytes echoed byte-exact")
        time.sleep(0.5)  # the stats file is rewritten every 200 ms
        s = env.stats()
        c = s.get("counters", {})
        print("\nrelay counters:")
        for k in ("user_conns_accepted", "streams_opened", "streams_closed", "streams_reset",
                  "streams_retried", "streams_failed_no_connector", "streams_failed_backend",
                  "bytes_user_to_backend", "bytes_backend_to_user", "tunnels_accepted"):
            print(f"  {k:30} {c.get(k, 0)}")
        for cid, v in sorted(s.get("connectors", {}).items()):
            print(f"  connector {cid:20} tunnels={v.get('tunnels')}")
        if result:
            print(f"\ndemo result: {result.get('gbit_per_s', 0):.2f} Gbit/s, "
                  f"{result.get('streams_per_s', 0):.0f} streams/s, "
                  f"{result.get('ok', 0)} of {streams} streams ok")
    return run_test("demo", body)


def selftest():
    """Checks what does not need the relay: certificates chain and verify as the relay and a
    connector would use them (python ssl plays both ends), and the test backend's three modes."""
    rc = 0

    def certs(env):
        topo = make_world(env.pki, [("web", "web.contoso.test", "127.0.0.1:9")])
        d = env.pki.dir
        # A relay-like CA, server cert and client cert, only to check the PKI helpers here.
        env.pki.ca("relay-ca", "selftest relay CA")
        env.pki.leaf("relay", "relay-ca", RELAY_SERVER_NAME, dns=[RELAY_SERVER_NAME])
        env.pki.ca("contoso-ca", "selftest tenant CA")
        env.pki.leaf("c1", "contoso-ca", "c1", usage="clientAuth")
        for leaf, ca in [("relay", "relay-ca"), ("c1", "contoso-ca"), ("app-web", "users-ca"),
                         ("rogue-ext", "stranger-ca")]:
            r = subprocess.run(["openssl", "verify", "-CAfile", f"{ca}.crt", f"{leaf}.crt"],
                               cwd=d, capture_output=True, text=True, timeout=30)
            check(r.returncode == 0, f"{leaf}.crt verifies against {ca}.crt")
        r = subprocess.run(["openssl", "verify", "-CAfile", "contoso-ca.crt", "rogue-ext.crt"],
                           cwd=d, capture_output=True, text=True, timeout=30)
        check(r.returncode != 0, "rogue-ext.crt does not verify against contoso-ca.crt")
        toml = topo.to_toml("/tmp/state")
        check('state_dir = "/tmp/state"' in toml and "[[apps]]" not in toml,
              "relay.toml has settings only (objects go through apprelayctl)")

        # App cert: server with SNI, client trusting the users CA.
        def serve(sctx, lsock, results):
            try:
                conn, _ = lsock.accept()
                conn.settimeout(10)
                with sctx.wrap_socket(conn, server_side=True) as s:
                    results.append(("ok", s.recv(5), s.getpeercert()))
                    s.sendall(b"world")
            except Exception as e:  # reported by the client side assertion
                results.append(("err", repr(e), None))

        def tls_pair(server_cert, server_key, client_ca, sni, client_cert=None, client_key=None,
                     require_client_ca=None):
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            sctx.load_cert_chain(env.pki.path(server_cert), env.pki.path(server_key))
            if require_client_ca:
                sctx.verify_mode = ssl.CERT_REQUIRED
                sctx.load_verify_locations(env.pki.path(require_client_ca))
            lsock = socket.create_server(("127.0.0.1", 0))
            results = []
            t = threading.Thread(target=serve, args=(sctx, lsock, results))
            t.start()
            try:
                c = UserClient(lsock.getsockname()[1], sni, env.pki.path(client_ca),
                               cert=client_cert and env.pki.path(client_cert),
                               key=client_key and env.pki.path(client_key))
                c.send_all(b"hello")
                got = b""
                while len(got) < 5:
                    b = c.read_some(wait=5)
                    if not b:
                        break
                    got += b
                c.close()
                ok = got == b"world"
            except (ssl.SSLError, OSError) as e:
                ok = False
                log(f"client error: {e!r}")
            t.join(10)
            lsock.close()
            return ok, results

        ok, _ = tls_pair("app-web.crt", "app-web.key", "users-ca.crt", "web.contoso.test")
        check(ok, "app cert: TLS with SNI web.contoso.test verified by users-ca")
        ok, _ = tls_pair("app-web.crt", "app-web.key", "users-ca.crt", "other.contoso.test")
        check(not ok, "app cert: hostname mismatch is rejected by the client")
        ok, res = tls_pair("relay.crt", "relay.key", "relay-ca.crt", RELAY_SERVER_NAME,
                           "c1.crt", "c1.key", require_client_ca="contoso-ca.crt")
        check(ok and res and res[0][2] is not None, "mutual TLS: relay cert + c1 client cert")
        ok, _ = tls_pair("relay.crt", "relay.key", "relay-ca.crt", RELAY_SERVER_NAME,
                         "rogue-ext.crt", "rogue-ext.key", require_client_ca="contoso-ca.crt")
        check(not ok, "mutual TLS: a cert from an unconfigured CA is refused")

    rc |= run_test("selftest-certs", certs)

    def backend(env):
        _, echo = env.start_backend("echo")
        _, src = env.start_backend("source")
        _, sink = env.start_backend("sink")
        data = pattern(8 * MiB, seed=5)
        s = socket.create_connection(("127.0.0.1", echo), timeout=10)
        out = bytearray()
        t = threading.Thread(target=lambda: [out.extend(b) for b in iter(lambda: s.recv(MiB), b"")])
        t.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        t.join(30)
        s.close()
        check(bytes(out) == data, "backend echo: 8 MiB byte-exact, half-close answered by EOF")
        s = socket.create_connection(("127.0.0.1", src), timeout=10)
        s.sendall(struct.pack(">Q", 3 * MiB + 5))
        got = bytearray()
        for b in iter(lambda: s.recv(MiB), b""):
            got.extend(b)
        s.close()
        check(bytes(got) == pattern(3 * MiB + 5), "backend source: 3 MiB+5 of (i*31+7)&0xff")
        s = socket.create_connection(("127.0.0.1", sink), timeout=10)
        s.sendall(b"z" * 777777)
        s.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: s.recv(8), b""))
        s.close()
        check(struct.unpack(">Q", reply)[0] == 777777, "backend sink: replies the byte count")
        socks = [socket.create_connection(("127.0.0.1", echo), timeout=10) for _ in range(1000)]
        for i, x in enumerate(socks):
            x.sendall(b"%d." % i)
        ok = sum(1 for i, x in enumerate(socks) if x.recv(64) == b"%d." % i)
        for x in socks:
            x.close()
        check(ok == 1000, "backend echo: 1000 concurrent connections")

    rc |= run_test("selftest-backend", backend)
    return rc


def main(argv):
    if len(argv) >= 2 and argv[1] == "demo":
        import argparse
        ap = argparse.ArgumentParser(prog="harness.py demo")
        ap.add_argument("--connectors", type=int, default=2)
        ap.add_argument("--workers", type=int, default=2)
        ap.add_argument("--streams", type=int, default=4000)
        ap.add_argument("--concurrency", type=int, default=64)
        ap.add_argument("--bytes", type=int, default=65536)
        a = ap.parse_args(argv[2:])
        return demo(a.connectors, a.workers, a.streams, a.concurrency, a.bytes)
    if len(argv) >= 2 and argv[1] == "selftest":
        return selftest()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
