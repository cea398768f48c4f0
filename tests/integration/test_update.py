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
   and 2 tunnels up, and a stream echoes through it.
4. update_supervised: `update --supervised` (UPDATE.md, "Under systemd") with c1 kept running by
   restart_always.py, a stand-in for systemd's Restart=always (restarts it after any exit, and on
   SIGUSR1 the way `systemctl restart` does); the supervisor gives a child the version its bytes
   map to (APPRELAY_CONNECTOR_VERSION_OVERRIDE), since here the updater starts nothing. Group
   Default = c1 + c2, 4 user threads looping 16 KiB echo streams through both updates:
   a. 0.1.0 -> 0.2.0 by SIGTERM: verified, staged, installed, draining, drained, started,
      tunnel_up, update_applied in that order, exit 0; the old c1 exited 0 with streams_cut=0;
      the new pid in run.json is the supervisor's child (its parent, the `started` event's parent
      and the supervisor's last start), not the updater's; it runs PATH (the package's bytes,
      PATH.prev the old ones) and reports 0.2.0 with 2 tunnels; the relay lists c1 at 0.2.0.
   b. 0.2.0 -> 0.3.0 by --restart-cmd (appends to a marker file, SIGUSR1 to the supervisor): the
      command ran once (restart_cmd exit code 0), the supervisor restarted c1, which reports
      0.3.0; the loop saw ZERO failed streams across a and b, and the new c1 takes streams.
   c. a 0.4.0 that is a shell script exiting 1, with --restart-cmd and --deadline-s 8: exit 3
      (no new pid recorded itself), update_failed -> rolling_back -> rolled_back, the command ran
      twice more (update, rollback), the supervisor did run the broken PATH, PATH holds the 0.3.0
      bytes again with no PATH.prev / PATH.new, and a new child of the supervisor reports 0.3.0
      with 2 tunnels; a stream echoes.
   d. a 0.4.0 that is the real connector reporting 0.1.0 (no version for its bytes), without
      --restart-cmd: exit 3 ("reports version 0.1.0, expected 0.4.0"); the updater SIGTERMed that
      pid (it exited 0, drained), the supervisor brought 0.3.0 back from the restored PATH."""
import hashlib
import json
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
NEWER_VERSION = "0.3.0"
BROKEN_VERSION = "0.4.0"
RESTART_ALWAYS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "restart_always.py")
STEPS = ["verified", "staged", "draining", "drained", "installed", "started", "tunnel_up",
         "update_applied"]
# --supervised installs first, then has the supervisor restart the connector.
SUPERVISED_STEPS = ["verified", "staged", "installed", "draining", "drained", "started",
                    "tunnel_up", "update_applied"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Updatable:
    """c1 running from an installed copy of the connector binary, plus the update key pair.
    supervised: c1 is run by restart_always.py (self.sup) instead of the test (self.c1 is None;
    self.c1_pid is the pid run.json names)."""

    def __init__(self, env, cids, supervised=False):
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
        argv = [self.install, "run", "--state-dir", self.state, "--stats-file", self.stats,
                "--log-level", "info"]
        self.sup = self.c1 = None
        self.versions = os.path.join(env.dir, "versions.json")
        self.sup_status = os.path.join(env.dir, "supervisor-c1.json")
        if supervised:
            self.sup = env.start("supervisor-c1", [
                sys.executable, RESTART_ALWAYS, "--status", self.sup_status,
                "--versions", self.versions, "--restart-sec", "1", "--max-starts", "40",
                "--max-seconds", "110", "--stop-timeout-s", "30", "--"] + argv)
            self.c1_pid = self.wait_supervised_pid(())
        else:
            self.c1 = env.start("connector-c1", argv)
            self.c1_pid = self.c1.pid
        for cid in cids:
            if cid != "c1":
                env.start_connector(cid)
        for cid in cids:
            env.wait_tunnels(2, connector=cid)
        self.wait_conn_stats(self.c1_pid, OLD_VERSION)
        keys = os.path.join(env.dir, "keys")
        os.makedirs(keys)
        self.key = os.path.join(keys, "update-key.pem")
        self.pub = os.path.join(keys, "update-pub.pem")
        h._openssl(["genpkey", "-algorithm", "ed25519", "-out", self.key], keys)
        h._openssl(["pkey", "-in", self.key, "-pubout", "-out", self.pub], keys)
        self.adopted = []  # connectors the updater started: stopped by pid at the end
        self.updater_pids = []

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

    def sup_starts(self):
        try:
            return h.read_json_file(self.sup_status)["starts"]
        except (OSError, ValueError, KeyError):
            return []

    def wait_supervised_pid(self, replaced, timeout=20):
        """The pid run.json names once it is a live child of the supervisor not in `replaced`."""
        def found():
            try:
                pid = h.read_json_file(os.path.join(self.state, "run.json"))["pid"]
            except (OSError, ValueError, KeyError):
                return None
            return pid if pid not in replaced and parent_of(pid) == self.sup.pid else None
        return h.wait_until(found, timeout, f"run.json to name a child of the supervisor "
                                            f"(pid {self.sup.pid}) other than {replaced}")

    def set_versions(self, versions):
        """{sha256: version} the supervisor gives its children (restart_always.py --versions)."""
        with open(self.versions + ".tmp", "w") as f:
            json.dump(versions, f)
        os.rename(self.versions + ".tmp", self.versions)

    def stop_supervisor(self):
        """SIGTERM to the supervisor, which stops c1 (it drains) and exits."""
        if self.sup is not None:
            rc = self.sup.stop(timeout=40)
            h.log(f"supervisor pid {self.sup.pid} exited {rc}")

    def update(self, package, deadline_s=20, version_override=None, name="update", extra=()):
        """Runs `apprelay-connector update` (from the build dir) with `extra` flags; returns (rc,
        output, seconds). Its output also goes to <name>.log in the test dir; its pid is
        appended to self.updater_pids."""
        env = dict(os.environ)
        env.pop("APPRELAY_CONNECTOR_VERSION_OVERRIDE", None)
        if version_override:
            env["APPRELAY_CONNECTOR_VERSION_OVERRIDE"] = version_override
        argv = [h.CONNECTOR_BIN, "update", "--state-dir", self.state, "--package", package,
                "--pubkey", self.pub, "--install", self.install, "--deadline-s", str(deadline_s),
                "--drain-timeout-s", "20",
                "--log", os.path.join(self.env.dir, "connector-c1-updated.log")] + list(extra)
        h.log("run: " + " ".join(argv))
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
        self.updater_pids.append(p.pid)
        try:
            stdout, stderr = p.communicate(timeout=deadline_s + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise h.TestFailure(f"update did not finish within {deadline_s + 60} s")
        secs = time.monotonic() - t0
        out = stdout + stderr
        with open(os.path.join(self.env.dir, f"{name}.log"), "a") as f:
            f.write(out)
        print(out, end="")
        run = h.read_json_file(os.path.join(self.state, "run.json"))
        # A supervisor stops its own children; what the updater started is adopted.
        started = (run["pid"] != self.c1.pid if self.sup is None else
                   pid_alive(run["pid"]) and parent_of(run["pid"]) != self.sup.pid)
        if started and run["pid"] not in self.adopted:
            self.adopted.append(run["pid"])
        return p.returncode, out, secs

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


def parent_of(pid):
    """The parent pid (/proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


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


def update_supervised(env):
    u = Updatable(env, ("c1", "c2"), supervised=True)
    loop = None
    marker = os.path.join(env.dir, "restart-requests")
    # What `systemctl restart` does for a unit, through the stand-in: note the request, SIGUSR1.
    restart_cmd = f"echo requested >> {marker} && kill -USR1 {u.sup.pid}"

    def requests():
        try:
            with open(marker) as f:
                return len(f.read().splitlines())
        except OSError:
            return 0

    def child_of_supervisor(what, out, version, replaced, sha):
        """run.json's new pid: the supervisor's child (not the updater's) running PATH with
        `sha`, reporting `version` with 2 tunnels; the updater's `started` event names it."""
        pid = u.wait_supervised_pid(replaced, timeout=5)
        parent = parent_of(pid)
        h.check(parent == u.sup.pid and parent not in u.updater_pids,
                f"{what}: run.json names pid {pid}, whose parent is the supervisor (pid "
                f"{u.sup.pid}), not the updater (pid {u.updater_pids[-1]})")
        started = [e for e in g.events(out, "started") if e.get("pid") == str(pid)]
        h.check(started and started[-1].get("supervised") == "true" and
                started[-1].get("parent") == str(u.sup.pid),
                f"{what}: the updater logged started pid={pid} supervised=true "
                f"parent={u.sup.pid} ({started})")
        last = u.sup_starts()[-1] if u.sup_starts() else {}
        h.check(last.get("pid") == pid and last.get("exit") is None,
                f"{what}: the supervisor's last start is pid {pid}, running ({last})")
        h.check(os.readlink(f"/proc/{pid}/exe") == u.install and sha256(u.install) == sha,
                f"{what}: pid {pid} runs {u.install}, which holds the expected bytes")
        u.wait_conn_stats(pid, version, timeout=10)
        h.check(True, f"{what}: pid {pid} reports {version} with 2 tunnels up")
        return pid

    try:
        pkg = u.sign(u.new_binary("new-connector"), "pkg-new")
        pkg_sha = sha256(os.path.join(pkg, "apprelay-connector"))
        pkg3 = u.sign(u.new_binary("newer-connector"), "pkg-newer", version=NEWER_VERSION)
        pkg3_sha = sha256(os.path.join(pkg3, "apprelay-connector"))
        u.set_versions({pkg_sha: NEW_VERSION, pkg3_sha: NEWER_VERSION})
        loop = StreamLoop(env)
        h.wait_until(lambda: loop.counts()[0] >= 20, 20, "20 streams echoed before the update")
        before = loop.counts()

        # -- a. SIGTERM; Restart=always brings the new PATH up ---------------------------------
        old_pid = u.c1_pid
        rc, out, secs = u.update(pkg, extra=["--supervised"], name="update-supervised")
        h.check(rc == 0, f"update --supervised exited {rc} in {secs:.1f} s")
        steps = [s for s in step_order(out) if s in SUPERVISED_STEPS]
        h.check(steps == SUPERVISED_STEPS, f"the updater logged {' -> '.join(steps)}")
        h.check(g.events(out, "draining", via="SIGTERM", supervised="true"),
                "draining names SIGTERM, supervised")
        old = [s for s in u.sup_starts() if s["pid"] == old_pid]
        h.check(old and old[0]["exit"] == 0,
                f"the old c1 (pid {old_pid}) exited 0 after SIGTERM ({old})")
        h.check(g.events(u.sup.log_text(), "stopped", streams_cut="0"),
                "the old c1 logged stopped streams_cut=0")
        new_pid = child_of_supervisor("a", out, NEW_VERSION, (old_pid,), pkg_sha)
        h.check(read(u.install + ".prev") == u.old_bytes and
                not os.path.exists(u.install + ".new"), "PATH.prev holds the old bytes")

        def relay_version():
            listed = {c["id"]: c for c in env.ctl_json("connectors", "list")["connectors"]}
            return listed[env.connector_ids["c1"]].get("version") == NEW_VERSION
        h.wait_until(relay_version, 10, f"the relay lists c1 at {NEW_VERSION}")
        h.check(True, f"apprelayctl connectors list shows c1 at {NEW_VERSION}")

        # -- b. --restart-cmd ------------------------------------------------------------------
        rc, out, secs = u.update(pkg3, extra=["--supervised", "--restart-cmd", restart_cmd],
                                 name="update-restart-cmd")
        h.check(rc == 0, f"update --supervised --restart-cmd exited {rc} in {secs:.1f} s")
        steps = [s for s in step_order(out) if s in SUPERVISED_STEPS]
        h.check(steps == SUPERVISED_STEPS, f"the updater logged {' -> '.join(steps)}")
        h.check(requests() == 1 and g.events(out, "restart_cmd", exit="code 0") and
                g.events(out, "draining", via="restart_cmd"),
                f"the restart command ran once and exited 0 ({requests()} requests)")
        h.check("restart requested (SIGUSR1)" in u.sup.log_text(),
                "the supervisor restarted c1 on the command's request")
        newer_pid = child_of_supervisor("b", out, NEWER_VERSION, (old_pid, new_pid), pkg3_sha)
        h.wait_until(lambda: g.conn_counter(env, "c1", "streams_opened") > 0, 15,
                     "the new c1 to take streams")
        h.check(True, f"c1 at {NEWER_VERSION} took {g.conn_counter(env, 'c1', 'streams_opened')}"
                      f" streams")
        ok, failed = loop.finish()
        loop = None
        h.check(ok - before[0] >= 20, f"{ok - before[0]} streams echoed during and after the two "
                                      f"updates ({ok} in all)")
        h.check(failed == 0, f"ZERO failed streams while c1 updated twice under its supervisor "
                             f"({failed} of {ok + failed})")

        # -- c. a broken 0.4.0, rolled back through the restart command ------------------------
        broken = u.new_binary("broken-connector",
                              b"#!/bin/sh\necho 'broken build: exiting' >&2\nexit 1\n")
        pkg4 = u.sign(broken, "pkg-broken", version=BROKEN_VERSION)
        broken_sha = sha256(broken)
        deadline = 8
        rc, out, secs = u.update(pkg4, deadline_s=deadline, name="update-supervised-broken",
                                 extra=["--supervised", "--restart-cmd", restart_cmd])
        h.check(rc == 3, f"update exited {rc} (3 = rolled back) after {secs:.1f} s")
        h.check(secs <= deadline * 2 + 5, f"rolled back within 2 deadlines + 5 s ({secs:.1f} s)")
        steps = step_order(out)
        h.check("update_failed" in steps and "rolled_back" in steps and
                steps.index("installed") < steps.index("update_failed") <
                steps.index("rolling_back") < steps.index("rolled_back"),
                f"the updater logged installed -> update_failed -> rolling_back -> rolled_back "
                f"({steps})")
        h.check(f"no new connector recorded itself in {u.state}/run.json within {deadline} s"
                in out, "the failure says no new pid recorded itself within the deadline")
        h.check(requests() == 3, f"the restart command ran for the update and for the rollback "
                                 f"({requests()} requests in all)")
        ran_broken = [s for s in u.sup_starts() if s["sha256"] == broken_sha]
        # (one may have been stopped by the rollback's restart instead of exiting by itself)
        h.check(any(s["exit"] == 1 for s in ran_broken) and
                all(s["exit"] not in (None, 0) for s in ran_broken),
                f"the supervisor ran the broken PATH {len(ran_broken)} times: it exits 1 "
                f"({[s['exit'] for s in ran_broken]})")
        h.check(sha256(u.install) == pkg3_sha and not os.path.exists(u.install + ".prev") and
                not os.path.exists(u.install + ".new"),
                f"PATH holds the {NEWER_VERSION} bytes again; no PATH.prev, no PATH.new")
        back_pid = child_of_supervisor("c", out, NEWER_VERSION, (old_pid, new_pid, newer_pid),
                                       pkg3_sha)
        h.check(g.events(out, "rolled_back", pid=back_pid), f"rolled_back names pid {back_pid}")
        h.check(g.echo_ok(env, SNI), "a stream echoes through the restored c1")

        # -- d. a 0.4.0 reporting another version: SIGTERM to it, the supervisor restores -------
        wrong = u.new_binary("unversioned-connector")  # no version for its bytes: reports 0.1.0
        pkg5 = u.sign(wrong, "pkg-unversioned", version=BROKEN_VERSION)
        rc, out, secs = u.update(pkg5, deadline_s=15, extra=["--supervised"],
                                 name="update-supervised-wrong")
        h.check(rc == 3 and f"reports version {OLD_VERSION}, expected {BROKEN_VERSION}" in out,
                f"a 0.4.0 that reports {OLD_VERSION} is rolled back (exit {rc}, {secs:.1f} s)")
        failed_ev = [e for e in g.events(out, "started", version=BROKEN_VERSION)]
        h.check(len(failed_ev) == 1, f"the updater saw the supervisor start it ({failed_ev})")
        failed_pid = int(failed_ev[0]["pid"])
        gone = [s for s in u.sup_starts() if s["pid"] == failed_pid]
        h.check(gone and gone[0]["exit"] == 0 and not pid_alive(failed_pid),
                f"the failed pid {failed_pid} got SIGTERM and exited 0 ({gone})")
        h.check(requests() == 3, "no restart command this time")
        h.check(sha256(u.install) == pkg3_sha, f"PATH holds the {NEWER_VERSION} bytes again")
        child_of_supervisor("d", out, NEWER_VERSION,
                            (old_pid, new_pid, newer_pid, back_pid, failed_pid), pkg3_sha)
        h.check(g.echo_ok(env, SNI), "a stream echoes through the restored c1")
    finally:
        if loop is not None:
            loop.finish()
        u.stop_supervisor()
        u.stop_adopted()  # none, unless the updater started a connector itself


CASES = {"applied": ("update_applied", update_applied),
         "refused": ("update_refused", update_refused),
         "rolled_back": ("update_rolled_back", update_rolled_back),
         "supervised": ("update_supervised", update_supervised)}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    rc = 0
    for n in names:
        rc |= h.run_test(*CASES[n])
    sys.exit(rc)
