#!/usr/bin/env python3
"""Connector updates with signed packages (issue 15 item 5; dataplane/connector/UPDATE.md).

The update key is made with the openssl CLI (genpkey -algorithm ed25519, pkey -pubout); packages
with `apprelay-connector update-sign`. The connector under update runs from a copy of the binary
in the test's dir (bin/apprelay-connector), never from the build dir. The "new" connector is the
same program with a trailer appended (other bytes, other SHA-256, same code) and reports 0.2.0
through APPRELAY_CONNECTOR_VERSION_OVERRIDE in the updater's environment (test-only; the updater
starts the new binary, which inherits it).

1. update_applied: group Default = c1 + c2 (2 relay workers), a paced 4 MiB echo stream in
   flight on c1, and 4 user threads looping 16 KiB echo streams for the whole update. `update` on c1: verified, staged, draining, drained, installed,
   started, tunnel_up, update_applied in that order, exit 0; the old c1 began draining with the
   long stream in flight, which finished byte-exact, and exited 0 with streams_cut=0; run.json names a new live pid whose /proc exe is the installed path, which
   holds the package's bytes (PATH.prev the old ones); its stats and the relay's connector list
   report 0.2.0 with 2 tunnels; the new c1 takes streams; the user loop saw ZERO failed streams.
2. update_refused: a package signed by another key, one with its binary truncated, one without
   manifest.sig, one for aarch64, one whose binary was altered after signing, one not newer
   (0.1.0): each exits 1 with "update refused: <its reason>", and c1 is untouched: same pid,
   2 tunnels, the installed binary byte-identical, no PATH.new / PATH.prev left; a stream echoes.
3. update_rolled_back: a correctly signed 0.2.0 that is a shell script exiting 1: `update
   --deadline-s 10` exits 3 within the deadline + 5 s, logs update_failed then rolled_back; the
   installed binary is byte-identical to the old one, a new pid runs from it with version 0.1.0
   and 2 tunnels up, and a stream echoes through it."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import groups_helpers as g  # noqa: E402

SNI = "web.contoso.test"
OLD_VERSION = "0.1.0"  # meson.build's project version: what the running connector reports
NEW_VERSION = "0.2.0"
STEPS = ["verified", "staged", "draining", "drained", "installed", "started", "tunnel_up",
         "update_applied"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Updatable:
    """c1 running from an installed copy of the connector binary, plus the update key pair."""

    def __init__(self, env, cids):
        self.env = env
        _, port = env.start_backend("echo")
        topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.1:{port}")], connectors=cids,
                            workers=2, with_fabrikam=False)
        env.start_relay(topo)
        self.bin_dir = os.path.join(env.dir, "bin")
        os.makedirs(self.bin_dir)
        self.install = os.path.join(self.bin_dir, "apprelay-connector")
        shutil.copy2(h.CONNECTOR_BIN, self.install)
        self.old_bytes = read(self.install)
        self.state = os.path.join(env.dir, "conn-c1")
        self.stats = g.conn_stats_path(env, "c1")
        self.c1 = env.start("connector-c1", [self.install, "run", "--state-dir", self.state,
                                             "--stats-file", self.stats, "--log-level", "info"])
        for cid in cids:
            if cid != "c1":
                env.start_connector(cid)
        for cid in cids:
            env.wait_tunnels(2, connector=cid)
        self.wait_conn_stats(self.c1.pid, OLD_VERSION)
        keys = os.path.join(env.dir, "keys")
        os.makedirs(keys)
        self.key = os.path.join(keys, "update-key.pem")
        self.pub = os.path.join(keys, "update-pub.pem")
        h._openssl(["genpkey", "-algorithm", "ed25519", "-out", self.key], keys)
        h._openssl(["pkey", "-in", self.key, "-pubout", "-out", self.pub], keys)
        self.adopted = []  # connectors the updater started: stopped by pid at the end

    def conn_stats(self):
        try:
            return h.read_json_file(self.stats)
        except (OSError, ValueError):
            return {}

    def wait_conn_stats(self, pid, version, tunnels=2, timeout=15):
        def ok():
            s = self.conn_stats()
            return (s.get("pid") == pid and s.get("version") == version and
                    s.get("tunnels_up", 0) >= tunnels and s)
        return h.wait_until(ok, timeout, f"c1 stats: pid {pid}, version {version}, "
                                         f"{tunnels} tunnels (now {self.conn_stats()})")

    def new_binary(self, name, data=None):
        """The connector's bytes plus a trailer (same code, other hash), or `data`."""
        path = os.path.join(self.env.dir, name)
        with open(path, "wb") as f:
            f.write(data if data is not None else
                    self.old_bytes + f"\n# apprelay test build {name}\n".encode())
        os.chmod(path, 0o755)
        return path

    def sign(self, binary, out, version=NEW_VERSION, key=None, arch=None):
        argv = [h.CONNECTOR_BIN, "update-sign", "--key", key or self.key, "--binary", binary,
                "--version", version, "--out", os.path.join(self.env.dir, out)]
        if arch:
            argv += ["--arch", arch]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise h.TestFailure(f"update-sign {out}: exit {r.returncode}: {r.stderr.strip()}")
        return os.path.join(self.env.dir, out)

    def update(self, package, deadline_s=20, version_override=None, name="update"):
        """Runs `apprelay-connector update` (from the build dir); returns (rc, output, seconds).
        Its output also goes to <name>.log in the test dir."""
        env = dict(os.environ)
        env.pop("APPRELAY_CONNECTOR_VERSION_OVERRIDE", None)
        if version_override:
            env["APPRELAY_CONNECTOR_VERSION_OVERRIDE"] = version_override
        argv = [h.CONNECTOR_BIN, "update", "--state-dir", self.state, "--package", package,
                "--pubkey", self.pub, "--install", self.install, "--deadline-s", str(deadline_s),
                "--drain-timeout-s", "20",
                "--log", os.path.join(self.env.dir, "connector-c1-updated.log")]
        h.log("run: " + " ".join(argv))
        t0 = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=deadline_s + 60, env=env)
        secs = time.monotonic() - t0
        out = r.stdout + r.stderr
        with open(os.path.join(self.env.dir, f"{name}.log"), "a") as f:
            f.write(out)
        print(out, end="")
        run = h.read_json_file(os.path.join(self.state, "run.json"))
        if run["pid"] != self.c1.pid and run["pid"] not in self.adopted:
            self.adopted.append(run["pid"])
        return r.returncode, out, secs

    def stop_adopted(self):
        """Stops the connectors the updater started (their cmdline names our state dir)."""
        for pid in self.adopted:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.state.encode() not in f.read():
                        continue
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
            end = time.monotonic() + 10
            while time.monotonic() < end and pid_alive(pid):
                time.sleep(0.05)
            if pid_alive(pid):
                h.log(f"adopted connector pid {pid} still running 10 s after SIGTERM: SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def pid_alive(pid):
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def step_order(out):
    """The updater's step events, in the order logged."""
    names = []
    for line in out.splitlines():
        ev = g.parse_logfmt(line)
        if ev.get("comp") == "updater" and "event" in ev:
            names.append(ev["event"])
    return names


LONG_BYTES = 4 * h.MiB
LONG_CHUNK = 256 * 1024
LONG_PACE_S = 0.1  # 16 paced steps: the stream stays in flight for about 2 s of the update


def in_flight(env, cid):
    c = g.conn_counters(env, cid)
    return (int(c.get("streams_opened", 0)) - int(c.get("streams_closed", 0)) -
            int(c.get("streams_reset", 0)))


def open_long_stream_on(env, cid, tries=8):
    """A paced 4 MiB echo stream carried by connector `cid` (streams that land elsewhere are
    closed and another is opened; bounded by `tries`)."""
    for i in range(tries):
        s = g.PacedEcho(env, SNI, LONG_BYTES, chunk=LONG_CHUNK, seed=11 + i)
        if not s.step():
            raise h.TestFailure(f"long stream broke at once: {s.error}")
        time.sleep(0.5)  # connector stats are rewritten every 200 ms
        if in_flight(env, cid) >= 1:
            h.check(True, f"a {LONG_BYTES // h.MiB} MiB stream is in flight on {cid}")
            return s
        s.close()
        time.sleep(0.5)
    raise h.TestFailure(f"no long stream landed on {cid} in {tries} tries")


class StreamLoop:
    """`threads` users each looping fresh 16 KiB echo streams until stopped (bounded: 120 s and
    20000 streams per thread). Counts ok and failed streams."""

    def __init__(self, env, threads=4):
        self.env = env
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0
        self.mu = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, i):
        end = time.monotonic() + 120
        for n in range(20000):
            if self.stop.is_set() or time.monotonic() > end:
                return
            good = g.echo_ok(self.env, SNI, 16 * 1024, seed=(i * 7 + n) % 251)
            with self.mu:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1

    def counts(self):
        with self.mu:
            return self.ok, self.failed

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return self.counts()


