#!/usr/bin/env python3
"""Relay SIGTERM (RELIABILITY.md, faults): GOAWAY at once, no new sessions, streams in flight
finish byte-exact, exit 0 by the drain deadline; a stream still open at the deadline is cut with
a reset, never a clean close_notify.

Two runs: (1) a 20 MiB source stream is 1 MiB in when SIGTERM lands; it must complete byte-exact
with close_notify, a new connection must be refused, and the relay must exit 0 soon after the
stream ends (well before the 8 s deadline). (2) a stream that never reads while the 1.5 s deadline
passes must end without close_notify, and the relay still exits 0."""
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MiB = h.MiB


def world(env, deadline_ms):
    _, source_port = env.start_backend("source")
    topo = h.make_world(env.pki, [("bulk", "bulk.contoso.test", f"127.0.0.1:{source_port}")],
                        workers=2, with_fabrikam=False)
    topo.drain_deadline_ms = deadline_ms
    env.start_relay(topo)
    env.start_connector("c1")
    env.wait_tunnels(2)
    return env.pki.path("users-ca.crt")


def drain_completes_stream(env):
    ca = world(env, 8000)
    n = 20 * MiB
    c = h.UserClient(env.user_port, "bulk.contoso.test", ca)
    c.send_all(struct.pack(">Q", n))
    got = bytearray()
    while len(got) < MiB:
        b = c.read_some(wait=5)
        if b is None:
            raise h.TestFailure("stream ended before SIGTERM")
        got += b
    t0 = time.monotonic()
    os.kill(env.relay.pid, signal.SIGTERM)
    time.sleep(0.3)
    refused = False
    try:
        s = socket.create_connection(("127.0.0.1", env.user_port), timeout=2)
        s.close()
    except OSError:
        refused = True
    h.check(refused, "new user connection refused once the relay is draining")
    while True:
        b = c.read_some(wait=10)
        if b is None:
            break
        if time.monotonic() - t0 > 30:
            raise h.TestFailure("stream stopped moving while the relay drained")
        got += b
    h.check(len(got) == n and bytes(got) == h.source_pattern_at(0, n),
            f"stream in flight finished byte-exact during drain ({len(got)} of {n} bytes)")
    h.check(c.closed_notify, "drained stream ended with close_notify (clean)")
    c.close()
    rc = env.relay.p.wait(timeout=10)
    secs = time.monotonic() - t0
    h.check(rc == 0 and secs < 8.0,
            f"relay exited {rc} {secs:.2f} s after SIGTERM, before the 8 s deadline")


def deadline_cuts_stalled_stream(env):
    ca = world(env, 1500)
    n = 200 * MiB
    c = h.UserClient(env.user_port, "bulk.contoso.test", ca)
    c.send_all(struct.pack(">Q", n))
    b = c.read_some(wait=5)
    h.check(bool(b), "stalled stream received its first bytes")
    t0 = time.monotonic()
    os.kill(env.relay.pid, signal.SIGTERM)
    rc = env.relay.p.wait(timeout=10)
    secs = time.monotonic() - t0
    h.check(rc == 0 and 1.4 < secs < 4.0,
            f"relay exited {rc} {secs:.2f} s after SIGTERM (deadline 1.5 s + close)")
    ended = "open"
    total = len(b)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            b = c.read_some(wait=1)
            if b is None:
                ended = "close_notify"
                break
            total += len(b)
    except (ConnectionResetError, OSError) as e:
        ended = f"reset ({type(e).__name__})"
    h.check(ended.startswith("reset") and total < n,
            f"stream cut at the deadline ends with {ended} after {total} of {n} bytes, "
            f"never a clean close_notify")
    c.abort()


if __name__ == "__main__":
    rc = h.run_test("relay_drain_completes", drain_completes_stream)
    rc |= h.run_test("relay_drain_deadline", deadline_cuts_stalled_stream)
    sys.exit(rc)
