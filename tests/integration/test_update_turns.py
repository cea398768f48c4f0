#!/usr/bin/env python3
"""Update turns and packages served by the relay (issue 15 item 5; dataplane/connector/UPDATE.md
"Turns" and "From the relay"; control/enroll/PROTOCOL.md "Connector requests").

Group Default = c1 + c2, each running from its own installed copy of the connector binary. The
"new" connector is the same program plus a trailer, reporting its version through
APPRELAY_CONNECTOR_VERSION_OVERRIDE in the updater's environment (as in test_update.py).

1. turns: both connectors' updaters start at the same moment, under 4 users looping 16 KiB echo
   streams. Both exit 0 at 0.2.0. Their drain-to-tunnel windows (`draining` .. `update_applied`)
   do not overlap: the relay granted one turn, the other updater logged `turn_wait` naming the
   holder ("connector <id> is updating") and got its turn only after the first came back at
   0.2.0 (relay: update_turn_granted, update_turn_ended why=updated, twice, in that order). ZERO
   failed user streams: the group always had one connector serving.
2. turn_refused: relay update_lease_s = 5.
   a. c2 stopped: c1's update with --turn-timeout-s 3 is refused (exit 1, "no update turn within
      3 s (last: connector <c2> (c2) of the group has no tunnel)"), and c1 is untouched (same pid,
      same binary bytes, no PATH.new).
   b. c2 back. c1 updates to a "0.2.0" that never brings a tunnel (a script that sleeps):
      c1 drains, the lease (5 s) passes while c1 is down, GET /v1/overview reports c1's update
      stuck (connector "update".stuck and an update_stuck alert), and c2's update is refused with
      "connector <c1>'s update is stuck". c1's updater rolls back (exit 3); c1 is back at 0.1.0,
      which ends the turn (why="back at another version"), and c2's update then applies (exit 0).
   c. A connector certificate the relay does not know (another tenant's CA) and no certificate
      at all are refused on the enrollment listener (update_info) with the reason; enrollment
      itself still works (a token registers a third connector).
3. from_relay: the relay serves a signed package ([connectors] update_package, 0.2.0, a binary of
   more than 1 MiB so it comes in several chunks) and advertises 0.2.0 as latest_version.
   `update --from-relay` on c1 downloads it byte-exact into DIR/update-download, verifies it and
   applies it (exit 0, c1 at 0.2.0); run again, it finds c1 up to date (exit 0, nothing touched:
   what the daily apprelay-connector-update@.timer relies on). The package's binary is then altered on the relay: c2's
   `update --from-relay` is refused with "hash mismatch" and c2 is untouched. `apprelay
   --check-config` refuses a settings file whose update_package has no signature, and one whose
   latest_version differs from the package's."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import groups_helpers as g  # noqa: E402
import test_update as tu  # noqa: E402

SNI = tu.SNI
OLD = tu.OLD_VERSION
NEW = tu.NEW_VERSION


def overview(env):
    """GET /v1/overview on the admin UNIX socket (no token needed there)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(env.relay_info["admin_socket"])
        s.sendall(b"GET /v1/overview HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise h.TestFailure(f"GET /v1/overview: {head[:80]!r}")
    return json.loads(body)


def connector_entry(ov, cid_real):
    for t in ov.get("tenants", []):
        for grp in t.get("groups", []):
            for c in grp.get("connectors", []):
                if c.get("id") == cid_real:
                    return c
    return None


def events(out, comp="updater"):
    """(event, fields) of one component's log lines, in order."""
    evs = []
    for line in out.splitlines():
        ev = g.parse_logfmt(line)
        if ev.get("comp") == comp and "event" in ev:
            evs.append(ev)
    return evs


def ts_of(evs, name):
    for ev in evs:
        if ev["event"] == name:
            return ev["ts"]
    raise h.TestFailure(f"no {name} event in {[e['event'] for e in evs]}")


class Group:
    """c1 and c2 of group Default, each run by the test from bin-<cid>/apprelay-connector."""

    def __init__(self, env, connector_settings=None, package_for_relay=None):
        self.env = env
        _, port = env.start_backend("echo")
        topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.1:{port}")],
                            connectors=("c1", "c2"), workers=2, with_fabrikam=False)
        topo.connector_settings.update(connector_settings or {})
        keys = os.path.join(env.dir, "keys")
        os.makedirs(keys)
        self.key = os.path.join(keys, "update-key.pem")
        self.pub = os.path.join(keys, "update-pub.pem")
        h._openssl(["genpkey", "-algorithm", "ed25519", "-out", self.key], keys)
        h._openssl(["pkey", "-in", self.key, "-pubout", "-out", self.pub], keys)
        self.old_bytes = tu.read(h.CONNECTOR_BIN)
        if package_for_relay is not None:
            topo.connector_settings["update_package"] = package_for_relay(self)
        env.start_relay(topo)
        self.install, self.procs, self.state, self.stats = {}, {}, {}, {}
        for cid in ("c1", "c2"):
            d = os.path.join(env.dir, f"bin-{cid}")
            os.makedirs(d)
            self.install[cid] = os.path.join(d, "apprelay-connector")
            shutil.copy2(h.CONNECTOR_BIN, self.install[cid])
            self.state[cid] = os.path.join(env.dir, f"conn-{cid}")
            self.stats[cid] = g.conn_stats_path(env, cid)
            self.start(cid)
        for cid in ("c1", "c2"):
            env.wait_tunnels(2, connector=cid)
        self.adopted = []
        self.updaters = []

    def start(self, cid):
        argv = [self.install[cid], "run", "--state-dir", self.state[cid], "--stats-file",
                self.stats[cid], "--log-level", "info"]
        self.procs[cid] = self.env.start(f"connector-{cid}", argv)
        return self.procs[cid]

    def new_binary(self, name, data=None):
        path = os.path.join(self.env.dir, name)
        with open(path, "wb") as f:
            f.write(data if data is not None else
                    self.old_bytes + f"\n# apprelay test build {name}\n".encode())
        os.chmod(path, 0o755)
        return path

    def sign(self, binary, out, version=NEW):
        out = os.path.join(self.env.dir, out)
        r = subprocess.run([h.CONNECTOR_BIN, "update-sign", "--key", self.key, "--binary", binary,
                            "--version", version, "--out", out],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise h.TestFailure(f"update-sign: exit {r.returncode}: {r.stderr.strip()}")
        return out

    def updater(self, cid, package=None, extra=(), deadline_s=20, version_override=NEW):
        """Starts `apprelay-connector update` for cid; its output goes to update-<cid>.log."""
        env = dict(os.environ)
        env.pop("APPRELAY_CONNECTOR_VERSION_OVERRIDE", None)
        if version_override:
            env["APPRELAY_CONNECTOR_VERSION_OVERRIDE"] = version_override
        argv = [h.CONNECTOR_BIN, "update", "--state-dir", self.state[cid], "--pubkey", self.pub,
                "--install", self.install[cid], "--deadline-s", str(deadline_s),
                "--drain-timeout-s", "20",
                "--log", os.path.join(self.env.dir, f"connector-{cid}-updated.log")]
        argv += ["--package", package] if package else []
        argv += list(extra)
        h.log("run: " + " ".join(argv))
        log_path = os.path.join(self.env.dir, f"update-{cid}.log")
        f = open(log_path, "a")
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, text=True, env=env)
        p.log_path, p.log_file, p.t0, p.cid = log_path, f, time.monotonic(), cid
        self.updaters.append(p)
        return p

    def finish(self, p, timeout=90):
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise h.TestFailure(f"update did not finish within {timeout} s")
        p.log_file.close()
        with open(p.log_path) as f:
            out = f.read()
        self.adopt(p.cid)
        return rc, out, time.monotonic() - p.t0

    def run_update(self, cid, **kw):
        open(os.path.join(self.env.dir, f"update-{cid}.log"), "w").close()
        rc, out, secs = self.finish(self.updater(cid, **kw))
        print(out, end="")
        return rc, out, secs

    def adopt(self, cid):
        run = h.read_json_file(os.path.join(self.state[cid], "run.json"))
        if run["pid"] != self.procs[cid].pid and run["pid"] not in self.adopted:
            self.adopted.append(run["pid"])

    def stop_adopted(self):
        """Stops what the updaters started (after the updaters themselves, on a failure)."""
        for p in self.updaters:
            if p.poll() is None:
                p.kill()
                p.wait()
        for cid in ("c1", "c2"):
            try:
                self.adopt(cid)
            except (OSError, ValueError, KeyError):
                pass
        for pid in self.adopted:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.env.dir.encode() not in f.read():
                        continue  # not ours (gone, and the pid reused)
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
            end = time.monotonic() + 10
            while time.monotonic() < end and tu.pid_alive(pid):
                time.sleep(0.05)
            if tu.pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def relay_version_of(self, cid):
        for c in self.env.ctl_json("connectors", "list")["connectors"]:
            if c.get("id") == self.env.connector_ids[cid]:
                return c.get("version")
        return None

    def wait_version(self, cid, version, timeout=20):
        h.wait_until(lambda: self.relay_version_of(cid) == version, timeout,
                     f"the relay to list {cid} at {version}")


