#!/usr/bin/env python3
"""Connectors attached to two relay hosts of a fleet (issue 13): a real 3-member etcd cluster,
relays on one prefix, connectors enrolled once (relay.json lists the fleet) and kept current by
CONFIG (`relay` lines).

attach      2 relays, connectors c1 and c2: each connector holds tunnels to both relays
            (`relays list`: 2 tunnel-holding connectors per node; `connectors list`: relays
            [relay-a, relay-b] for each); users get echoes through either relay.
kill        SIGKILL relay B under a user load through A: zero failed requests; the connectors
            keep their tunnels to A; B restarted: both connectors attach to it again within 10 s.
drain       A long transfer through B is in flight; `relays drain relay-b` (asked on A) under a
            user load through A: zero failed new requests, the transfer through B completes
            byte-exact, B exits 0.
rolling     Rolling restart of every relay under 500 new streams/s (apprelay-loadgen --rate,
            always aimed at the relay that stays up, as a load balancer would): zero failed
            streams, and each restarted relay gets both connectors' tunnels back.
regions     Relays A (eu), B (us), C (eu); group G in region eu with connectors g1, g2: each
            attaches to A and C, none to B, and status shows where each tunnel lands.
"""
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402
from fleet import (WEB_SNI as SNI, FleetRelay, RequestLog, echo_through,  # noqa: E402
                   publish_web, run_tests)

TTL = 4


def connectors_view(relay):
    return {c["name"]: c for c in relay.ctl_json("connectors", "list")["connectors"]}


def attached_to(relay, name):
    return connectors_view(relay).get(name, {}).get("relays", [])


def world(env, etcd, regions=(("relay-a", ""), ("relay-b", "")), group=None, cids=("c1", "c2"),
          extra_limits=None, drain_deadline_ms=3000):
    relays = []
    for name, region in regions:
        r = FleetRelay(env, name, etcd.endpoints, region=region, lease_ttl_s=TTL,
                       extra_limits=extra_limits)
        r.topo.drain_deadline_ms = drain_deadline_ms
        relays.append(r.start())
    a = relays[0]
    h.wait_until(lambda: len(a.ctl_json("relays", "list")["relays"]) == len(relays), 5,
                 "every relay present")
    g = "Default"
    if group:
        g, region = group
        a.ctl("groups", "create", g, "--region", region)
    publish_web(env, a, group=g)
    a.use()
    procs = {}
    for cid in cids:
        env.enroll(cid, group=g)
        with open(os.path.join(env.dir, f"conn-{cid}", "relay.json")) as f:
            listed = json.load(f).get("relays", [])
        h.check(len(listed) == len(relays), f"{cid}'s relay.json lists the fleet: {listed}")
        procs[cid] = env.start_connector(cid)
    return relays, procs


def both_attached(a, names=("c1", "c2"), nodes=("relay-a", "relay-b")):
    return all(sorted(attached_to(a, n)) == sorted(nodes) for n in names)


def test_attach(env):
    with EtcdCluster(3) as etcd:
        (a, b), procs = world(env, etcd)
        h.wait_until(lambda: both_attached(a), 15, "c1 and c2 attached to both relays")
        # c3 also serves --metrics-listen: the sums over its two attachments.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            mport = s.getsockname()[1]
        a.use()
        env.enroll("c3")
        env.start_connector("c3", extra=["--metrics-listen", f"127.0.0.1:{mport}"])

        def metrics():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""
        h.wait_until(lambda: "apprelay_connector_tunnels_up 2\n" in metrics(), 15,
                     "c3's /metrics: 2 tunnels up (one per relay)")
        rl = {r["node"]: r for r in a.ctl_json("relays", "list")["relays"]}
        h.check(rl["relay-a"]["tunnels"] == 3 and rl["relay-b"]["tunnels"] == 3,
                f"three connectors on each relay: {rl}")
        for r in (a, b):
            echo_through(env, r.user_port)


def test_kill(env):
    with EtcdCluster(3) as etcd:
        (a, b), _ = world(env, etcd)
        h.wait_until(lambda: both_attached(a), 15, "attached to both")
        load = RequestLog(env, [a.user_port], SNI, env.pki.path("users-ca.crt"),
                          interval=0.01).start()
        # Streams in flight on B when it dies: each is open (an exchange done) and then waits.
        inflight = []
        for i in range(4):
            c = h.UserClient(b.user_port, SNI, env.pki.path("users-ca.crt"), timeout=10.0)
            chunk = h.pattern(1024, seed=50 + i)
            h.check(c.transfer(chunk, len(chunk), timeout=10.0) == len(chunk),
                    "an exchange through B before the kill")
            inflight.append(c)
        time.sleep(1)
        b.stop(sig=signal.SIGKILL)
        h.log("relay-b killed")
        lost = 0
        for i, c in enumerate(inflight):
            try:
                chunk = h.pattern(1024, seed=60 + i)
                c.transfer(chunk, len(chunk), timeout=5.0)
            except (OSError, TimeoutError, h.TestFailure):
                lost += 1
            finally:
                c.sock.close()
        h.check(lost == len(inflight),
                f"only the {len(inflight)} streams in flight on B fail (counted {lost})")
        h.wait_until(lambda: "relay-b" not in [r["node"] for r in
                                               a.ctl_json("relays", "list")["relays"]],
                     TTL + 3, "relay-b's presence expires")
        h.check(both_attached(a, nodes=("relay-a",)), "the connectors keep their tunnels to A")
        b2 = FleetRelay(env, "relay-b", etcd.endpoints, lease_ttl_s=TTL)
        b2.topo.tunnel_port = b.tunnel_port  # the address connectors know
        b2.topo.user_port = b.user_port
        b2.start()
        t0 = time.monotonic()
        h.wait_until(lambda: both_attached(a), 10, "both connectors back on relay-b")
        h.log(f"reattached to the restarted relay-b in {time.monotonic() - t0:.1f} s")
        load.finish("users through A", 30)


