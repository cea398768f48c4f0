#!/usr/bin/env python3
"""Fleet presence, partitions and fleet-wide jobs (issue 13), with a real 3-member etcd cluster,
two relays and a connector pinned to each (c1 on A, c2 on B; test_fleet_attach has connectors
on both).

partition   Relay B reaches etcd only through TCP fault proxies (tcp_proxy.py), which the test
            cuts. Expected: B reports stale within 5 s and keeps serving its own tunnel (every
            user request through B succeeds); within the lease TTL (4 s) + 3 s, A's `relays list`
            no longer shows B and c2 (held by B) reads inactive on A. Meanwhile an app is
            created on A and etcd is compacted at the newest revision. After healing: B re-reads
            the whole prefix (its rereads counter grows; a watch resumed at the compacted revision
            would miss deletions), reaches A's config_version, and its copy's digest equals the
            digest of a fresh etcd read; B shows up again in `relays list` with c2 active.
relays      `relays list` shows both nodes with region, tunnels and a current copy; `relays
            drain relay-b` (asked on A) makes B mark itself draining and exit 0 within its drain
            deadline; B's node leaves the list; asking again for an unknown node is a 404.
kill        SIGKILL relay B: within TTL + 3 s its node leaves `relays list` and c2 reads inactive
            on A; users through A are not disturbed (zero failed).
purge       [connectors] inactive_purge_s = 2 on both relays; connector x1 enrolled but never run.
            Relay A is paused (SIGSTOP) past its lease TTL, x1 is purged meanwhile, A resumed:
            exactly one connector_purged line for x1 across both relays' logs, and the purge job
            key names the relay that ran it.
"""
import base64
import hashlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402
from fleet import (WEB_SNI as SNI, FleetRelay, RequestLog, echo_through,  # noqa: E402
                   pin_to_one_relay, publish_web, run_tests)
from tcp_proxy import TcpProxy  # noqa: E402

TTL = 4
PREFIX = "/apprelay/"


def base_world(env, etcd, endpoints_b=None, connector_settings=None):
    a = FleetRelay(env, "relay-a", etcd.endpoints, region="eu", lease_ttl_s=TTL,
                   connector_settings=connector_settings).start()
    b = FleetRelay(env, "relay-b", endpoints_b or etcd.endpoints, region="us", lease_ttl_s=TTL,
                   connector_settings=connector_settings).start()
    port = publish_web(env, a)
    for cid, r in (("c1", a), ("c2", b)):
        r.use()
        env.enroll(cid)
        pin_to_one_relay(env, cid)  # c1 on A only, c2 on B only: presence per relay
        env.start_connector(cid)
    for r in (a, b):
        h.wait_until(lambda r=r: r.tunnels_up() >= 1, 20, f"{r.name} holds a tunnel")
    return a, b, port


def statuses(relay):
    return {c["name"]: c["status"] for c in relay.ctl_json("connectors", "list")["connectors"]}


def nodes(relay):
    return {r["node"]: r for r in relay.ctl_json("relays", "list")["relays"]}


def fresh_digest(etcd):
    """The digest a relay's copy must equal (fleet.cc): configuration keys and mod revisions."""
    out = etcd.ctl_any(["get", PREFIX, "--prefix", "-w", "json"])
    kvs = json.loads(out).get("kvs", [])
    lines = []
    for kv in kvs:
        key = base64.b64decode(kv["key"]).decode()
        rel = key[len(PREFIX):]
        if rel.startswith(("presence/", "seen/", "jobs/")):
            continue
        lines.append((key, int(kv["mod_revision"])))
    text = "".join(f"{k}\t{m}\n" for k, m in sorted(lines))
    return hashlib.sha256(text.encode()).hexdigest()


def test_partition(env):
    with EtcdCluster(3) as etcd:
        proxies = [TcpProxy("127.0.0.1", int(e.rsplit(":", 1)[1]), name=f"etcd{i}").start()
                   for i, e in enumerate(etcd.endpoints)]
        try:
            a, b, _ = base_world(env, etcd, endpoints_b=[p.address for p in proxies])
            h.wait_until(lambda: statuses(a) == {"c1": "active", "c2": "active"}, 5,
                         "both connectors active on A")
            rereads0 = b.store_health()["rereads"]
            load = RequestLog(env, [b.user_port], SNI, env.pki.path("users-ca.crt"),
                              interval=0.02).start()
            for p in proxies:
                p.cut()
            h.log("relay-b cut off from etcd")
            h.wait_until(lambda: b.store_health().get("stale") is True, 5, "B reports stale")
            t0 = time.monotonic()
            h.wait_until(lambda: "relay-b" not in nodes(a), TTL + 3, "B leaves A's relays list")
            h.wait_until(lambda: statuses(a).get("c2") == "inactive", 3,
                         "c2 inactive on A once B's lease expired")
            h.log(f"B's presence gone from A after {time.monotonic() - t0:.1f} s")
            a.ctl("groups", "create", "during-partition")
            a.ctl("groups", "delete", "during-partition")  # a deletion the watch must not miss
            rev = etcd.revision()
            etcd.compact(rev)
            h.log(f"etcd compacted at {rev}")
            time.sleep(1)
            for p in proxies:
                p.heal()
            h.log("healed")
            h.wait_until(lambda: b.store_health().get("rereads", 0) > rereads0, 10,
                         "B re-reads the whole prefix after the compaction")
            h.wait_until(lambda: not b.store_health().get("stale", True), 10, "B current again")
            h.wait_until(lambda: b.config_version() == a.config_version(), 5,
                         "B at A's config_version")
            h.wait_until(lambda: b.store_health().get("digest") == fresh_digest(etcd), 5,
                         "B's copy equals a fresh read")
            h.wait_until(lambda: "relay-b" in nodes(a) and statuses(a).get("c2") == "active",
                         10, "B back in the fleet with c2 active")
            load.finish("users through B during the partition", 20)
        finally:
            for p in proxies:
                p.close()


