"""Opens and aborts are charged to the user's source address, never to the tunnel (issue 11).

World: 1 relay worker with small source budgets ([limits] source_open_rate = 200 burst 200,
source_abort_rate = 50 burst 50), 1 connector, apps web (localhost -> nginx /1k) and echo.

While a long-lived stream from 127.0.0.1 echoes 1 MiB requests byte-exact the whole time:
1. wrk from 127.0.0.1 opens a new connection per request, far above 200/s: the relay closes the
   excess at accept (user_conns_throttled, a source_throttled line at most once a second naming
   127.0.0.1 and budget=opens). Meanwhile curl from 127.0.0.2, another source, gets every
   response.
2. After the buckets refill, the load generator from 127.0.0.1 aborts 500/s mid-response: past
   50 aborts its new connections are closed at accept (budget=aborts), again 127.0.0.2 is served.
Through both, the tunnel never closes and the connector never refuses an OPEN.
"""
import json
import os
import subprocess
import sys
import threading
import time

import groups_helpers as g
import harness as h
import stock

ECHO_SNI = "echo.contoso.test"
OTHER_SOURCE = "127.0.0.2"


def curl_from(env, source, url_port, n):
    """n sequential GETs of /1k from `source`; returns the list of failures (empty = all ok)."""
    bad = []
    for _ in range(n):
        r = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--interface", source, "--cacert",
             env.pki.path("users-ca.crt"), "--resolve", f"{stock.LOCAL_HOST}:{url_port}:127.0.0.1",
             "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             f"https://{stock.LOCAL_HOST}:{url_port}/1k"],
            capture_output=True, text=True, timeout=15)
        if r.returncode != 0 or r.stdout.strip() != "200 1024":
            bad.append((r.returncode, r.stdout.strip(), r.stderr.strip()[:200]))
        time.sleep(0.05)
    return bad


def throttle_lines(text, budget):
    return [e for e in g.events(text, "source_throttled") if e.get("budget") == budget]


def body(env):
    _, nginx_port = stock.start_nginx(env, {"1k": 1024})
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", stock.LOCAL_HOST, f"127.0.0.1:{nginx_port}"),
                                  ("echo", ECHO_SNI, f"127.0.0.1:{echo_port}")],
                        connectors=("c1",), workers=1, with_fabrikam=False)
    topo.limits.update({"source_open_rate": 200, "source_open_burst": 200,
                        "source_abort_rate": 50, "source_abort_burst": 50})
    env.start_relay(topo)
    conn = env.start_connector("c1")
    env.wait_tunnels(1)
    mark = len(conn.log_text())
    closed0 = env.counter("tunnels_closed")

    bulk_result = {}

    def bulk():
        bulk_result["rc"], bulk_result["r"] = h.run_loadgen(
            env, ECHO_SNI, 1, 1, 1 << 20, timeout=60, extra=["--mode", "rr", "--duration", "9"])
    t = threading.Thread(target=bulk)
    t.start()
    h.wait_until(lambda: env.counter("streams_opened") >= 1, 10, "the bulk stream is open")

    # -- 1: opens past the source's budget ------------------------------------------------
    other = {}
    c = threading.Thread(target=lambda: other.setdefault("bad", curl_from(
        env, OTHER_SOURCE, env.user_port, 20)))
    c.start()
    rc, w, _ = stock.run_wrk(f"https://{stock.LOCAL_HOST}:{env.user_port}/1k", connections=16,
                             seconds=3, headers=["Connection: close"])
    c.join(timeout=60)
    h.check(w["requests"] > 0, f"wrk got {w['requests']} responses within the budget")
    thr = env.counter("user_conns_throttled")
    h.check(thr > 0, f"{thr} connections from 127.0.0.1 closed at accept (opens past 200/s)")
    h.check(w["socket_errors"] > 0, f"wrk saw the refusals as socket errors ({w['errors']})")
    h.check(other.get("bad") == [], f"127.0.0.2 got all 20 responses meanwhile: {other.get('bad')}")
    lines = throttle_lines(env.relay.log_text(), "opens")
    h.check(lines and all(e.get("source") == "127.0.0.1" for e in lines),
            f"source_throttled budget=opens names 127.0.0.1 ({lines[:2]})")
    h.check(len(lines) <= 5, f"{len(lines)} source_throttled lines for {thr} refusals in 3 s "
                             f"(at most one a second)")

    # -- 2: aborts past the source's budget -----------------------------------------------
    time.sleep(1.5)  # both buckets refill (200/s and 50/s, bursts 200 and 50)
    before = env.counters()
    other = {}
    c = threading.Thread(target=lambda: other.setdefault("bad", curl_from(
        env, OTHER_SOURCE, env.user_port, 20)))
    c.start()
    argv = [h.LOADGEN_BIN, "--connect", f"127.0.0.1:{env.user_port}", "--sni", ECHO_SNI,
            "--ca", env.pki.path("users-ca.crt"), "--streams", "1000", "--concurrency", "32",
            "--bytes", str(256 << 10), "--abort-after", str(16 << 10), "--rate", "500",
            "--timeout", "20", "--json"]
    h.log("run: " + " ".join(argv))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    c.join(timeout=60)
    ab = next(json.loads(x) for x in r.stdout.splitlines() if x.startswith("{"))
    after = env.counters()
    d_thr = int(after.get("user_conns_throttled_aborts", 0)) - int(
        before.get("user_conns_throttled_aborts", 0))
    h.check(ab["aborted"] >= 50, f"{ab['aborted']} aborts went through (burst 50 + 50/s)")
    h.check(ab["failed"] > 0 and d_thr > 0,
            f"{d_thr} connections refused at accept for spent aborts; the load generator saw "
            f"{ab['failed']} fail")
    h.check(ab["aborted"] <= 50 + 50 * (ab["seconds"] + 1) + 32,
            f"{ab['aborted']} aborts in {ab['seconds']:.1f} s stay within burst + rate")
    h.check(other.get("bad") == [], f"127.0.0.2 got all 20 responses meanwhile: {other.get('bad')}")
    lines = throttle_lines(env.relay.log_text(), "aborts")
    h.check(lines and all(e.get("source") == "127.0.0.1" for e in lines),
            f"source_throttled budget=aborts names 127.0.0.1 ({lines[:2]})")

    t.join(timeout=90)
    br = bulk_result.get("r")
    h.check(bulk_result.get("rc") == 0 and br and br["failed"] == 0 and br["requests"] > 0,
            f"the long-lived stream from the throttled source echoed {br and br['requests']} x "
            f"1 MiB byte-exact throughout (failed {br and br['failed']})")
    h.check(env.counter("tunnels_closed") == closed0, "the tunnel never closed")
    h.check(not g.events(conn.log_text()[mark:], "tunnel_down"), "no tunnel_down on the connector")
    h.check(env.counter("streams_failed_limit") == 0, "no stream refused by a tunnel budget")
    with open(os.path.join(env.dir, "connector-c1-stats.json")) as f:
        cs = json.load(f)
    h.check(int(cs["counters"].get("streams_refused", 0)) == 0, "the connector refused no OPEN")
    print(f"RESULT source_limits: opens: {thr} refused at accept, wrk {w['requests']} served; "
          f"aborts: {ab['aborted']} through, {d_thr} refused; other source 40/40 served")


if __name__ == "__main__":
    sys.exit(h.run_test("source_limits", body))
