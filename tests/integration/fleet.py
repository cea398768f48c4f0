#!/usr/bin/env python3
"""A relay fleet for integration tests: a real etcd cluster (etcd_cluster.py) and several
apprelay processes with [store] kind = "etcd" sharing one prefix, each with its own state dir,
ready/stats files and admin socket. Built on harness.Env (temp dir, processes, PKI, logs).

    with h.Env("fleet") as env, EtcdCluster(3) as etcd:
        a = FleetRelay(env, "relay-a", etcd.endpoints).start()
        b = FleetRelay(env, "relay-b", etcd.endpoints).start()
        a.use()                 # env.ctl / env.enroll now talk to relay-a
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class FleetRelay:
    """One relay host of the fleet (a process on loopback)."""

    def __init__(self, env, name, endpoints, region="", workers=1, prefix="/apprelay/",
                 timeout_ms=1000, lease_ttl_s=4, extra_limits=None, connector_settings=None):
        self.env = env
        self.name = name
        self.topo = h.Topology(workers=workers)
        self.topo.store = {"kind": "etcd", "endpoints": list(endpoints), "prefix": prefix,
                           "timeout_ms": timeout_ms}
        self.topo.fleet = {"node": name, "region": region, "lease_ttl_s": lease_ttl_s}
        if extra_limits:
            self.topo.limits.update(extra_limits)
        if connector_settings:
            self.topo.connector_settings.update(connector_settings)
        self.state_dir = os.path.join(env.dir, f"{name}-state")
        self.stats_path = os.path.join(env.dir, f"{name}-stats.json")
        self.cfg = os.path.join(env.dir, f"{name}.toml")
        self.proc = None
        self.info = None

    def start(self, log_level="info", timeout=20.0):
        h.require_binaries(h.RELAY_BIN, h.CTL_BIN, h.CONNECTOR_BIN)
        with open(self.cfg, "w") as f:
            f.write(self.topo.to_toml(self.state_dir))
        ready = os.path.join(self.env.dir, f"{self.name}.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        self.proc = self.env.start(self.name, [
            h.RELAY_BIN, "--config", self.cfg, "--core-map", self.topo.core_map(),
            "--ready-file", ready, "--stats-file", self.stats_path, "--log-level", log_level])
        self.info = self.env.wait_ready(self.proc, ready, timeout=timeout)
        h.log(f"{self.name} ready: {self.info}")
        return self

    def use(self):
        """Points env.ctl / env.enroll / env.stats at this relay."""
        self.env.relay = self.proc
        self.env.relay_info = self.info
        self.env.stats_path = self.stats_path
        return self

    @property
    def user_port(self):
        return self.info["user_port"]

    @property
    def tunnel_port(self):
        return self.info["tunnel_port"]

    def ctl(self, *args, tenant="contoso", json_out=False, expect_rc=0, timeout=30):
        argv = [h.CTL_BIN, "--socket", self.info["admin_socket"], "--tenant", tenant]
        if json_out:
            argv.append("--json")
        argv += [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if expect_rc is not None and r.returncode != expect_rc:
            raise h.TestFailure(f"{self.name}: apprelayctl {' '.join(map(str, args))}: exit "
                                f"{r.returncode} (expected {expect_rc}): {r.stderr.strip()} "
                                f"{r.stdout.strip()}")
        return r.returncode, r.stdout, r.stderr

    def ctl_json(self, *args, tenant="contoso"):
        return json.loads(self.ctl(*args, tenant=tenant, json_out=True)[1])

    def admin(self, method, path, body=None, timeout=30):
        """One raw admin API request on the UNIX socket: (status, parsed JSON body)."""
        payload = json.dumps(body).encode() if body is not None else b""
        req = (f"{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
               ).encode() + payload
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.info["admin_socket"])
            s.sendall(req)
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(rest) if rest.strip() else {}

    def stats(self):
        return h.read_json_file(self.stats_path)

    def counter(self, name):
        try:
            return int(self.stats().get("counters", {}).get(name, 0))
        except (OSError, ValueError):
            return 0

    def store_health(self):
        try:
            return self.stats().get("store", {})
        except (OSError, ValueError):
            return {}

    def config_version(self):
        try:
            return int(self.stats().get("config_version", -1))
        except (OSError, ValueError):
            return -1

    def tunnels_up(self):
        try:
            return int(self.stats().get("tunnels_up", 0))
        except (OSError, ValueError):
            return 0

    def log_text(self):
        return self.proc.log_text() if self.proc else ""

    def stop(self, sig=None, timeout=10.0):
        if self.proc is not None:
            if sig is None:
                self.proc.stop(timeout=timeout)
            else:
                self.proc.stop(sig=sig, timeout=timeout)


WEB_SNI = "web.contoso.test"


def publish_web(env, relay, group="Default"):
    """An echo backend published as app `web` (WEB_SNI, certificate from the users' trust CA)
    through `relay`'s admin API. Returns the backend's port."""
    env.pki.ca("users-ca", "apprelay users trust CA")
    crt, key = env.pki.leaf("app-web", "users-ca", WEB_SNI, dns=[WEB_SNI], usage="serverAuth")
    _, port = env.start_backend("echo")
    relay.ctl("apps", "create", "web", "--backend", f"127.0.0.1:{port}", "--hostname", WEB_SNI,
              "--cert", env.pki.path(crt), "--key", env.pki.path(key), "--group", group)
    return port


def echo_through(env, port, nbytes=4096, seed=1):
    """One user request: an echo of `nbytes` through the relay's user port, byte-exact."""
    c = h.UserClient(port, WEB_SNI, env.pki.path("users-ca.crt"), timeout=10.0)
    try:
        h.echo_roundtrip(c, h.pattern(nbytes, seed=seed), timeout=20.0)
    finally:
        c.close()


def pin_to_one_relay(env, cid):
    """Drops the fleet list from a connector's relay.json: it then dials only the relay it
    enrolled at, as a connector older than fleets does (tests of presence per relay use it)."""
    path = os.path.join(env.dir, f"conn-{cid}", "relay.json")
    with open(path) as f:
        doc = json.load(f)
    doc.pop("relays", None)
    with open(path, "w") as f:
        json.dump(doc, f)


def run_tests(tests):
    """The CLI of a fleet test file: the named tests (all by default); exit status."""
    names = sys.argv[1:] or list(tests)
    rc = 0
    for name in names:
        rc |= h.run_test(f"fleet_{name}", tests[name])
    return rc


def enroll_at(env, relay, cid, group="Default", tenant="contoso"):
    """Token from `relay`, redeemed at `relay`'s enrollment port; the connector's state dir then
    points at that relay's tunnel listener."""
    relay.use()
    return env.enroll(cid, tenant=tenant, group=group)


class RequestLog:
    """A bounded load of user requests (TLS echo round trips through a relay), each outcome
    logged: (t, relay_port, ok, error). Runs in a thread until stop() or `limit` requests."""

    def __init__(self, env, ports, sni, ca_path, nbytes=1024, interval=0.01, limit=100_000,
                 max_seconds=600):
        self.env = env
        self.ports = list(ports)
        self.sni = sni
        self.ca = ca_path
        self.nbytes = nbytes
        self.interval = interval
        self.limit = limit
        self.max_seconds = max_seconds
        self.outcomes = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _one(self, port, i):
        c = None
        try:
            c = h.UserClient(port, self.sni, self.ca, timeout=10.0)
            h.echo_roundtrip(c, h.pattern(self.nbytes, seed=i), timeout=10.0)
            return True, None
        except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
            return False, f"{type(e).__name__}: {e}"
        finally:
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass

    def _run(self):
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set() and i < self.limit and time.monotonic() - t0 < self.max_seconds:
            port = self.ports[i % len(self.ports)]
            ok, err = self._one(port, i)
            self.outcomes.append((time.monotonic(), port, ok, err))
            i += 1
            if self.interval:
                self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        return self

    def failures(self):
        return [o for o in self.outcomes if not o[2]]

    def finish(self, what, at_least):
        """Stops the load and checks it: at least `at_least` requests, none failed."""
        self.stop()
        h.log(f"{what}: {self.summary()}")
        h.check(len(self.outcomes) >= at_least, f"the load ran ({len(self.outcomes)} requests)")
        h.check(not self.failures(), f"zero failed requests {what}: {self.summary()}")

    def summary(self):
        f = self.failures()
        return f"{len(self.outcomes)} requests, {len(f)} failed" + (
            f" (first: {f[0][3]})" if f else "")


def demo():
    """scripts/demo --fleet: 3 etcd members, 2 relays, 2 connectors on loopback; traffic through
    each relay, then relay-b killed and traffic again through relay-a. Prints what happened;
    exits non-zero if any stream failed."""
    from etcd_cluster import EtcdCluster

    sni = "web.contoso.test"
    failed = 0

    def body(env):
        nonlocal failed
        with EtcdCluster(3) as etcd:
            h.log(f"etcd members: {etcd.endpoints_csv}")
            env.pki.ca("users-ca", "apprelay users trust CA")
            crt, key = env.pki.leaf("app-web", "users-ca", sni, dns=[sni], usage="serverAuth")
            _, port = env.start_backend("echo")
            a = FleetRelay(env, "relay-a", etcd.endpoints, region="eu").start()
            b = FleetRelay(env, "relay-b", etcd.endpoints, region="eu").start()
            h.wait_until(lambda: len(a.ctl_json("relays", "list")["relays"]) == 2, 10,
                         "both relays in presence")
            a.ctl("apps", "create", "web", "--backend", f"127.0.0.1:{port}", "--hostname", sni,
                  "--cert", env.pki.path(crt), "--key", env.pki.path(key))
            a.use()
            for cid in ("c1", "c2"):
                env.enroll(cid)
                env.start_connector(cid)

            def attached():
                cs = a.ctl_json("connectors", "list")["connectors"]
                return len(cs) == 2 and all(len(c.get("relays", [])) == 2 for c in cs)
            h.wait_until(attached, 20, "each connector on both relays")
            print(a.ctl("relays", "list")[1])
            print(a.ctl("connectors", "list")[1])

            def load(relay, label):
                nonlocal failed
                relay.use()
                rc, r = h.run_loadgen(env, sni, 2000, 32, 16384)
                r = r or {"failed": 2000}
                failed += int(r.get("failed", 0)) + (rc != 0)
                print(f"{label}: {r.get('ok')} streams ok, {r.get('failed')} failed, "
                      f"{r.get('streams_per_s', 0):.0f} streams/s, p99 "
                      f"{r.get('p99_ms', 0):.1f} ms")
            load(a, "through relay-a")
            load(b, "through relay-b")
            b.stop(sig=9)
            print("relay-b killed (SIGKILL)")
            load(a, "through relay-a, relay-b dead")
            h.wait_until(lambda: len(a.ctl_json("relays", "list")["relays"]) == 1, 10,
                         "relay-b's presence lease expires")
            print(a.ctl("relays", "list")[1])
            print(a.ctl("connectors", "list")[1])
    rc = h.run_test("fleet_demo", body)
    print(f"fleet demo: {'ok' if rc == 0 and failed == 0 else 'FAILED'} "
          f"({failed} failed streams)")
    return 1 if rc != 0 or failed else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["demo"]:
        sys.exit(demo())
    print("usage: fleet.py demo", file=sys.stderr)
    sys.exit(2)
