"""Stock-client scenarios for bench/run: wrk and h2load against nginx, through apprelay and
through HAProxy, in the same slot and with the same pinning as the load generator's scenarios.

Backend: nginx-light, one worker, on cpu 0 with the clients (tests/integration/stock.py writes
its config: sendfile, keep-alive, POST /upload read and discarded). The app's hostname is
`localhost`: wrk and h2load take the SNI from the URL and have no --connect-to.

  dl_1, dl_16   wrk GET of a 256 MiB file (quick: 32 MiB) over 1 and 16 keep-alive connections
  ul_1          wrk POST of a 64 MiB body (quick: 16 MiB) over 1 connection
  ka_64         wrk GET /1k, keep-alive, 64 connections
  ka_512        h2load --h1 GET /1k, keep-alive, 512 connections
  close_64      wrk GET /1k with "Connection: close" (a new TLS connection per request), 64

Rates are raw (Gbit/s of body bytes, requests/s) and per busy relay core. Any socket error, any
non-2xx response, any failed or errored h2load request fails the scenario, for either system.

apprelay-dpdk: nginx and the clients run inside the namespace behind the relay's DPDK port
(bench/run's system_world); the app's hostname is then dpdk_world.WWW, which the namespace's
/etc/hosts maps to the relay's address (wrk and h2load take the SNI from the URL).
"""
import os
import re
import shutil
import subprocess
import time

HOST = "localhost"
MiB = 1024 ** 2

# name -> (tool, connections, seconds, what); sizes in FILES / UPLOAD.
FULL = {
    "dl_1": ("wrk", 1, 10, "dl"),
    "dl_16": ("wrk", 16, 10, "dl"),
    "ul_1": ("wrk", 1, 10, "ul"),
    "ka_64": ("wrk", 64, 10, "1k"),
    "ka_512": ("h2load", 512, 10, "1k"),
    "close_64": ("wrk", 64, 10, "close"),
}
QUICK = {k: (v[0], v[1], 3, v[3]) for k, v in FULL.items()}
DL_BYTES = {"full": 256 * MiB, "quick": 32 * MiB}
UL_BYTES = {"full": 64 * MiB, "quick": 16 * MiB}
H2LOAD_BIN = shutil.which("h2load") or "/usr/bin/h2load"


class StockFailed(RuntimeError):
    def __init__(self, msg, res):
        super().__init__(msg)
        self.result = res


def parse_h2load(out):
    r = dict(requests=0, succeeded=0, failed=0, errored=0, timeout=0, rps=0.0, seconds=0.0,
             non2xx=0, bytes=0.0)
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if m:
        r["seconds"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        v = [int(x) for x in m.groups()]
        r.update(requests=v[2], succeeded=v[3], failed=v[4], errored=v[5], timeout=v[6])
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"traffic: ([\d.]+)([KMG]?)B \((\d+)\) total", out)
    if m:
        r["bytes"] = float(m.group(3))
    return r


def upload_script(path, nbytes):
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                f'wrk.body = string.rep("a", {nbytes})\n')
    return path


def run_one(stock, env, port, name, spec, size_key, host=HOST, netns=None):
    """Runs one scenario against the system on `port` (inside network namespace `netns` when
    given); returns the tool's parsed result plus rate/unit. Raises StockFailed on any socket
    error or bad response."""
    tool, conns, seconds, what = spec
    base = f"https://{host}:{port}"
    if tool == "h2load":
        argv = ([] if netns is None else ["ip", "netns", "exec", netns]) + [
            H2LOAD_BIN, "--h1", "-c", str(conns), "-t", "1", "-D", str(seconds),
            "--warm-up-time=1", f"{base}/1k"]
        print("[stock] " + " ".join(argv), flush=True)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        out = p.stdout + p.stderr
        r = parse_h2load(out)
        r.update(tool="h2load", connections=conns, rate=r["rps"], unit="req/s")
        bad = r["failed"] + r["errored"] + r["timeout"] + r["non2xx"]
        if p.returncode != 0 or bad or r["succeeded"] == 0:
            raise StockFailed(f"h2load exit {p.returncode}: {r['failed']} failed, "
                              f"{r['errored']} errored, {r['timeout']} timeout, {r['non2xx']} "
                              f"non-2xx of {r['requests']}: {out.strip()[-300:]}", r)
        return r
    headers, script, url = [], None, f"{base}/1k"
    if what == "dl":
        url = f"{base}/big"
    elif what == "ul":
        script = upload_script(os.path.join(env.dir, "upload.lua"), UL_BYTES[size_key])
        url = f"{base}/upload"
    elif what == "close":
        headers = ["Connection: close"]
    rc, r, out = stock.run_wrk(url, connections=conns, seconds=seconds, threads=min(conns, 2),
                               headers=headers, script=script, timeout_s=30, latency=True,
                               netns=netns)
    r.update(tool="wrk", connections=conns)
    if what == "dl":
        r.update(rate=r["bytes"] * 8 / r["seconds"] / 1e9 if r["seconds"] else 0.0,
                 unit="Gbit/s", bytes_moved=r["bytes"])
    elif what == "ul":
        moved = r["requests"] * UL_BYTES[size_key]
        r.update(rate=moved * 8 / r["seconds"] / 1e9 if r["seconds"] else 0.0, unit="Gbit/s",
                 bytes_moved=moved)
    else:
        r.update(rate=r["rps"], unit="req/s")
    # A download window may end before a 256 MiB response does (16 connections share the
    # rate): bytes read count, a completed request is not required there.
    done = r["bytes"] > 0 if what == "dl" else r["requests"] > 0
    if rc != 0 or r["socket_errors"] or r["non2xx"] or not done:
        raise StockFailed(f"wrk exit {rc}: socket errors {r['errors']}, {r['non2xx']} non-2xx, "
                          f"{r['requests']} requests", r)
    return r


