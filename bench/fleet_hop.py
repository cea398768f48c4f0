#!/usr/bin/env python3
"""bench/fleet_hop.py: what the forwarding hop between relays costs, measured side by side.

    python3 bench/fleet_hop.py [--rounds N] [--build DIR]

A 3-member etcd cluster and two relays (1 worker each) on loopback; both connectors pinned to
relay A. The same apprelay-loadgen scenarios run alternately against A (direct: user -> A ->
connector) and B (forwarded: user -> B -> A -> connector), N rounds (default 3), and the
medians are compared: B / A for rates, B - A for latency.
  - new_sessions: 2,000 echo sessions of 1 KiB, 32 at a time (a TLS handshake per session on
    the user's relay, and on the forwarded path one more between the relays);
  - bulk_1: one 64 MiB echo stream (throughput through the splice);
  - rr_64: 64 long-lived streams doing 1 KiB request/response for 3 s.
Prints one JSON line per scenario and a table. Every process is started and stopped by this
script (by pid); every loop is bounded.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

SCENARIOS = {
    # mode, streams, concurrency, bytes, duration
    "new_sessions": ("echo", 2000, 32, 1024, None),
    "bulk_1": ("echo", 1, 1, 64 * 1024 ** 2, None),
    "rr_64": ("rr", 64, 64, 1024, 3),
}


def run_loadgen(h, port, ca, sni, mode, streams, conc, nbytes, duration):
    argv = [h.LOADGEN_BIN, "--connect", f"127.0.0.1:{port}", "--sni", sni, "--ca", ca,
            "--mode", mode, "--streams", str(streams), "--concurrency", str(conc),
            "--bytes", str(nbytes), "--timeout", "120", "--json"]
    if duration:
        argv += ["--duration", str(duration), "--rate", "2000"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    res = next((json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")), None)
    if r.returncode != 0 or res is None or res.get("failed", 0):
        raise RuntimeError(f"loadgen failed on port {port}: rc={r.returncode} {r.stderr[-300:]}")
    return res


def metric(name, res):
    """The figure compared: requests/s for rr, MB/s for bulk, sessions/s otherwise."""
    if name == "rr_64":
        return res["requests_per_s"]
    if name == "bulk_1":
        return res["mb_per_s"]
    return res["streams_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default=None)
    args = ap.parse_args()
    if args.build:
        os.environ["APPRELAY_BUILD_DIR"] = os.path.abspath(args.build)
    import harness as h  # noqa: E402 - after APPRELAY_BUILD_DIR
    from etcd_cluster import EtcdCluster  # noqa: E402
    from fleet import WEB_SNI, FleetRelay, pin_to_one_relay, publish_web  # noqa: E402

    results = {}
    with h.Env("fleet_hop") as env, EtcdCluster(3) as etcd:
        a = FleetRelay(env, "relay-a", etcd.endpoints).start(log_level="warn")
        b = FleetRelay(env, "relay-b", etcd.endpoints).start(log_level="warn")
        publish_web(env, a)
        a.use()
        for cid in ("c1", "c2"):
            env.enroll(cid)
            pin_to_one_relay(env, cid)
            env.start_connector(cid, log_level="warn")
        h.wait_until(lambda: a.tunnels_up() >= 2, 20, "A holds both tunnels")
        h.wait_until(lambda: all(c.get("relays") == ["relay-a"] for c in
                                 b.ctl_json("connectors", "list")["connectors"]), 10,
                     "B knows where the tunnels are")
        ca = env.pki.path("users-ca.crt")
        for name, (mode, streams, conc, nbytes, duration) in SCENARIOS.items():
            direct, hop = [], []
            for _ in range(args.rounds):
                for port, out in ((a.user_port, direct), (b.user_port, hop)):
                    res = run_loadgen(h, port, ca, WEB_SNI, mode, streams, conc, nbytes,
                                      duration)
                    p99 = res.get("p99_ms")
                    out.append((metric(name, res), None if p99 is None else p99 * 1000))
            d = statistics.median(x[0] for x in direct)
            f = statistics.median(x[0] for x in hop)
            dp = statistics.median(x[1] for x in direct if x[1] is not None) \
                if any(x[1] is not None for x in direct) else None
            fp = statistics.median(x[1] for x in hop if x[1] is not None) \
                if any(x[1] is not None for x in hop) else None
            results[name] = {"direct": d, "forwarded": f, "ratio": f / d if d else None,
                             "p99_us_direct": dp, "p99_us_forwarded": fp,
                             "rounds": {"direct": direct, "forwarded": hop}}
            print(json.dumps({"scenario": name, **results[name]}), flush=True)
        h.check(b.counter("streams_forwarded") > 0, "B forwarded the streams")
    print(f"\n{'scenario':<14}{'direct (A)':>14}{'forwarded (B)':>16}{'B/A':>8}"
          f"{'p99 us A':>11}{'p99 us B':>11}")
    for name, r in results.items():
        print(f"{name:<14}{r['direct']:>14.1f}{r['forwarded']:>16.1f}{r['ratio']:>8.2f}"
              f"{(r['p99_us_direct'] or 0):>11.0f}{(r['p99_us_forwarded'] or 0):>11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
