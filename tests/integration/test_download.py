"""The download path with stock clients (issue 11): curl fetches from nginx through one
connector, byte-exact, with the connector's memory bounded by its windows, not by the size of
the responses.

1. 8 curls in parallel, each GET of a 64 MiB file (nginx-light, one worker, sendfile), through
   one connector: every body has the file's sha256, curl exits 0 (it checks the TLS close), and
   the connector's RSS stays under 96 MiB the whole time (sampled every 50 ms; 8 streams x 4 MiB
   window + buffers; before the backend read buffer dropped its consumed prefix it grew with
   every response, 8 x 64 MiB here).
2. A client that stops reading mid-download (curl --limit-rate 1M for 2 s, then killed) costs the
   relay at most its window, and the next download is byte-exact.
"""
import hashlib
import os
import subprocess
import sys
import time

import harness as h
import stock

SIZE = 64 << 20


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def curl_argv(env, port, out):
    return ["curl", "-sS", "--max-time", "60", "--cacert", env.pki.path("users-ca.crt"),
            "--resolve", f"{stock.LOCAL_HOST}:{port}:127.0.0.1", "-o", out,
            f"https://{stock.LOCAL_HOST}:{port}/big"]


def body(env):
    _, nginx_port = stock.start_nginx(env, {"big": SIZE})
    want = hashlib.sha256(open(os.path.join(env.dir, "nginx-www", "big"), "rb").read()).hexdigest()
    topo = h.make_world(env.pki, [("web", stock.LOCAL_HOST, f"127.0.0.1:{nginx_port}")],
                        connectors=("c1",), workers=1, with_fabrikam=False)
    env.start_relay(topo)
    conn = env.start_connector("c1")
    env.wait_tunnels(1)
    base_rss = rss(conn.pid)

    # -- 1: 8 parallel downloads ------------------------------------------------------------
    outs = [os.path.join(env.dir, f"dl{i}.bin") for i in range(8)]
    procs = [subprocess.Popen(curl_argv(env, env.user_port, o), stderr=subprocess.PIPE)
             for o in outs]
    peak = base_rss
    deadline = time.monotonic() + 90
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        peak = max(peak, rss(conn.pid))
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    errs = [p.stderr.read().decode()[-200:] for p in procs if p.returncode != 0]
    h.check(not errs, f"8 curl downloads exited 0 ({errs[:2]})")
    got = [hashlib.sha256(open(o, "rb").read()).hexdigest() for o in outs]
    h.check(all(g == want for g in got), f"8 x 64 MiB byte-exact (sha256 {want[:12]}...)")
    h.check(peak - base_rss < 96 << 20,
            f"connector RSS peak {peak >> 20} MiB, {(peak - base_rss) >> 20} MiB over its idle "
            f"{base_rss >> 20} MiB (< 96 MiB for 8 x 64 MiB)")

    # -- 2: a reader that stalls, then leaves ------------------------------------------------
    slow = subprocess.Popen(curl_argv(env, env.user_port, os.path.join(env.dir, "slow.bin")) +
                            ["--limit-rate", "1M"], stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    relay_rss = rss(env.relay.pid)
    slow.kill()
    slow.wait()
    out = os.path.join(env.dir, "after.bin")
    r = subprocess.run(curl_argv(env, env.user_port, out), capture_output=True, timeout=90)
    h.check(r.returncode == 0 and hashlib.sha256(open(out, "rb").read()).hexdigest() == want,
            "the next download after a killed slow reader is byte-exact")
    h.wait_until(lambda: env.counter("streams_user_aborted") >= 1, 5,
                 "the killed reader counts as a user abort")
    print(f"RESULT download: 8 x 64 MiB byte-exact, connector RSS +{(peak - base_rss) >> 20} MiB, "
          f"relay RSS {relay_rss >> 20} MiB with a stalled reader")


if __name__ == "__main__":
    sys.exit(h.run_test("download", body))