def run_system(bench, harness, peer_mod, stock, system, names, quick):
    """One system (apprelay, apprelay-dpdk or haproxy) with 1 relay worker: nginx behind it,
    each scenario. Raises bench.Skipped where the system cannot run here."""
    with bench.system_world(harness, system) as w:
        with harness.Env(f"bench-stock-{system}") as env:
            return run_scenarios(bench, harness, peer_mod, stock, env, w, system, names, quick)


def run_scenarios(bench, harness, peer_mod, stock, env, w, system, names, quick):
    size_key = "quick" if quick else "full"
    specs = QUICK if quick else FULL
    out = {}
    netns = w.ns if w else None
    host = HOST
    _, nginx_port = stock.start_nginx(env, {"1k": 1024, "big": DL_BYTES[size_key]},
                                      netns=netns)
    if system == "apprelay":
        pid, port, _ = bench.start_apprelay(harness, env, nginx_port, 1, host=HOST)
        counters = env.counters
    elif system == "apprelay-dpdk":
        import dpdk_world
        host = dpdk_world.WWW  # the namespace's /etc/hosts: the relay's address
        try:
            pid, port, _ = bench.start_apprelay_dpdk(harness, env, w, nginx_port, host=host)
        except bench.Skipped as e:
            bench.log(f"{system} stock clients: skipped: {e}")
            return bench.skipped_scenarios(names, str(e))
        counters = env.counters
    else:
        pid, port, _ = bench.start_haproxy(harness, peer_mod, env, nginx_port, 1, host=HOST)
        counters = dict
    cpus = bench.worker_cpus(1)
    for name in names:
        rec = dict(ok=False, client=specs[name][0])
        out[name] = rec
        c0 = counters()
        before = bench.Sample(pid, cpus)
        try:
            res = run_one(stock, env, port, name, specs[name], size_key, host, netns)
            after = bench.Sample(pid, cpus, end=True)
            rec.update(summarize(bench, res, after.since(before)))
            rec["ok"] = True
            bench.log(f"{system} w1 {name} ({res['tool']}): {bench.fmt_rec(name, rec)}")
        except Exception as e:  # noqa: BLE001 -- one scenario's failure must not stop the run
            res = getattr(e, "result", None)
            if res is not None:
                after = bench.Sample(pid, cpus, end=True)
                rec.update(summarize(bench, res, after.since(before)))
            rec["error"] = str(e)
            bench.log(f"{system} w1 {name}: FAILED {e}")
        rec["relay_counters"] = bench.counter_delta(c0, counters())
        time.sleep(0.5)  # closes of the last connections settle before the next sample
    env.failed = env.failed or any(not s.get("ok") for s in out.values())
    return out


def summarize(bench, res, acct):
    rec = dict(acct)
    rec["client_result"] = res
    rec["rate"] = res["rate"]
    rec["unit"] = res["unit"]
    rec["relay_cores"] = acct["relay_cpu_s"] / acct["wall_s"] if acct["wall_s"] > 0 else 0.0
    busy = acct["busy_cores"]
    rec["rate_per_busy_core"] = rec["rate"] / busy if busy > 0.01 else None
    rec["rate_per_relay_cpu_s"] = (rec["rate"] * acct["wall_s"] / acct["relay_cpu_s"]
                                   if acct["relay_cpu_s"] > 0 else None)
    moved = res.get("bytes_moved")
    rec["cpu_s_per_gib"] = acct["relay_cpu_s"] / (moved / 2 ** 30) if moved else None
    rec["connector_cpu_s_per_gib"] = (acct["connector_cpu_s"] / (moved / 2 ** 30) if moved
                                      else None)
    reqs = res.get("requests") or res.get("succeeded")
    if not moved and reqs:
        rec["cpu_s_per_mreq"] = acct["relay_cpu_s"] / (reqs / 1e6)
        rec["connector_cpu_ms_per_kreq"] = acct["connector_cpu_s"] * 1e3 / (reqs / 1e3)
    bench.add_dpdk_units(rec, acct, gib=moved / 2 ** 30 if moved else None,
                         reqs=reqs if not moved else None)
    lat = res.get("latency_us") or {}
    if 50 in lat and 99 in lat:
        rec["p50_us"], rec["p99_us"] = lat[50], lat[99]
    if res.get("socket_errors") is not None:
        rec["socket_errors"] = res["socket_errors"]
    return rec
