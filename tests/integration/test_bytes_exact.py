#!/usr/bin/env python3
"""user -> relay -> connector -> backend and back, byte-exact, with TLS half-close.

Checks: 1 MiB and 100 MiB echoed byte-exact (client sends close_notify after its last byte and
expects the full echo followed by the relay's close_notify); 100 MiB from a source backend
(backend -> user only, pattern verified); 100 MiB into a sink backend (user -> backend only, the
backend's byte count comes back); relay byte counters cover what moved."""
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MiB = h.MiB


def body(env):
    _, echo_port = env.start_backend("echo")
    _, source_port = env.start_backend("source")
    _, sink_port = env.start_backend("sink")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}"),
                                  ("bulk", "bulk.contoso.test", f"127.0.0.1:{source_port}"),
                                  ("drop", "drop.contoso.test", f"127.0.0.1:{sink_port}")],
                        workers=2)
    env.start_relay(topo)
    env.start_connector("c1")
    env.wait_tunnels(2)
    ca = env.pki.path("users-ca.crt")
    before = env.counters()

    for size in (1 * MiB, 100 * MiB):
        c = h.UserClient(env.user_port, "web.contoso.test", ca)
        data = h.pattern(size, seed=size % 251)
        secs, mbps = h.echo_roundtrip(c, data, half_close=True, timeout=240)
        c.close()
        h.check(c.closed_notify, f"echo {size // MiB} MiB byte-exact, half-close answered by "
                                 f"close_notify ({secs:.2f} s, {mbps:.1f} MB/s both ways)")

    # backend -> user only
    n = 100 * MiB
    c = h.UserClient(env.user_port, "bulk.contoso.test", ca)
    mismatch = []

    def verify(off, b):
        if not mismatch and b != h.source_pattern_at(off, len(b)):
            mismatch.append(off)
    t0 = time.monotonic()
    got = c.transfer(struct.pack(">Q", n), expect=n, timeout=240, until_close=True, verify=verify)
    secs = time.monotonic() - t0
    c.close()
    h.check(got == n and not mismatch,
            f"source 100 MiB backend -> user byte-exact ({secs:.2f} s, {n / secs / 1e6:.1f} MB/s)")

    # user -> backend only
    c = h.UserClient(env.user_port, "drop.contoso.test", ca)
    reply = bytearray()
    t0 = time.monotonic()
    c.transfer(h.pattern(n, seed=3), expect=8, timeout=240, half_close=True, until_close=True,
               verify=lambda off, b: reply.extend(b))
    secs = time.monotonic() - t0
    c.close()
    count = struct.unpack(">Q", bytes(reply))[0] if len(reply) == 8 else None
    h.check(count == n, f"sink: backend received exactly {count} of {n} bytes user -> backend "
                        f"({secs:.2f} s, {n / secs / 1e6:.1f} MB/s)")

    # Counters are rewritten every 200 ms: wait for the totals rather than sampling once.
    up = (1 * MiB + 100 * MiB) + 8 + n  # echo payloads + source length header + sink payload
    down = (1 * MiB + 100 * MiB) + n + 8  # echoes + source payload + sink's count
    b_up = before.get("bytes_user_to_backend", 0)
    b_down = before.get("bytes_backend_to_user", 0)
    env.wait_counter("bytes_user_to_backend", b_up + up, timeout=5)
    env.wait_counter("bytes_backend_to_user", b_down + down, timeout=5)
    env.wait_counter("streams_opened", before.get("streams_opened", 0) + 4, timeout=5)
    cnt = env.counters()
    h.check(True, f"relay counters: bytes_user_to_backend={cnt.get('bytes_user_to_backend')} "
                  f"bytes_backend_to_user={cnt.get('bytes_backend_to_user')} "
                  f"streams_opened={cnt.get('streams_opened')} "
                  f"streams_closed={cnt.get('streams_closed')}")
    h.check(cnt.get("streams_reset", 0) == before.get("streams_reset", 0),
            "no stream was reset")


if __name__ == "__main__":
    sys.exit(h.run_test("bytes_exact", body))