def update_applied(env):
    u = Updatable(env, ("c1", "c2"))
    loop = None
    try:
        pkg = u.sign(u.new_binary("new-connector"), "pkg-new")
        pkg_sha = sha256(os.path.join(pkg, "apprelay-connector"))
        long_stream = open_long_stream_on(env, "c1")
        loop = StreamLoop(env)
        h.wait_until(lambda: loop.counts()[0] >= 20, 20, "20 streams echoed before the update")
        before = loop.counts()
        old_pid = u.c1.pid
        result = {}
        updater = threading.Thread(
            target=lambda: result.update(r=u.update(pkg, version_override=NEW_VERSION)))
        updater.start()
        # The long stream goes on, paced, while c1 drains: the drain must wait for it.
        while long_stream.sent < len(long_stream.data) and updater.is_alive():
            if not long_stream.step():
                break
            time.sleep(LONG_PACE_S)
        outcome = long_stream.finish(timeout=30)
        long_stream.close()
        updater.join(60)
        h.check(not updater.is_alive(), "the updater finished")
        rc, out, secs = result["r"]
        during = loop.counts()[0] - before[0]
        h.check(outcome == "ok", f"the {LONG_BYTES // h.MiB} MiB stream in flight on the old c1 "
                                 f"finished byte-exact with close_notify ({outcome}, "
                                 f"error {long_stream.error})")
        h.check(rc == 0, f"update exited 0 in {secs:.1f} s")
        h.check(during >= 10, f"{during} streams echoed while the updater ran")
        steps = [s for s in step_order(out) if s in STEPS]
        h.check(steps == STEPS, f"the updater logged {' -> '.join(steps)}")
        rc_old = u.c1.p.wait(timeout=10)
        drain = g.events(u.c1.log_text(), "draining")
        h.check(drain and int(drain[0].get("streams", 0)) >= 1,
                f"the old c1 began draining with the long stream in flight ({drain})")
        h.check(rc_old == 0 and g.events(u.c1.log_text(), "stopped", streams_cut="0"),
                f"the old c1 (pid {old_pid}) drained "
                f"({drain[0].get('streams') if drain else '?'} streams in flight) and exited "
                f"{rc_old} with streams_cut=0")
        run = h.read_json_file(os.path.join(u.state, "run.json"))
        new_pid = run["pid"]
        h.check(new_pid != old_pid and pid_alive(new_pid),
                f"run.json names the new c1, pid {new_pid}, alive")
        h.check(os.readlink(f"/proc/{new_pid}/exe") == u.install,
                f"pid {new_pid} runs {u.install}")
        h.check(sha256(u.install) == pkg_sha and read(u.install + ".prev") == u.old_bytes and
                not os.path.exists(u.install + ".new"),
                "the installed binary is the package's; PATH.prev holds the old bytes")
        u.wait_conn_stats(new_pid, NEW_VERSION)
        h.check(True, f"the new c1 reports {NEW_VERSION} with 2 tunnels up")

        def relay_version():
            listed = {c["id"]: c for c in env.ctl_json("connectors", "list")["connectors"]}
            return listed[env.connector_ids["c1"]].get("version") == NEW_VERSION
        h.wait_until(relay_version, 10, f"the relay lists c1 at {NEW_VERSION}")
        h.check(True, f"apprelayctl connectors list shows c1 at {NEW_VERSION}")
        h.wait_until(lambda: g.conn_counter(env, "c1", "streams_opened") > 0, 15,
                     "the new c1 to take streams")
        h.check(True, f"the new c1 took {g.conn_counter(env, 'c1', 'streams_opened')} streams")
        ok, failed = loop.finish()
        loop = None
        h.check(ok - before[0] >= 20, f"{ok - before[0]} streams echoed during and after the "
                                      f"update ({ok} in all)")
        h.check(failed == 0, f"ZERO failed streams while c1 updated ({failed} of {ok + failed})")
    finally:
        if loop is not None:
            loop.finish()
        u.stop_adopted()


