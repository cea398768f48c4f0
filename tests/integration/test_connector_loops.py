"""A connector that uses its cores (issue 11): --core-map gives one pinned loop per worker cpu
and the relay's tunnels are spread over the loops.

1. Relay with 2 workers, connector with 2 loops: 2 tunnels, one per loop (the stats file lists
   the loops), and 200 streams of 256 KiB echo byte-exact; both loops carried bytes.
2. A relay restart: both loops dial back on their own.
3. The relay restarts with 1 worker: the running connector retires its link to worker 1 (no
   more dialing a worker that is gone), and a new 2-loop connector logs loop_idle for its second
   loop, holds one tunnel, and streams flow.
4. A bad core map is refused at start-up with a message naming the cpu.
"""
import json
import os
import subprocess
import sys
import time

import harness as h

SNI = "web.contoso.test"


def loops(env, name):
    with open(os.path.join(env.dir, f"{name}-stats.json")) as f:
        return json.load(f).get("loops", [])


def body(env):
    ncpu = os.cpu_count()
    _, port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.1:{port}")], connectors=("c1", "c2"),
                        workers=2, with_fabrikam=False)
    env.start_relay(topo)
    cm2 = "control=0,workers=0-1,shared=1" if ncpu >= 2 else None
    if cm2 is None:
        raise h.TestFailure("needs 2 cpus")
    c1 = env.start_connector("c1", extra=["--core-map", cm2])
    env.wait_tunnels(2, connector="c1")
    h.wait_until(lambda: len(loops(env, "connector-c1")) == 2 and all(
        l["tunnels_up"] == 1 for l in loops(env, "connector-c1")), 10,
        "2 loops with one tunnel each in the connector's stats")

    # -- 1: streams over both loops -----------------------------------------------------------
    rc, r = h.run_loadgen(env, SNI, 200, 32, 256 << 10, timeout=60)
    h.check(rc == 0 and r["failed"] == 0 and r["ok"] == 200,
            f"200 streams of 256 KiB echoed byte-exact ({r and r['failed']} failed)")
    time.sleep(0.5)
    ls = loops(env, "connector-c1")
    h.check(all(l["bytes_from_backend"] > 0 and l["streams_opened"] > 0 for l in ls),
            f"both loops carried streams: {ls}")

    # -- 2: relay restart: each loop dials back ----------------------------------------------
    tunnel_port = env.tunnel_port
    h.check(env.relay.stop() == 0, "relay stopped")
    base = h.Topology.to_toml
    topo.to_toml = lambda state_dir: base(topo, state_dir).replace(
        'tunnel_listen = "127.0.0.1:0"', f'tunnel_listen = "127.0.0.1:{tunnel_port}"')
    os.unlink(env.stats_path)
    env.start_relay(topo, provision=False, name="relay2")
    env.wait_tunnels(2, connector="c1", timeout=30)
    h.wait_until(lambda: all(l["tunnels_up"] == 1 for l in loops(env, "connector-c1")), 10,
                 "both loops have their tunnel back")
    rc, r = h.run_loadgen(env, SNI, 50, 16, 64 << 10, timeout=60)
    h.check(rc == 0 and r["failed"] == 0, "50 streams after the restart")

    # -- 3: more loops than relay workers -----------------------------------------------------
    # c1 keeps running through a restart onto 1 worker: its link to worker 1 retires instead of
    # dialing a worker the relay no longer has.
    h.check(env.relay.stop() == 0, "relay stopped")
    topo.workers = 1
    os.unlink(env.stats_path)
    mark1 = len(c1.log_text())
    env.start_relay(topo, provision=False, name="relay3")
    env.wait_tunnels(1, connector="c1", timeout=30)
    h.wait_until(lambda: "event=tunnel_retired worker=1" in c1.log_text()[mark1:], 10,
                 "c1 retires its link to the worker the relay no longer has")
    time.sleep(3.0)
    later = c1.log_text()[mark1:]
    later = later[later.index("event=tunnel_retired worker=1"):]
    redials = later.count("event=tunnel_retry worker=1")
    h.check(redials <= 1, f"c1 stopped dialing worker 1 ({redials} retries in 3 s after "
                          f"retiring it; one connect may have been in flight)")
    c2 = env.start_connector("c2", extra=["--core-map", cm2])
    env.wait_tunnels(1, connector="c2")
    h.wait_until(lambda: "event=loop_idle" in c2.log_text(), 10,
                 "the second loop finds no relay worker of its own and says so (loop_idle)")
    time.sleep(1.0)
    ls2 = loops(env, "connector-c2")
    h.check(c2.alive() and [l["tunnels_up"] for l in ls2] == [1, 0],
            f"2 loops, 1 tunnel (loop 1 idle, not dialing): {ls2}")
    h.check(env.stats()["connectors"]["c2"]["tunnels"] == 1, "c2 holds exactly 1 tunnel")
    rc, r = h.run_loadgen(env, SNI, 50, 16, 64 << 10, timeout=60)
    h.check(rc == 0 and r["failed"] == 0, "50 streams through the one tunnel")

    # -- 4: bad core map ----------------------------------------------------------------------
    r = subprocess.run([h.CONNECTOR_BIN, "run", "--state-dir", os.path.join(env.dir, "conn-c1"),
                        "--core-map", f"control=0,workers={ncpu + 7}"],
                       capture_output=True, text=True, timeout=20)
    h.check(r.returncode == 2 and f"cpu {ncpu + 7}" in (r.stdout + r.stderr),
            f"a core map naming a missing cpu is refused (rc {r.returncode}: "
            f"{(r.stdout + r.stderr).strip()[-200:]})")
    print(f"RESULT connector_loops: 2 loops x 1 tunnel, 200 streams byte-exact over both; "
          f"restart ok")


if __name__ == "__main__":
    sys.exit(h.run_test("connector_loops", body))
