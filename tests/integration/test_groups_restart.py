#!/usr/bin/env python3
"""Connector groups: relay restart (issue 4, restart). RELIABILITY.md: "relay crash and restart
with hundreds of connectors (jittered reconnect ...)"; reconnect backoff is full jitter (agent.cc
schedule_retry: uniform in [0, min(cap, base * 2^(attempt-1))] for the attempt-th retry).

World: 2 relay workers, 6 connectors in group Web (12 tunnels), app web -> echo on 127.0.0.2,
connectors run with --backoff-base-ms 200 --backoff-cap-ms 2000. The relay's tunnel port is fixed
for the second run (connectors only know the address they enrolled with).
Steps: 20 streams ok -> relay SIGTERM (exit 0) -> 3 s down -> relay started again on the same
state dir, no apprelayctl call at all -> all 12 tunnels back within 10 s of the relay being ready,
20 streams ok, every connector still running and listed active in group Web.
Backoff checks over every `tunnel_retry` line of the 6 connector logs: each delay_ms <= the
ceiling of its attempt (and <= the 2000 ms cap), retries reached attempt >= 4 (the ceiling grows),
delays are spread (first-retry delays of the 12 tunnels not all equal: >= 6 distinct values; over
all retries >= 50% distinct values)."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import groups_helpers as g  # noqa: E402

SNI = "web.contoso.test"
CIDS = tuple(f"c{i}" for i in range(1, 7))
BASE, CAP = 200, 2000


def body(env):
    _, port = g.start_site_backend(env, "127.0.0.2", "backend-site")
    topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.2:{port}")], connectors=CIDS,
                        workers=2, with_fabrikam=False)
    topo.groups.append(dict(tenant="contoso", name="Web"))
    for c in topo.connectors:
        c["group"] = "Web"
    topo.apps[0]["group"] = "Web"
    env.start_relay(topo)
    tunnel_port = env.tunnel_port
    procs = {c: env.start_connector(c, extra=["--backoff-base-ms", str(BASE),
                                              "--backoff-cap-ms", str(CAP)]) for c in CIDS}
    env.wait_tunnels(12)
    for c in CIDS:
        env.wait_tunnels(2, connector=c)
    h.check(g.count_ok(env, SNI, 20) == 20, "20 streams before the restart")

    # Only what the connectors log once the relay is gone counts as restart retries.
    marks = {c: len(p.log_text()) for c, p in procs.items()}
    rc = env.relay.stop()
    h.check(rc == 0, f"relay exited {rc} after SIGTERM")
    time.sleep(3.0)
    h.check(all(p.alive() for p in procs.values()), "all 6 connectors keep running, relay down")

    base_toml = topo.to_toml
    topo.to_toml = lambda state_dir: base_toml(state_dir).replace(
        'tunnel_listen = "127.0.0.1:0"', f'tunnel_listen = "127.0.0.1:{tunnel_port}"')
    os.unlink(env.stats_path)
    env.start_relay(topo, provision=False, name="relay2")
    t_ready = time.monotonic()
    h.check(env.tunnel_port == tunnel_port, f"restarted relay on tunnel port {tunnel_port}")
    env.wait_tunnels(12, timeout=10)
    secs = time.monotonic() - t_ready
    h.check(secs < 10.0, f"all 12 tunnels back {secs:.2f} s after the relay was ready (< 10 s), "
                         f"no admin action")
    h.check(g.count_ok(env, SNI, 20) == 20, "20 streams after the restart")
    listed = env.ctl_json("connectors", "list")["connectors"]
    h.check(len(listed) == 6 and all(c["group"] == "Web" and c["status"] == "active"
                                     for c in listed),
            f"6 connectors listed active in Web ({[(c['name'], c['status']) for c in listed]})")

    retries = []
    for c, p in procs.items():
        for e in g.events(p.log_text()[marks[c]:], "tunnel_retry"):
            retries.append((c, e["worker"], int(e["attempt"]), int(e["delay_ms"])))
    h.check(len(retries) >= 12, f"{len(retries)} tunnel_retry lines across the 6 connectors")
    over = [r for r in retries if r[3] > min(CAP, BASE << (r[2] - 1))]
    h.check(not over, f"every delay within its attempt's ceiling min({CAP}, {BASE}*2^(n-1)) "
                      f"(violations: {over[:5]})")
    delays = [r[3] for r in retries]
    h.check(max(delays) <= CAP, f"max delay {max(delays)} ms <= cap {CAP} ms")
    h.check(max(r[2] for r in retries) >= 4, f"retries reached attempt "
                                             f"{max(r[2] for r in retries)} (>= 4)")
    # One first retry per tunnel: the first attempt-1 line of each (connector, worker). A tunnel
    # that came back to the restarting relay and was dropped once more starts its backoff again
    # (a second attempt-1 line, by design), so counting every attempt-1 line is not "12".
    first_by_tunnel = {}
    for c, w, attempt, delay in retries:
        if attempt == 1:
            first_by_tunnel.setdefault((c, w), delay)
    first = list(first_by_tunnel.values())
    h.check(len(first_by_tunnel) == 12 and len(set(first)) >= 6,
            f"first-retry delays of the 12 tunnels are spread: {sorted(first)} "
            f"({sum(1 for r in retries if r[2] == 1)} attempt-1 lines)")
    distinct = len(set(delays)) / len(delays)
    h.log(f"delays: n={len(delays)} mean={statistics.mean(delays):.0f} "
          f"stdev={statistics.pstdev(delays):.0f} distinct={distinct:.0%}")
    h.check(distinct >= 0.5 and statistics.pstdev(delays) > 50,
            f"delays spread: {distinct:.0%} distinct, stdev {statistics.pstdev(delays):.0f} ms")
    print(f"RESULT restart: 12 tunnels back {secs:.2f} s after relay ready; {len(delays)} retries, "
          f"delays {min(delays)}..{max(delays)} ms")


if __name__ == "__main__":
    sys.exit(h.run_test("groups_restart", body))