def update_refused(env):
    u = Updatable(env, ("c1",))
    try:
        new = u.new_binary("new-connector")
        good = u.sign(new, "pkg-good")
        other_key = os.path.join(env.dir, "keys", "other-key.pem")
        h._openssl(["genpkey", "-algorithm", "ed25519", "-out", other_key], env.dir)

        cases = []
        cases.append(("bad signature", u.sign(new, "pkg-other-key", key=other_key),
                      "update refused: wrong signature: manifest.sig does not verify"))
        trunc = os.path.join(env.dir, "pkg-truncated")
        shutil.copytree(good, trunc)
        b = os.path.join(trunc, "apprelay-connector")
        size = os.path.getsize(b)
        os.truncate(b, size // 2)
        cases.append(("truncated", trunc,
                      f"update refused: binary truncated: {size // 2} of {size} bytes"))
        unsigned = os.path.join(env.dir, "pkg-unsigned")
        shutil.copytree(good, unsigned)
        os.unlink(os.path.join(unsigned, "manifest.sig"))
        cases.append(("unsigned", unsigned, "update refused: unsigned package: no manifest.sig"))
        cases.append(("wrong architecture", u.sign(new, "pkg-arm", arch="aarch64"),
                      "update refused: wrong architecture: package is for aarch64, this host "
                      f"is {os.uname().machine}"))
        altered = os.path.join(env.dir, "pkg-altered")
        shutil.copytree(good, altered)
        with open(os.path.join(altered, "apprelay-connector"), "r+b") as f:
            f.seek(size // 3)
            byte = f.read(1)
            f.seek(size // 3)
            f.write(bytes([byte[0] ^ 0xff]))
        cases.append(("hash mismatch", altered, "update refused: hash mismatch: binary sha256"))
        cases.append(("not newer", u.sign(new, "pkg-old", version=OLD_VERSION),
                      f"update refused: version {OLD_VERSION} is not newer than the running "
                      f"{OLD_VERSION}"))
        for what, pkg, message in cases:
            rc, out, secs = u.update(pkg, version_override=NEW_VERSION, name=f"update-{what}")
            h.check(rc == 1 and message in out, f"{what}: exit {rc}, \"{message}\"")
            h.check(u.c1.alive() and read(u.install) == u.old_bytes and
                    not os.path.exists(u.install + ".new") and
                    not os.path.exists(u.install + ".prev"),
                    f"{what}: c1 pid {u.c1.pid} runs on, its binary untouched")
            s = u.conn_stats()
            h.check(s.get("pid") == u.c1.pid and s.get("tunnels_up") == 2 and
                    h.read_json_file(os.path.join(u.state, "run.json"))["pid"] == u.c1.pid,
                    f"{what}: c1 still has 2 tunnels, run.json unchanged")
        h.check(not g.events(u.c1.log_text(), "draining"), "c1 was never asked to drain")
        h.check(g.echo_ok(env, SNI), "a stream echoes through c1 after the refusals")
    finally:
        u.stop_adopted()


def update_rolled_back(env):
    u = Updatable(env, ("c1",))
    try:
        broken = u.new_binary("broken-connector",
                              b"#!/bin/sh\necho 'broken build: exiting' >&2\nexit 1\n")
        pkg = u.sign(broken, "pkg-broken")
        old_pid = u.c1.pid
        deadline = 10
        rc, out, secs = u.update(pkg, deadline_s=deadline)
        h.check(rc == 3, f"update exited {rc} (3 = rolled back) after {secs:.1f} s")
        h.check(secs <= deadline + 5, f"rolled back within the deadline + 5 s ({secs:.1f} s)")
        steps = step_order(out)
        h.check("update_failed" in steps and "rolled_back" in steps and
                steps.index("update_failed") < steps.index("rolling_back") <
                steps.index("rolled_back"),
                f"the updater logged update_failed -> rolling_back -> rolled_back ({steps})")
        h.check("exited (code 1)" in out, "the failure names the new binary's exit code 1")
        h.check(read(u.install) == u.old_bytes and not os.path.exists(u.install + ".prev") and
                not os.path.exists(u.install + ".new"),
                "the installed binary is byte-identical to the old one again")
        run = h.read_json_file(os.path.join(u.state, "run.json"))
        new_pid = run["pid"]
        h.check(new_pid != old_pid and pid_alive(new_pid) and
                os.readlink(f"/proc/{new_pid}/exe") == u.install,
                f"the old binary runs again as pid {new_pid} from {u.install}")
        u.wait_conn_stats(new_pid, OLD_VERSION, timeout=5)
        h.check(True, f"pid {new_pid} reports {OLD_VERSION} with 2 tunnels up")
        h.check(g.echo_ok(env, SNI), "a stream echoes through the restored c1")

        # A new binary that runs but never dials: the deadline rolls it back, and the updater
        # now drains the connector the first rollback started.
        hung = u.new_binary("hung-connector", b"#!/bin/sh\nexec sleep 120\n")
        pkg = u.sign(hung, "pkg-hung")
        deadline = 5
        rc, out, secs = u.update(pkg, deadline_s=deadline, name="update-hung")
        h.check(rc == 3 and "brought no tunnel up within 5 s" in out,
                f"a hung 0.2.0 is rolled back at its {deadline} s deadline (exit {rc}, "
                f"{secs:.1f} s)")
        h.check(secs <= deadline + 5 + 1, f"rolled back within the deadline + 5 s of stopping "
                                          f"the hung process ({secs:.1f} s)")
        h.check(not pid_alive(new_pid), f"the connector pid {new_pid} it replaced is gone")
        h.check(read(u.install) == u.old_bytes, "the installed binary is the old one again")
        run = h.read_json_file(os.path.join(u.state, "run.json"))
        h.check(run["pid"] not in (old_pid, new_pid) and pid_alive(run["pid"]),
                f"the old binary runs again as pid {run['pid']}")
        u.wait_conn_stats(run["pid"], OLD_VERSION, timeout=5)
        h.check(g.echo_ok(env, SNI), "a stream echoes through it")
    finally:
        u.stop_adopted()


CASES = {"applied": ("update_applied", update_applied),
         "refused": ("update_refused", update_refused),
         "rolled_back": ("update_rolled_back", update_rolled_back)}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    rc = 0
    for n in names:
        rc |= h.run_test(*CASES[n])
    sys.exit(rc)