def no_leftovers(grp, cid):
    h.check(not os.path.exists(grp.install[cid] + ".new"), f"no {cid} PATH.new left")
    h.check(tu.read(grp.install[cid]) == grp.old_bytes, f"{cid}'s binary is byte-identical")


# ---------------------------------------------------------------------------------------------

def turns(env):
    grp = Group(env)
    load = None
    try:
        pkg = grp.sign(grp.new_binary("new-connector"), "pkg-new")
        # c1 drains with a long stream in flight (the test paces it), so it holds the turn for
        # as long as the test needs; c2's updater asks meanwhile. (Opened before the user loop
        # starts: c1's in-flight count then counts only this stream.)
        long = tu.open_long_stream_on(env, "c1")
        load = tu.StreamLoop(env)
        time.sleep(1.0)
        ups = {"c1": grp.updater("c1", package=pkg)}
        h.wait_until(lambda: "event=draining" in open(ups["c1"].log_path).read(), 20,
                     "c1's updater to get the turn and begin draining")
        ups["c2"] = grp.updater("c2", package=pkg)
        holder = env.connector_ids["c1"]
        h.wait_until(lambda: f'reason="connector {holder} is updating"' in
                     open(ups["c2"].log_path).read(), 20,
                     "c2's updater to wait for c1's turn")
        time.sleep(1.0)
        h.check("event=draining" not in open(ups["c2"].log_path).read(),
                "c2 has not begun draining while c1 holds the turn")
        outcome = long.finish()
        h.check(outcome == "ok", f"c1's long stream finished byte-exact ({outcome})")
        res = {cid: grp.finish(p) for cid, p in ups.items()}
        ok, failed = load.finish()
        for cid, (rc, out, secs) in res.items():
            print(f"--- update {cid}: exit {rc} in {secs:.1f} s\n{out}", end="")
            h.check(rc == 0, f"{cid}'s update exited 0 in {secs:.1f} s")
        ev = {cid: events(out) for cid, (_, out, _) in res.items()}
        relay_ev = events(open(os.path.join(env.dir, "relay.log")).read(), comp="relay")
        # A connector is out of service from its `draining` until the relay sees it back with a
        # tunnel at the new version (update_turn_ended why=updated).
        back = {cid: [e["ts"] for e in relay_ev if e["event"] == "update_turn_ended" and
                      e.get("connector") == env.connector_ids[cid]] for cid in ("c1", "c2")}
        win = {cid: (ts_of(e, "draining"), (back[cid] or ["?"])[0]) for cid, e in ev.items()}
        first, second = sorted(win, key=lambda c: win[c][0])
        h.check(win[first][1] <= win[second][0],
                f"{first} drained and the relay saw it back at {NEW} ({win[first][0]} .. "
                f"{win[first][1]}) before {second} began draining ({win[second][0]}): never both "
                f"at once")
        holder = env.connector_ids[first]
        waits = [e for e in ev[second] if e["event"] == "turn_wait"]
        h.check(any(e.get("reason") == f"connector {holder} is updating" for e in waits),
                f"{second}'s updater waited: {[e.get('reason') for e in waits]}")
        h.check(ts_of(ev[second], "turn_granted") >= win[first][1],
                f"{second}'s turn came after {first} was back at {NEW}")
        seq = [(e["event"], e.get("connector"), e.get("why")) for e in relay_ev
               if e["event"].startswith("update_turn")]
        want = [("update_turn_granted", holder, None),
                ("update_turn_ended", holder, "updated"),
                ("update_turn_granted", env.connector_ids[second], None),
                ("update_turn_ended", env.connector_ids[second], "updated")]
        h.check(seq == want, f"relay turns in order: {seq}")
        for cid in ("c1", "c2"):
            grp.wait_version(cid, NEW)
        h.check(ok > 100, f"{ok} streams echoed while both connectors updated")
        h.check(failed == 0, f"ZERO failed streams while the group updated ({failed} of "
                             f"{ok + failed})")
    finally:
        if load is not None:
            load.finish()
        grp.stop_adopted()


