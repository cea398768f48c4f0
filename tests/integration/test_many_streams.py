#!/usr/bin/env python3
"""1,000 concurrent streams over one connector (2 relay workers -> 2 tunnels), all byte-exact.

Python threads: all 1,000 TLS connections are opened and established first (a barrier proves
they are open at the same time), then each sends 16 KiB of its own pattern and verifies the
echo. Then apprelay-loadgen (when built) runs 1,000 streams at concurrency 1,000 as well."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

N = 1000
SIZE = 16 * 1024


def body(env):
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}")],
                        workers=2)
    env.start_relay(topo)
    env.start_connector("c1")
    s = env.wait_tunnels(2)
    h.check(s.get("connectors", {}).get("c1", {}).get("tunnels", 0) == 2,
            "connector c1 holds 2 tunnels (one per relay worker)")
    before = env.counters()
    ca = env.pki.path("users-ca.crt")
    threading.stack_size(512 * 1024)
    barrier = threading.Barrier(N, timeout=120)
    results = [None] * N

    def one(i):
        c = None
        try:
            c = h.UserClient(env.user_port, "web.contoso.test", ca, timeout=60)
        except Exception as e:
            results[i] = f"connect: {e!r}"
            barrier.abort()
            return
        try:
            barrier.wait()
            data = h.pattern(SIZE, seed=i)
            h.echo_roundtrip(c, data, half_close=False, timeout=120)
            results[i] = "ok"
        except Exception as e:
            results[i] = results[i] or f"{e!r}"
        finally:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    secs = time.monotonic() - t0
    ok = sum(1 for r in results if r == "ok")
    bad = [f"stream {i}: {r}" for i, r in enumerate(results) if r != "ok"][:10]
    for b in bad:
        print("   ", b)
    h.check(ok == N, f"{ok}/{N} concurrent python streams byte-exact ({SIZE} B each, "
                     f"{secs:.2f} s, {N / secs:.0f} streams/s)")
    env.wait_counter("streams_opened", before.get("streams_opened", 0) + N, timeout=5)
    h.check(True, f"relay streams_opened={env.counter('streams_opened')} "
                  f"streams_closed={env.counter('streams_closed')}")

    if os.access(h.LOADGEN_BIN, os.X_OK):
        rc, res = h.run_loadgen(env, "web.contoso.test", streams=N, concurrency=N,
                                nbytes=64 * 1024, threads=2, timeout=120)
        h.check(rc == 0 and res and res["ok"] == N,
                f"apprelay-loadgen: {res and res['ok']}/{N} streams at concurrency {N} "
                f"byte-exact ({res and res['gbit_per_s']} Gbit/s)")
    else:
        print(f"  note: {h.LOADGEN_BIN} not built, loadgen part skipped")
    h.check(env.counter("streams_reset") == before.get("streams_reset", 0), "no stream reset")


if __name__ == "__main__":
    sys.exit(h.run_test("many_streams", body))
