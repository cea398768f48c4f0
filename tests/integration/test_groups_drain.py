#!/usr/bin/env python3
"""Connector groups: draining a connector (issue 4, drain).

1. groups_drain_move: group Site = x1 + x2 (2 relay workers), app web -> echo on 127.0.0.2. A
   20 MiB echo stream runs (1 MiB steps, new streams in between) through one of them, X. `apprelayctl connectors
   move X Default` mid-stream. Then: the relay logs connector_moved for X's 2 tunnels (from
   contoso/Site to contoso/Default, streams=1 on one of them); 30 new streams for web all go to the
   other connector (X's streams_opened does not move); the stream in flight finishes byte-exact
   with close_notify; only after it, X's tunnel that carried it closes ("drained"); X comes back
   with 2 tunnels in contoso/Default (relay tunnel_up, connector config_applied group=Default),
   and apprelayctl lists X in Default.
2. groups_drain_sigterm: group Site = y1 + y2. A 20 MiB echo stream runs through Y; Y gets SIGTERM.
   Y keeps running while the stream is in flight (connector log draining streams=1), new streams
   go to the other connector only, the stream finishes byte-exact, then Y exits 0 (stopped
   streams_cut=0).
3. groups_drain_sigterm_last_bytes (3 rounds): an idle stream on a connector that gets SIGTERM;
   then the user sends its last 256 KiB with its FIN in one go, so the connector's last DATA and
   FIN are queued just as its last stream ends. All bytes come back byte-exact with close_notify,
   the connector exits 0 with streams_cut=0 and tunnels_unflushed=0 (it used to exit with them
   still queued: the user saw a reset), no stream is reset."""
import calendar
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import groups_helpers as g  # noqa: E402

SNI = "web.contoso.test"
TOTAL = 20 * h.MiB
CHUNK = 1 * h.MiB  # one step = 1 MiB out and its echo back; new streams between steps


def world(env, cids):
    _, port = g.start_site_backend(env, "127.0.0.2", "backend-site")
    topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.2:{port}")], connectors=cids,
                        workers=2, with_fabrikam=False)
    topo.groups.append(dict(tenant="contoso", name="Site"))
    for c in topo.connectors:
        c["group"] = "Site"
    topo.apps[0]["group"] = "Site"
    env.start_relay(topo)
    procs = {cid: env.start_connector(cid) for cid in cids}
    for cid in cids:
        env.wait_tunnels(2, connector=cid)
    return procs


def in_flight(env, cid):
    c = g.conn_counters(env, cid)
    return int(c.get("streams_opened", 0)) - int(c.get("streams_closed", 0)) - \
        int(c.get("streams_reset", 0))


def start_long_stream(env, cids):
    s = g.PacedEcho(env, SNI, TOTAL, chunk=CHUNK, seed=9)
    for _ in range(1):
        if not s.step():
            raise h.TestFailure(f"long stream broke early: {s.error}")
    time.sleep(0.5)
    carrier = [c for c in cids if in_flight(env, c) == 1]
    h.check(len(carrier) == 1 and all(in_flight(env, c) == 0 for c in cids if c != carrier[0]),
            f"the 20 MiB stream runs through {carrier} (first MiB echoed)")
    return s, carrier[0]


def log_ts(ev):
    t = ev["ts"]  # 2026-11-23T12:34:08.659Z
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + int(t[20:23]) / 1000


def drain_move(env):
    cids = ("x1", "x2")
    procs = world(env, cids)
    s, x = start_long_stream(env, cids)
    other = [c for c in cids if c != x][0]
    xid = env.connector_ids[x]
    time.sleep(0.3)
    x_before = g.conn_counter(env, x, "streams_opened")
    o_before = g.conn_counter(env, other, "streams_opened")
    env.ctl("connectors", "move", xid, "Default")
    moved = h.wait_until(lambda: len(g.events(env.relay.log_text(), "connector_moved",
                                              connector=xid)) == 2 and
                         g.events(env.relay.log_text(), "connector_moved", connector=xid), 3,
                         "connector_moved for both of X's tunnels")
    h.check(all(e["from"] == "contoso/Site" and e["to"] == "contoso/Default" for e in moved) and
            sorted(e["streams"] for e in moved) == ["0", "1"],
            f"relay logged connector_moved {x}: contoso/Site -> contoso/Default, streams 0 and 1")
    carrier_worker = [e["worker"] for e in moved if e["streams"] == "1"][0]
    new_ok = 0
    steps = 0
    while s.sent < TOTAL - CHUNK:
        if not s.step():
            break
        steps += 1
        if steps % 2 == 0 and new_ok < 30:
            new_ok += g.count_ok(env, SNI, 5)
    h.check(s.error is None, f"long stream kept flowing after the move ({s.sent} bytes sent)")
    h.check(new_ok == 30, f"{new_ok}/30 new streams succeed while {x} drains")
    t_fin = time.time()
    # The carrier tunnel must not close before the stream is done.
    early = [e for e in g.events(env.relay.log_text(), "tunnel_down", connector=xid)
             if e["worker"] == carrier_worker]
    h.check(not early, f"{x}'s tunnel carrying the stream is still open before its last bytes")
    outcome = s.finish(timeout=30)
    s.close()
    h.check(outcome == "ok", f"the 20 MiB stream in flight finished byte-exact with close_notify "
                             f"({outcome}, {len(s.got)} bytes, error {s.error})")
    time.sleep(0.5)
    x_after = g.conn_counter(env, x, "streams_opened")
    o_after = g.conn_counter(env, other, "streams_opened")
    h.check(x_after == x_before, f"no new stream went to {x} after the move "
                                 f"(streams_opened {x_before} -> {x_after})")
    h.check(o_after - o_before == 30, f"{other} took the 30 new streams ({o_after - o_before})")

    def back_in_default():
        ups = [e for e in g.events(env.relay.log_text(), "tunnel_up", connector=xid)
               if e["group"] == "contoso/Default"]
        return len(ups) >= 2 and ups
    ups = h.wait_until(back_in_default, 10, f"{x} back with 2 tunnels in contoso/Default")
    h.check(len(ups) == 2, f"{x} reconnected with 2 tunnels in contoso/Default (relay tunnel_up)")
    downs = g.events(env.relay.log_text(), "tunnel_down", connector=xid)
    h.check(len(downs) == 2 and all(e["reason"] == "drained" for e in downs),
            f"both old tunnels of {x} closed as drained ({[e['reason'] for e in downs]})")
    carrier_down = [e for e in downs if e["worker"] == carrier_worker][0]
    h.check(log_ts(carrier_down) >= t_fin - 0.01,
            f"the carrier tunnel closed after the stream's last bytes "
            f"({log_ts(carrier_down) - t_fin:+.3f} s)")
    xproc = procs[x]
    h.wait_until(lambda: g.events(xproc.log_text(), "config_applied", group="Default",
                                  group_changed="true"), 5, f"{x} applied a CONFIG for group Default")
    listed = {c["id"]: c for c in env.ctl_json("connectors", "list")["connectors"]}
    h.check(listed[xid]["group"] == "Default" and listed[env.connector_ids[other]]["group"] == "Site",
            f"apprelayctl lists {x} in Default, {other} in Site")
    h.check(env.counter("streams_reset") == 0, "no stream was reset")


