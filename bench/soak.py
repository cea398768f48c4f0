#!/usr/bin/env python3
"""bench/soak.py: a bounded soak of the relay (issue 14, item 5).

    python3 bench/soak.py [--seconds 600] [--build DIR] [--json FILE]

One relay (1 worker, [limits] idle_timeout_ms = 2000), two connectors and an echo backend on
loopback. For --seconds (default 600; CI runs 60) it keeps a mix of about 500 new streams/s:
  - clean:   1 KiB echoes, 380/s (apprelay-loadgen, close_notify + close);
  - aborts:  64 KiB echoes reset by the user after 16 KiB, 100/s (--abort-after);
  - idle:    20 TLS users/s that echo once and then go quiet without closing: the relay cuts
             them at the idle limit (streams_idle_timeout);
  - bulk:    2 MiB echoes, 2/s;
and restarts one connector (SIGTERM: drain, then start again) every minute (every 20 s when
--seconds < 180), alternating between the two.

It samples the relay's RSS (VmRSS), open descriptors (/proc/PID/fd), user connections open
(user_conns_open) and tunnels (tunnels_up) at the baseline, every minute (every 15 s when short)
and at the end. The baseline is taken after a 20 s warm-up with the same mix has finished and
the relay has settled (idle limit + 12 s: two of the worker's 5 s buffer-pool trims), so allocator and buffer-pool warm-up is not counted
as growth; the end sample is taken the same way after the soak. The soak fails (exit 1) unless at
the end: RSS <= baseline + 5 %, descriptors <= baseline + 5 % (at least 2), user connections
== baseline, tunnels == baseline, and no load generator reported a corrupt stream. Failed clean
streams are reported (a connector restart drains gracefully, so there should be none).
Every process is started and stopped by this script, by pid; every loop is bounded.
"""
import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

SNI = "echo.contoso.test"
IDLE_TIMEOUT_MS = 2000
MIX = {
    # name: (rate per s, bytes, concurrency, extra loadgen args)
    "clean": (380, 1024, 64, []),
    "aborts": (100, 64 * 1024, 32, ["--abort-after", str(16 * 1024)]),
    "bulk": (2, 2 * 1024 * 1024, 4, []),
}
IDLE_PER_S = 20


def read_sample(h, env, relay_pid):
    with open(f"/proc/{relay_pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{relay_pid}/fd"))
    st = env.stats()
    return {"t": round(time.monotonic(), 1), "rss_kb": rss_kb, "fds": fds,
            "user_conns_open": int(st.get("counters", {}).get("user_conns_open", 0)),
            "tunnels_up": int(st.get("tunnels_up", 0))}