def test_drain(env):
    with EtcdCluster(3) as etcd:
        (a, b), _ = world(env, etcd, drain_deadline_ms=8000)
        h.wait_until(lambda: both_attached(a), 15, "attached to both")
        result = {}

        def long_transfer():
            """~1.5 s of echo exchanges on one stream through B: in flight while B drains (its
            drain deadline is 8 s)."""
            try:
                c = h.UserClient(b.user_port, SNI, env.pki.path("users-ca.crt"), timeout=30.0)
                t0 = time.monotonic()
                for i in range(12):
                    chunk = h.pattern(64 * 1024, seed=100 + i)
                    got = bytearray()
                    c.transfer(chunk, len(chunk), timeout=10.0,
                               verify=lambda off, b: got.extend(b))
                    if bytes(got) != chunk:
                        raise h.TestFailure(f"echo mismatch in exchange {i}")
                    time.sleep(0.1)
                c.close()
                result["ok"] = time.monotonic() - t0
            except Exception as e:  # noqa: BLE001
                result["error"] = f"{type(e).__name__}: {e}"

        load = RequestLog(env, [a.user_port], SNI, env.pki.path("users-ca.crt"),
                          interval=0.01).start()
        t = threading.Thread(target=long_transfer, daemon=True)
        t.start()
        time.sleep(0.5)
        h.check(t.is_alive(), "the transfer through B is in flight when the drain starts")
        a.ctl("relays", "drain", "relay-b")
        h.wait_until(lambda: not b.proc.alive(), 20, "relay-b drains and exits")
        h.check(b.proc.p.returncode == 0, f"relay-b exit code {b.proc.p.returncode}")
        t.join(timeout=60)
        h.check(result.get("ok") is not None,
                f"the transfer in flight through B completed: {result}")
        load.finish("through A during the drain", 20)


def loadgen(env, port, seconds, rate):
    """apprelay-loadgen at `rate` new streams/s for `seconds` against one relay."""
    out = os.path.join(env.dir, f"loadgen-{port}-{time.monotonic():.0f}.json")
    argv = [h.LOADGEN_BIN, "--connect", f"127.0.0.1:{port}", "--sni", SNI, "--ca",
            env.pki.path("users-ca.crt"), "--streams", str(int(seconds * rate)),
            "--concurrency", "64", "--bytes", "512", "--mode", "echo", "--rate", str(rate),
            "--timeout", "30", "--json"]
    p = env.start(f"loadgen-{port}", argv)
    return p


def loadgen_result(p, timeout=120):
    p.p.wait(timeout=timeout)
    text = p.log_text()
    start = text.find("{")
    return json.loads(text[start:text.rfind("}") + 1])


def test_rolling(env):
    with EtcdCluster(3) as etcd:
        (a, b), _ = world(env, etcd)
        h.wait_until(lambda: both_attached(a), 15, "attached to both")
        relays = {"relay-a": a, "relay-b": b}
        totals = []
        for name, other in (("relay-a", "relay-b"), ("relay-b", "relay-a")):
            target = relays[name]
            survivor = relays[other]
            lg = loadgen(env, survivor.user_port, 8, 500)
            time.sleep(1)
            target.stop()  # SIGTERM: drain, exit
            h.check(target.proc.p.returncode == 0, f"{name} drained and exited 0")
            fresh = FleetRelay(env, name, etcd.endpoints, lease_ttl_s=TTL)
            fresh.topo.tunnel_port = target.tunnel_port
            fresh.topo.user_port = target.user_port
            fresh.start()
            relays[name] = fresh
            h.wait_until(lambda: both_attached(survivor), 15,
                         f"both connectors back on the restarted {name}")
            res = loadgen_result(lg)
            h.log(f"restart of {name}, load on {other}: {json.dumps(res)[:300]}")
            totals.append(res)
        for res in totals:
            h.check(res.get("failed", 1) == 0 and res.get("ok", 0) > 0,
                    f"zero failed streams at 500/s: {res}")


def test_regions(env):
    with EtcdCluster(3) as etcd:
        relays, _ = world(env, etcd, regions=(("relay-a", "eu"), ("relay-b", "us"),
                                             ("relay-c", "eu")),
                          group=("G", "eu"), cids=("g1", "g2"))
        a = relays[0]
        try:
            h.wait_until(lambda: both_attached(a, names=("g1", "g2"),
                                               nodes=("relay-a", "relay-c")),
                         15, "g1 and g2 attached to the eu relays A and C")
        finally:
            h.log(f"connectors: {[(n, c.get('relays')) for n, c in connectors_view(a).items()]}")
        time.sleep(2)
        h.check(both_attached(a, names=("g1", "g2"), nodes=("relay-a", "relay-c")),
                "and not to relay-b (us)")
        rl = {r["node"]: r for r in a.ctl_json("relays", "list")["relays"]}
        h.check(rl["relay-b"]["tunnels"] == 0, f"relay-b holds no tunnel: {rl}")


TESTS = {"attach": test_attach, "kill": test_kill, "drain": test_drain, "rolling": test_rolling,
         "regions": test_regions}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