def drain_sigterm(env):
    cids = ("y1", "y2")
    procs = world(env, cids)
    s, y = start_long_stream(env, cids)
    other = [c for c in cids if c != y][0]
    time.sleep(0.3)
    y_before = g.conn_counter(env, y, "streams_opened")
    t0 = time.monotonic()
    os.kill(procs[y].pid, signal.SIGTERM)
    h.wait_until(lambda: g.events(procs[y].log_text(), "draining"), 3, f"{y} draining")
    h.check(g.events(procs[y].log_text(), "draining", streams="1"),
            f"{y} logged draining streams=1")
    new_ok = 0
    steps = 0
    while s.sent < TOTAL - CHUNK:
        if not s.step():
            break
        steps += 1
        if steps % 2 == 0 and new_ok < 30:
            new_ok += g.count_ok(env, SNI, 5)
    h.check(procs[y].alive(), f"{y} still running {time.monotonic() - t0:.1f} s after SIGTERM "
                              f"(stream in flight)")
    h.check(new_ok == 30, f"{new_ok}/30 new streams succeed while {y} drains")
    outcome = s.finish(timeout=30)
    s.close()
    h.check(outcome == "ok", f"the 20 MiB stream in flight finished byte-exact with close_notify "
                             f"({outcome}, {len(s.got)} bytes, error {s.error})")
    rc = procs[y].p.wait(timeout=10)
    h.check(rc == 0, f"{y} exited {rc} after its last stream ended")
    h.check(g.events(procs[y].log_text(), "stopped", streams_cut="0"),
            f"{y} logged stopped streams_cut=0")
    h.check(g.conn_counter(env, y, "streams_opened") == y_before,
            f"no new stream went to {y} after SIGTERM")
    h.check(env.counter("streams_reset") == 0, "no stream was reset")


def drain_sigterm_last_bytes(env):
    """A stream whose last bytes travel while its connector stops: they must reach the user."""
    cids = ("y1", "y2")
    procs = world(env, cids)
    for rnd in range(3):
        # An idle stream on one connector (a first 64 KiB echoed), whichever it landed on.
        s = g.PacedEcho(env, SNI, 320 * 1024, chunk=64 * 1024, seed=21 + rnd)
        if not s.step():
            raise h.TestFailure(f"round {rnd}: stream broke at once: {s.error}")
        time.sleep(0.5)
        carrier = [c for c in cids if in_flight(env, c) == 1]
        h.check(len(carrier) == 1, f"round {rnd}: the stream runs through {carrier}")
        y = carrier[0]
        os.kill(procs[y].pid, signal.SIGTERM)
        h.wait_until(lambda: g.events(procs[y].log_text(), "draining", streams="1"), 5,
                     f"{y} draining with the stream open")
        # The rest in one go with the user's FIN: the backend echoes it and closes, so the
        # connector's last DATA and FIN are queued as its last stream ends.
        rest = s.data[s.sent:]
        s.c.transfer(rest, expect=len(rest), half_close=True, until_close=True, timeout=20,
                     verify=lambda off, b: s.got.extend(b))
        h.check(bytes(s.got) == s.data and s.c.closed_notify,
                f"round {rnd}: all {len(s.data)} bytes back byte-exact with close_notify "
                f"({len(s.got)} bytes, close_notify {s.c.closed_notify})")
        s.close()
        rc = procs[y].p.wait(timeout=10)
        h.check(rc == 0 and g.events(procs[y].log_text(), "stopped", streams_cut="0",
                                     tunnels_unflushed="0"),
                f"round {rnd}: {y} exited {rc}, stopped streams_cut=0 tunnels_unflushed=0")
        procs[y] = env.start_connector(y)
        env.wait_tunnels(2, connector=y)
    h.check(env.counter("streams_reset") == 0, "no stream was reset")


if __name__ == "__main__":
    rc = h.run_test("groups_drain_move", drain_move)
    rc |= h.run_test("groups_drain_sigterm", drain_sigterm)
    rc |= h.run_test("groups_drain_sigterm_last_bytes", drain_sigterm_last_bytes)
    sys.exit(rc)