def test_relays(env):
    with EtcdCluster(3) as etcd:
        a, b, _ = base_world(env, etcd)
        h.wait_until(lambda: set(nodes(a)) == {"relay-a", "relay-b"}, 5, "two relays listed")
        h.wait_until(lambda: all(r["tunnels"] == 1 for r in nodes(a).values()), 5,
                     "one tunnel-holding connector each")
        h.wait_until(lambda: all(not r["stale"] and r["versions_behind"] == 0 and
                                 not r["draining"] for r in nodes(a).values()), 5,
                     "both copies current")
        listed = nodes(a)
        h.check(listed["relay-a"]["region"] == "eu" and listed["relay-b"]["region"] == "us",
                f"regions shown: {listed}")
        h.check(listed["relay-b"]["address"] == f"127.0.0.1:{b.tunnel_port}",
                f"B's address is its tunnel listener: {listed['relay-b']}")
        text = a.ctl("relays", "list")[1]
        h.check("relay-b" in text and "current" in text, f"table output:\n{text}")
        conns = {c["name"]: c for c in a.ctl_json("connectors", "list")["connectors"]}
        h.check(conns["c2"].get("relays") == ["relay-b"],
                f"status shows where c2's tunnel lands: {conns['c2']}")
        a.ctl("relays", "drain", "relay-b")
        t0 = time.monotonic()
        h.wait_until(lambda: not b.proc.alive(), 15, "relay-b drains and exits")
        h.check(b.proc.p.returncode == 0, f"relay-b exit code {b.proc.p.returncode}")
        h.log(f"relay-b exited {time.monotonic() - t0:.1f} s after the drain request")
        h.check("drain requested" in b.log_text(), "B's log names the drain request")
        h.wait_until(lambda: "relay-b" not in nodes(a), 5, "B leaves the list")
        rc, out, err = a.ctl("relays", "drain", "relay-zz", expect_rc=1)
        h.check("no relay 'relay-zz'" in err + out, f"unknown node refused: {err} {out}")


def test_kill(env):
    with EtcdCluster(3) as etcd:
        a, b, _ = base_world(env, etcd)
        load = RequestLog(env, [a.user_port], SNI, env.pki.path("users-ca.crt"),
                          interval=0.02).start()
        h.wait_until(lambda: statuses(a) == {"c1": "active", "c2": "active"}, 5, "both active")
        b.stop(sig=signal.SIGKILL)
        t0 = time.monotonic()
        h.wait_until(lambda: "relay-b" not in nodes(a), TTL + 3, "B leaves the list (lease)")
        h.wait_until(lambda: statuses(a).get("c2") == "inactive", 3, "c2 inactive on A")
        h.log(f"B's presence expired {time.monotonic() - t0:.1f} s after SIGKILL")
        load.finish("users through A", 20)


def test_purge(env):
    with EtcdCluster(3) as etcd:
        a = FleetRelay(env, "relay-a", etcd.endpoints, lease_ttl_s=TTL,
                       connector_settings={"inactive_purge_s": 2}).start()
        b = FleetRelay(env, "relay-b", etcd.endpoints, lease_ttl_s=TTL,
                       connector_settings={"inactive_purge_s": 2}).start()
        a.use()
        os.kill(a.proc.p.pid, signal.SIGSTOP)
        try:
            b.use()
            xid = env.enroll("x1")  # never runs: inactive from the start
            time.sleep(TTL + 1)     # A stays paused past its lease
            h.wait_until(lambda: xid not in [c["id"] for c in
                                             b.ctl_json("connectors", "list")["connectors"]],
                         10, "x1 purged (by B, A is paused)")
        finally:
            os.kill(a.proc.p.pid, signal.SIGCONT)
        time.sleep(3)  # A resumes with its purge loop; it must not purge again
        lines = [l for r in (a, b) for l in r.log_text().splitlines()
                 if "connector_purged" in l and xid in l]
        h.check(len(lines) == 1, f"exactly one purge of x1 across the fleet: {lines}")
        job = json.loads(etcd.get(PREFIX + "jobs/purge"))
        h.check(job["node"] in ("relay-a", "relay-b"), f"the job key names its runner: {job}")
        h.check(a.proc.alive() and b.proc.alive(), "both relays still running")


TESTS = {"partition": test_partition, "relays": test_relays, "kill": test_kill,
         "purge": test_purge}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