def turn_refused(env):
    grp = Group(env, connector_settings={"update_lease_s": 5})
    try:
        pkg = grp.sign(grp.new_binary("new-connector"), "pkg-new")
        # a. another connector of the group has no tunnel
        c2 = env.connector_ids["c2"]
        grp.procs["c2"].stop(timeout=30)
        h.wait_until(lambda: any(c.get("id") == c2 and c.get("status") == "inactive"
                                 for c in env.ctl_json("connectors", "list")["connectors"]),
                     15, "the relay to list c2 inactive")
        pid = grp.procs["c1"].pid
        rc, out, secs = grp.run_update("c1", package=pkg, extra=["--turn-timeout-s", "3"])
        want = f"(last: connector {c2} (c2) of the group has no tunnel)"
        h.check(rc == 1 and "update refused: no update turn within 3 s" in out and want in out,
                f"no turn while c2 is down: exit {rc} in {secs:.1f} s, '{want}'")
        h.check(grp.procs["c1"].alive() and
                h.read_json_file(os.path.join(grp.state["c1"], "run.json"))["pid"] == pid,
                "c1 still runs as the same pid")
        no_leftovers(grp, "c1")
        h.check(g.echo_ok(env, SNI, 64 * 1024, seed=3), "a stream echoes through c1")

        # b. a turn stuck while its connector is down
        grp.start("c2")
        env.wait_tunnels(2, connector="c2")
        h.wait_until(lambda: all(c.get("status") == "active"
                                 for c in env.ctl_json("connectors", "list")["connectors"]),
                     15, "c1 and c2 active")
        hang = grp.sign(grp.new_binary("hang", b"#!/bin/sh\nexec sleep 60\n"), "pkg-hang")
        c1 = env.connector_ids["c1"]
        open(os.path.join(env.dir, "update-c1.log"), "w").close()
        p1 = grp.updater("c1", package=hang, deadline_s=14, version_override=None)
        h.wait_until(lambda: (connector_entry(overview(env), c1) or {}).get("update", {})
                     .get("stuck"), 20, "GET /v1/overview to report c1's update stuck")
        ov = overview(env)
        h.check(any(a.get("kind") == "update_stuck" and a.get("connector") == c1
                    for a in ov.get("alerts", [])),
                f"an update_stuck alert names c1: {[a.get('kind') for a in ov['alerts']]}")
        rc2, out2, _ = grp.run_update("c2", package=pkg, extra=["--turn-timeout-s", "2"])
        h.check(rc2 == 1 and f"connector {c1}'s update is stuck" in out2,
                f"c2 gets no turn while c1's is stuck: exit {rc2}")
        no_leftovers(grp, "c2")
        rc1, out1, secs1 = grp.finish(p1)
        print(out1, end="")
        h.check(rc1 == 3, f"c1's update rolled back (exit {rc1} in {secs1:.1f} s)")
        h.wait_until(lambda: "back at another version" in open(os.path.join(env.dir, "relay.log")).read(), 15,
                     "the relay to end c1's turn (back at another version)")
        grp.wait_version("c1", OLD)
        rc3, out3, secs3 = grp.run_update("c2", package=pkg, extra=["--turn-timeout-s", "20"])
        h.check(rc3 == 0, f"then c2's update applies (exit {rc3} in {secs3:.1f} s)")
        grp.wait_version("c2", NEW)

        # c. who may ask: a connector certificate the relay knows, nothing else
        script = (
            "import json,socket,ssl,sys\n"
            "ctx=ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname=False\n"
            "if len(sys.argv)>3: ctx.load_cert_chain(sys.argv[3], sys.argv[4])\n"
            "host,port=sys.argv[1].rsplit(':',1)\n"
            "s=ctx.wrap_socket(socket.create_connection((host,int(port)),timeout=10))\n"
            "s.sendall(b'{\"op\":\"update_info\"}\\n'); print(s.recv(4096).decode().strip())\n")
        enroll = f"127.0.0.1:{env.relay_info['enroll_port']}"
        ca = os.path.join(grp.state["c1"], "ca.pem")
        env.pki.ca("other-tenant-ca", "another tenant")
        crt, key = env.pki.leaf("impostor", "other-tenant-ca", c1, usage="clientAuth")
        for label, args, want in [
                ("no certificate", [], "connector certificate required"),
                ("another CA's certificate", [env.pki.path(crt), env.pki.path(key)],
                 "connector certificate required"),
                ("c1's own certificate", [os.path.join(grp.state["c1"], "cert.pem"),
                                          os.path.join(grp.state["c1"], "key.pem")],
                 '"latest_version"')]:
            r = subprocess.run([sys.executable, "-c", script, enroll, ca] + args,
                               capture_output=True, text=True, timeout=20)
            h.check(want in r.stdout, f"update_info with {label}: {r.stdout.strip()[:140]}")
        env.enroll("c3")
        h.check(True, "enrollment still works on the same listener")
    finally:
        grp.stop_adopted()


