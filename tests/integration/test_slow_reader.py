#!/usr/bin/env python3
"""A stream that is never read must not block another stream on the same tunnel.

One relay worker -> one tunnel to connector c1. Stream A asks a source backend for 4 GiB, reads
the first 1 MiB and then stops reading. Stream B, on the same tunnel, echoes 50 MiB. Checks: B
completes byte-exact within 60 s (both throughputs are printed); afterwards A is still alive and
its next 1 MiB arrives byte-exact (per-stream flow control paused it, nothing was lost)."""
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MiB = h.MiB
STALL_ASK = 4 * 1024 * MiB
BULK = 50 * MiB
BOUND_S = 60.0


def read_exact(c, offset, n, timeout):
    """Read n bytes of the source pattern starting at offset; verify them."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < n:
        b = c.read_some(max_bytes=n - len(got), wait=0.5)
        if b is None:
            raise h.TestFailure(f"stalled stream closed after {offset + len(got)} bytes")
        got.extend(b)
        if time.monotonic() > deadline:
            raise h.TestFailure(f"stalled stream: only {len(got)} of {n} bytes in {timeout}s")
    h.check(bytes(got) == h.source_pattern_at(offset, n),
            f"stalled stream bytes {offset}..{offset + n} byte-exact")
    return len(got)


def body(env):
    _, echo_port = env.start_backend("echo")
    _, source_port = env.start_backend("source")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}"),
                                  ("bulk", "bulk.contoso.test", f"127.0.0.1:{source_port}")],
                        workers=1)
    info = env.start_relay(topo)
    h.check(info.get("workers") == 1, "relay runs 1 worker")
    env.start_connector("c1")
    s = env.wait_tunnels(1)
    h.check(s.get("tunnels_up") == 1, "exactly one tunnel: both streams share it")
    ca = env.pki.path("users-ca.crt")

    a = h.UserClient(env.user_port, "bulk.contoso.test", ca)
    a.send_all(struct.pack(">Q", STALL_ASK))
    t0 = time.monotonic()
    read_exact(a, 0, 1 * MiB, timeout=30)
    a_secs = time.monotonic() - t0
    log_a = f"stalled stream read 1 MiB at {1 / a_secs:.1f} MiB/s, then stops reading"
    h.check(True, log_a)
    time.sleep(2)  # let A fill every window and buffer on its path

    b = h.UserClient(env.user_port, "web.contoso.test", ca)
    data = h.pattern(BULK, seed=9)
    t0 = time.monotonic()
    secs, mbps = h.echo_roundtrip(b, data, half_close=True, timeout=BOUND_S + 30)
    b.close()
    h.check(secs < BOUND_S, f"bulk stream echoed 50 MiB byte-exact beside the stalled one in "
                            f"{secs:.2f} s < {BOUND_S:.0f} s ({mbps:.1f} MB/s both ways)")

    # A is still alive: resume reading and check the bytes continue exactly where they stopped.
    t0 = time.monotonic()
    read_exact(a, 1 * MiB, 1 * MiB, timeout=30)
    h.check(True, f"stalled stream resumed: next 1 MiB in {time.monotonic() - t0:.2f} s")
    a.abort()
    h.check(env.relay.alive(), "relay alive")


if __name__ == "__main__":
    sys.exit(h.run_test("slow_reader", body))
