#!/usr/bin/env python3
"""Liveness (RELIABILITY.md, faults): a SIGKILLed connector's tunnels drop at once (TCP reset);
a SIGSTOPped one (process hung, TCP still open) is caught by the PING deadline; in both cases new
streams go to the surviving connector of the group and none of them fails once the relay noticed.

World: 1 relay worker, connectors c1 and c2 in Default, echo backend. ping_interval 1 s and
ping_timeout 3 s (defaults) => a hung connector must be dropped within ~4 s (RELIABILITY: <= 12 s)."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def echo_ok(env, ca, n=64 * 1024):
    c = h.UserClient(env.user_port, "web.contoso.test", ca)
    data = h.pattern(n, seed=n % 251)
    h.echo_roundtrip(c, data, half_close=True, timeout=20)
    c.close()
    return c.closed_notify


def tunnels_of(env, cid):
    return env.stats().get("connectors", {}).get(cid, {}).get("tunnels", 0)


def body(env):
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}")],
                        connectors=("c1", "c2"), workers=1, with_fabrikam=False)
    env.start_relay(topo)
    c1 = env.start_connector("c1")
    c2 = env.start_connector("c2")
    env.wait_tunnels(2)
    ca = env.pki.path("users-ca.crt")
    h.check(all(echo_ok(env, ca) for _ in range(10)), "10 streams byte-exact over c1 + c2")

    # Hung connector: SIGSTOP keeps its TCP connection open; only the PING deadline can tell.
    os.kill(c1.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        h.wait_until(lambda: tunnels_of(env, "c1") == 0, 12, "c1 dropped by the PING deadline")
        secs = time.monotonic() - t0
        h.check(secs <= 5.0, f"hung connector c1 dropped {secs:.2f} s after SIGSTOP (<= 5 s)")
        h.check(env.counter("tunnel_ping_timeouts") >= 1,
                f"tunnel_ping_timeouts = {env.counter('tunnel_ping_timeouts')}")
        ok = sum(1 for _ in range(20) if echo_ok(env, ca))
        h.check(ok == 20, f"{ok}/20 new streams succeed through c2 while c1 is hung")
    finally:
        os.kill(c1.pid, signal.SIGCONT)
    # c1 comes back by itself (reconnect with backoff).
    env.wait_tunnels(2, timeout=40)
    h.check(True, "c1 reconnected after SIGCONT")

    # Killed connector: the kernel resets its connection; the relay must notice within 1 s.
    os.kill(c2.pid, signal.SIGKILL)
    t0 = time.monotonic()
    h.wait_until(lambda: tunnels_of(env, "c2") == 0, 5, "c2 dropped after SIGKILL")
    secs = time.monotonic() - t0
    h.check(secs <= 1.0, f"killed connector c2 dropped {secs:.2f} s after SIGKILL (<= 1 s)")
    ok = sum(1 for _ in range(20) if echo_ok(env, ca))
    h.check(ok == 20, f"{ok}/20 new streams succeed through c1 after c2 was killed")


if __name__ == "__main__":
    sys.exit(h.run_test("liveness", body))