def from_relay(env):
    def make_package(grp):
        # More than 1 MiB: the binary comes in several update_fetch chunks.
        big = grp.old_bytes + b"\n#" + os.urandom(1536 * 1024).hex().encode()[:1536 * 1024]
        return grp.sign(grp.new_binary("served-connector", big), "served-pkg")

    grp = Group(env, package_for_relay=make_package)
    try:
        served = os.path.join(env.dir, "served-pkg")
        rc, out, secs = grp.run_update("c1", extra=["--from-relay"])
        h.check(rc == 0, f"update --from-relay applied (exit {rc} in {secs:.1f} s)")
        dl = os.path.join(grp.state["c1"], "update-download", "apprelay-connector")
        h.check(tu.read(dl) == tu.read(os.path.join(served, "apprelay-connector")),
                f"the download is byte-exact ({os.path.getsize(dl)} bytes)")
        h.check(tu.read(grp.install["c1"]) == tu.read(dl), "c1 runs the served binary")
        fetched = [e for e in events(out) if e["event"] == "package_fetched"]
        h.check(fetched and fetched[0].get("version") == NEW, f"package_fetched {NEW}")
        grp.wait_version("c1", NEW)
        pid_new = h.read_json_file(os.path.join(grp.state["c1"], "run.json"))["pid"]
        rc, out, _ = grp.run_update("c1", extra=["--from-relay"])
        h.check(rc == 0 and f"up to date: the connector runs {NEW}, the relay serves {NEW}" in out
                and "event=draining" not in out,
                f"--from-relay again: up to date, exit {rc}, nothing touched")
        h.check(h.read_json_file(os.path.join(grp.state["c1"], "run.json"))["pid"] == pid_new,
                "c1 still runs as the same pid")
        latest = [c.get("latest_version") for c in [h.read_json_file(grp.stats["c2"])]]
        h.check(latest == [NEW], f"the relay advertises {NEW} as latest (c2 stats: {latest})")

        # The served binary altered after signing: refused, c2 untouched.
        with open(os.path.join(served, "apprelay-connector"), "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0xFF]))
        pid = grp.procs["c2"].pid
        rc, out, _ = grp.run_update("c2", extra=["--from-relay"])
        h.check(rc == 1 and "update refused: hash mismatch" in out,
                f"a tampered served package is refused (exit {rc})")
        h.check(grp.procs["c2"].alive() and
                h.read_json_file(os.path.join(grp.state["c2"], "run.json"))["pid"] == pid,
                "c2 still runs as the same pid")
        no_leftovers(grp, "c2")

        # --check-config: a package without signature, a latest_version that differs
        unsigned = os.path.join(env.dir, "unsigned-pkg")
        shutil.copytree(served, unsigned)
        os.unlink(os.path.join(unsigned, "manifest.sig"))
        for label, extra, want in [
                ("no signature", f'update_package = "{unsigned}"', "manifest.sig is missing"),
                ("another latest_version",
                 f'update_package = "{served}"\nlatest_version = "0.3.0"',
                 "differs from the version of connectors.update_package (0.2.0)")]:
            cfg = os.path.join(env.dir, "check.toml")
            with open(cfg, "w") as f:
                f.write(f"[relay]\nstate_dir = \"{env.dir}/x\"\n[connectors]\n{extra}\n")
            r = subprocess.run([h.RELAY_BIN, "--check-config", cfg], capture_output=True,
                               text=True, timeout=20)
            h.check(r.returncode == 1 and want in r.stdout + r.stderr,
                    f"--check-config refuses {label}: exit {r.returncode}, "
                    f"{(r.stdout + r.stderr).strip()[:160]}")
    finally:
        grp.stop_adopted()


CASES = {"turns": ("update_turns", turns),
         "turn_refused": ("update_turn_refused", turn_refused),
         "from_relay": ("update_from_relay", from_relay)}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    rc = 0
    for n in names:
        rc |= h.run_test(*CASES[n])
    sys.exit(rc)