class Load:
    """The mix, for `seconds`: loadgen processes plus an idle-user thread."""

    def __init__(self, h, env, seconds):
        self.h, self.env, self.seconds = h, env, seconds
        self.procs = {}
        self.results = {}
        self.idle_opened = 0
        self._stop = threading.Event()
        self._idle = threading.Thread(target=self._idle_users, daemon=True)

    def start(self):
        for name, (rate, nbytes, conc, extra) in MIX.items():
            streams = max(1, int(rate * self.seconds))
            argv = [self.h.LOADGEN_BIN, "--connect", f"127.0.0.1:{self.env.user_port}", "--sni",
                    SNI, "--ca", self.env.pki.path("users-ca.crt"), "--mode", "echo",
                    "--streams", str(streams), "--concurrency", str(conc), "--bytes", str(nbytes),
                    "--rate", str(rate), "--timeout", str(int(self.seconds) + 60), "--json"]
            self.procs[name] = subprocess.Popen(argv + extra, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True)
        self._idle.start()
        return self

    def _idle_users(self):
        ctx = self.h.user_ssl_context(self.env.pki.path("users-ca.crt"))
        held = []
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < self.seconds:
            for _ in range(IDLE_PER_S):
                try:
                    raw = socket.create_connection(("127.0.0.1", self.env.user_port), timeout=5)
                    s = ctx.wrap_socket(raw, server_hostname=SNI)
                    s.sendall(b"x" * 64)
                    s.recv(64)
                    held.append((time.monotonic(), s))
                    self.idle_opened += 1
                except (OSError, ssl.SSLError):
                    pass
            # Close ours well after the relay's idle limit cut them (bounded memory and fds).
            now = time.monotonic()
            keep = []
            for at, s in held:
                if now - at > IDLE_TIMEOUT_MS / 1000 + 3:
                    s.close()
                else:
                    keep.append((at, s))
            held = keep
            self._stop.wait(1.0)
        for _, s in held:
            s.close()

    def wait(self):
        for name, p in self.procs.items():
            try:
                out, err = p.communicate(timeout=self.seconds + 120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            res = next((json.loads(x) for x in out.splitlines() if x.startswith("{")), None)
            self.results[name] = {"rc": p.returncode, "result": res,
                                  "stderr": err.strip()[-400:] if p.returncode else ""}
        self._stop.set()
        self._idle.join(timeout=30)
        return self.results


def restart_connector(h, env, procs, cid):
    procs[cid].stop(sig=signal.SIGTERM, timeout=40)
    procs[cid] = env.start_connector(cid, log_level="warn")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--build", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.build:
        os.environ["APPRELAY_BUILD_DIR"] = os.path.abspath(args.build)
    import harness as h  # noqa: E402 - after APPRELAY_BUILD_DIR

    short = args.seconds < 180
    sample_every = 15 if short else 60
    restart_every = 20 if short else 60
    report = {"seconds": args.seconds, "samples": [], "load": {}}
    ok = True
    with h.Env("soak") as env:
        _, echo_port = env.start_backend("echo", threads=2)
        topo = h.make_world(env.pki, [("echo", SNI, f"127.0.0.1:{echo_port}")],
                            connectors=("c1", "c2"), workers=1, with_fabrikam=False)
        topo.limits.update({"idle_timeout_ms": IDLE_TIMEOUT_MS})
        env.start_relay(topo, log_level="warn")
        procs = {cid: env.start_connector(cid, log_level="warn") for cid in ("c1", "c2")}
        env.wait_tunnels(2)
        relay_pid = env.relay.pid
        # Idle users cut, then two buffer-pool trims of the worker (every 5 s: the first sees
        # the load's last interval, the second frees what stayed unused).
        settle = IDLE_TIMEOUT_MS / 1000 + 12

        h.log("warm-up: 20 s of the same mix, with one restart of each connector")
        warm = Load(h, env, 20).start()
        # The relay's RSS rises with the first tunnels that come and go (about 1 MiB per
        # connector restart at first, levelling off some 15 MiB higher after ~60 restarts:
        # allocator high water, not a leak), so the baseline is taken after the same churn.
        for cid in ("c1", "c2"):
            time.sleep(5)
            restart_connector(h, env, procs, cid)
        warm.wait()
        env.wait_tunnels(2)
        time.sleep(settle)
        base = read_sample(h, env, relay_pid)
        base["phase"] = "baseline"
        report["samples"].append(base)
        print(json.dumps(base), flush=True)

        load = Load(h, env, args.seconds).start()
        t0 = time.monotonic()
        next_sample = t0 + sample_every
        next_restart = t0 + restart_every
        restarts = 0
        while time.monotonic() - t0 < args.seconds:
            now = time.monotonic()
            if now >= next_restart:
                cid = ("c1", "c2")[restarts % 2]
                h.log(f"restarting connector {cid}")
                restart_connector(h, env, procs, cid)
                restarts += 1
                next_restart += restart_every
            if now >= next_sample:
                s = read_sample(h, env, relay_pid)
                s["phase"] = f"t+{int(now - t0)}s"
                report["samples"].append(s)
                print(json.dumps(s), flush=True)
                next_sample += sample_every
            time.sleep(0.5)
        results = load.wait()
        env.wait_tunnels(2, timeout=30)
        time.sleep(settle)
        end = read_sample(h, env, relay_pid)
        end["phase"] = "end"
        report["samples"].append(end)
        print(json.dumps(end), flush=True)
        counters = env.counters()

        total_streams = load.idle_opened
        for name, r in results.items():
            res = r["result"] or {}
            total_streams += int(res.get("ok", 0)) + int(res.get("failed", 0))
            report["load"][name] = {k: res.get(k) for k in ("ok", "failed", "aborted", "seconds",
                                                             "streams_per_s")}
            report["load"][name]["rc"] = r["rc"]
            if r["stderr"]:
                report["load"][name]["stderr"] = r["stderr"]
            if "mismatch" in r["stderr"] or "corrupt" in r["stderr"]:
                ok = False
                print(f"FAIL: {name}: a stream was corrupt: {r['stderr']}")
        report["load"]["idle"] = {"opened": load.idle_opened,
                                  "cut_by_relay": int(counters.get("streams_idle_timeout", 0))}
        report["restarts"] = restarts
        report["streams_per_s"] = round(total_streams / max(args.seconds, 1), 1)

        # The short soak (2 restarts after the baseline) still sees part of that high water: it
        # allows +10 %; the full one (--seconds 600) keeps +5 %.
        rss_limit = 1.10 if short else 1.05
        checks = [
            ("rss", end["rss_kb"] <= base["rss_kb"] * rss_limit,
             f"RSS {base['rss_kb']} -> {end['rss_kb']} KiB (limit +{round((rss_limit - 1) * 100)} %)"),
            ("fds", end["fds"] <= max(base["fds"] * 1.05, base["fds"] + 2),
             f"descriptors {base['fds']} -> {end['fds']}"),
            ("user_conns", end["user_conns_open"] == base["user_conns_open"],
             f"user connections open {base['user_conns_open']} -> {end['user_conns_open']}"),
            ("tunnels", end["tunnels_up"] == base["tunnels_up"],
             f"tunnels {base['tunnels_up']} -> {end['tunnels_up']}"),
            ("idle_cut", report["load"]["idle"]["cut_by_relay"] > 0,
             f"idle users cut by the relay: {report['load']['idle']['cut_by_relay']}"),
        ]
        for name, good, text in checks:
            print(("ok:   " if good else "FAIL: ") + text)
            ok = ok and good
        report["ok"] = ok
        clean = report["load"].get("clean", {})
        print(f"soak {args.seconds} s: {report['streams_per_s']} new streams/s, {restarts} "
              f"connector restarts, clean streams ok {clean.get('ok')} failed "
              f"{clean.get('failed')}; {'PASS' if ok else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
