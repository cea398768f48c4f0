#!/usr/bin/env python3
"""Fault injection (issue 14, item 4): a TCP fault proxy (tcp_proxy.py) between the connector
and the relay, and between a user and the relay, and signals to the connector, during bulk
echo transfers. The rule checked after every fault: each stream either completes byte-exact or
ends with an error the user sees (a reset, or TCP closed without close_notify); a stream that
ends cleanly with missing or different bytes fails the test. After each fault the next user is
served again.

World: one relay worker (PING every 500 ms, deadline 2 s), one connector whose relay.json
points at proxy T (connector <-> relay), an echo backend; users go through proxy U or direct.

slice         T and U write 1 byte per send: a 256 KiB and a 1 KiB echo are byte-exact.
delay         T and U add 30 ms per chunk: a 4 MiB echo is byte-exact.
stall         T forwards 2 MiB more, then stops both ways with the sockets open (a half-wedged
              tunnel) during a 16 MiB echo: the relay ejects the tunnel by its PING deadline
              (tunnel_ping_timeouts), the user sees an error, the connector dials again and the
              next user is served.
truncate      T closes both sides cleanly (FIN) after 2 MiB during a 16 MiB echo: the user sees
              an error, never a short clean end; the next user is served.
reset         The same with RST.
user_reset    U resets a user's connection after 1 MiB of a 16 MiB echo: only that stream ends
              (streams_user_aborted); a direct user echoes meanwhile, the tunnel stays up.
sigstop       The connector is SIGSTOPped during a 128 MiB echo, once 4 MiB went through
              the tunnel: the tunnel is ejected by the PING deadline, the user sees an error;
              after SIGCONT the connector comes back and the next user is served.
sigkill       The connector is SIGKILLed during a 128 MiB echo, once 4 MiB went through, and
              started again: the user sees an error, the next user is served.
relay_sigkill The RELAY is SIGKILLed during a 64 MiB and a 32 MiB echo: both users see an error
              (reset or EOF without close_notify), never a short clean end; the connector keeps
              running, and the relay started again on its state dir and ports gets the tunnel
              back and serves the next users byte-exact.
relay_sigstop The RELAY is SIGSTOPped for 2 s during a 64 MiB and a 32 MiB echo, once 4 MiB went
              through the tunnel, then SIGCONTed. Longer than the connector's silence limit
              (3 PING intervals = 1.5 s) and as long as the relay's PING deadline (2 s): the
              tunnel may be dropped by either side, or survive. Whatever happened, each stream
              completes byte-exact or ends with an error the user sees (never a short or corrupt
              clean end); the relay lives on, a tunnel is up again and the next users are served
              (64 KiB, then 4 MiB byte-exact). The relay does not charge its own stop to the
              connector: tunnel_ping_timeouts unchanged, a worker_stalled warning instead (PING
              deadlines restart when a worker resumes after more than 1 s).
"""
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import groups_helpers as g  # noqa: E402
import harness as h  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

ECHO_SNI = "echo.contoso.test"
MiB = 1024 * 1024


class World:
    def __init__(self, env):
        self.env = env
        _, echo_port = env.start_backend("echo")
        topo = h.make_world(env.pki, [("echo", ECHO_SNI, f"127.0.0.1:{echo_port}")],
                            connectors=(), workers=1, with_fabrikam=False)
        topo.limits.update({"ping_interval_ms": 500, "ping_timeout_ms": 2000})
        self.topo = topo
        env.start_relay(topo)
        env.enroll("c1")
        self.t = TcpProxy("127.0.0.1", env.tunnel_port, name="tunnel").start()
        self.u = TcpProxy("127.0.0.1", env.user_port, name="user").start()
        path = os.path.join(env.dir, "conn-c1", "relay.json")
        with open(path) as f:
            doc = json.load(f)
        doc["relay"] = self.t.address
        with open(path, "w") as f:
            json.dump(doc, f)
        self.conn = env.start_connector("c1")
        env.wait_tunnels(1)

    def close(self):
        self.t.close()
        self.u.close()

    def user(self, via_proxy=False):
        port = self.u.port if via_proxy else self.env.user_port
        return h.UserClient(port, ECHO_SNI, self.env.pki.path("users-ca.crt"), timeout=10.0)

    def echo(self, nbytes, seed, via_proxy=False, timeout=60.0):
        """('ok', None) byte-exact, ('error', text) ended with an error the user saw; a short or
        corrupt clean end raises TestFailure (the one outcome that must never happen)."""
        c = None
        try:
            c = self.user(via_proxy)
            h.echo_roundtrip(c, h.pattern(nbytes, seed=seed), timeout=timeout)
            return "ok", None
        except h.TestFailure:
            raise
        except Exception as e:  # noqa: BLE001 - reset, EOF without close_notify, TLS error
            return "error", f"{type(e).__name__}: {e}"
        finally:
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass

    def served_again(self, what, timeout=15.0):
        def ok():
            outcome, why = self.echo(64 * 1024, seed=77)
            if outcome != "ok":
                h.log(f"not yet: {why}")
            return outcome == "ok"
        h.wait_until(ok, timeout, f"the next user is served after {what}", interval=0.5)


def run(env, fn):
    w = World(env)
    try:
        fn(w)
    finally:
        w.close()


def bulk_in_thread(w, nbytes, seed, via_proxy=False):
    out = {}

    def go():
        try:
            out["r"] = w.echo(nbytes, seed, via_proxy=via_proxy)
        except h.TestFailure as e:
            out["r"] = ("CORRUPT", str(e))
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def expect_error(t, out, what):
    t.join(timeout=90)
    h.check(not t.is_alive(), f"{what}: the transfer ended")
    outcome, why = out.get("r", ("missing", None))
    h.check(outcome != "CORRUPT", f"{what}: never a short or corrupt clean end ({why})")
    h.check(outcome == "error", f"{what}: the user sees an error ({outcome}: {why})")
    h.log(f"{what}: user saw {why}")


def test_slice(env):
    def body(w):
        w.t.set_slice(1)
        w.u.set_slice(1)
        for nbytes, seed in ((1024, 1), (256 * 1024, 2)):
            outcome, why = w.echo(nbytes, seed, via_proxy=True, timeout=120)
            h.check(outcome == "ok", f"{nbytes}-byte echo through 1-byte slices: {why}")
    run(env, body)


def test_delay(env):
    def body(w):
        w.t.set_delay(0.03)
        w.u.set_delay(0.03)
        outcome, why = w.echo(4 * MiB, 3, via_proxy=True, timeout=120)
        h.check(outcome == "ok", f"4 MiB echo with 30 ms per chunk: {why}")
    run(env, body)


def fault_on_tunnel(env, action):
    def body(w):
        timeouts0 = env.counter("tunnel_ping_timeouts")
        w.t.after(2 * MiB, action)
        t, out = bulk_in_thread(w, 16 * MiB, 4)
        expect_error(t, out, f"tunnel {action} after 2 MiB")
        w.t.after(None)
        if action == "stall":
            h.wait_until(lambda: env.counter("tunnel_ping_timeouts") > timeouts0, 5,
                         "the relay ejected the wedged tunnel by its PING deadline")
        w.served_again(f"a {action}ed tunnel")
    run(env, body)


def test_stall(env):
    fault_on_tunnel(env, "stall")


def test_truncate(env):
    fault_on_tunnel(env, "truncate")


def test_reset(env):
    fault_on_tunnel(env, "reset")


def test_user_reset(env):
    def body(w):
        mark = len(w.conn.log_text())
        w.u.after(1 * MiB, "reset")
        t, out = bulk_in_thread(w, 16 * MiB, 5, via_proxy=True)
        other, why = w.echo(4 * MiB, 6)  # a direct user meanwhile
        h.check(other == "ok", f"a direct user's 4 MiB echo is undisturbed: {why}")
        expect_error(t, out, "user connection reset after 1 MiB")
        h.wait_until(lambda: env.counter("streams_user_aborted") >= 1, 3,
                     "the relay counted the user's abort")
        h.check(not g.events(w.conn.log_text()[mark:], "tunnel_down"), "the tunnel stayed up")
        w.u.after(None)
    run(env, body)


def flowing(w, t):
    """Waits (polling the proxy's live byte counts, not the relay's 1 s stats) until 4 MiB of the
    transfer went through the tunnel: the signal then lands mid-transfer, whatever the speed."""
    def moved():
        st = w.t.stats()
        return st["bytes_up"] + st["bytes_down"] > 4 * MiB or not t.is_alive()
    h.wait_until(moved, 20, "the transfer is flowing through the tunnel", interval=0.002)
    h.check(t.is_alive(), "the transfer is still in flight")


def test_sigstop(env):
    def body(w):
        timeouts0 = env.counter("tunnel_ping_timeouts")
        t, out = bulk_in_thread(w, 128 * MiB, 7)
        flowing(w, t)
        os.kill(w.conn.pid, signal.SIGSTOP)
        try:
            expect_error(t, out, "connector SIGSTOPped mid-transfer")
            h.wait_until(lambda: env.counter("tunnel_ping_timeouts") > timeouts0, 5,
                         "the tunnel was ejected by the PING deadline")
        finally:
            os.kill(w.conn.pid, signal.SIGCONT)
        w.served_again("SIGCONT")
    run(env, body)


def test_sigkill(env):
    def body(w):
        t, out = bulk_in_thread(w, 128 * MiB, 8)
        flowing(w, t)
        w.conn.stop(sig=signal.SIGKILL)
        expect_error(t, out, "connector SIGKILLed mid-transfer")
        w.conn = env.start_connector("c1")
        w.served_again("the connector's restart")
    run(env, body)


def test_relay_sigkill(env):
    def body(w):
        relay = env.relay
        clog = len(w.conn.log_text())
        t, out = bulk_in_thread(w, 64 * MiB, 12)
        t2, out2 = bulk_in_thread(w, 32 * MiB, 13)
        flowing(w, t)
        h.check(t2.is_alive(), "the second transfer is in flight too")
        user_port, tunnel_port = env.user_port, env.tunnel_port
        os.kill(relay.pid, signal.SIGKILL)
        h.log("relay SIGKILLed mid-transfer")
        for th, res, what in ((t, out, "64 MiB echo"), (t2, out2, "32 MiB echo")):
            expect_error(th, res, what)
        h.wait_until(lambda: not relay.alive(), 5, "the relay is gone")
        h.check(w.conn.alive(), "the connector keeps running without its relay")
        # The same relay again, on the same state dir and ports: the connector dials back in.
        w.topo.user_port, w.topo.tunnel_port = user_port, tunnel_port
        os.unlink(env.stats_path)
        env.start_relay(w.topo, provision=False, name="relay2")
        env.wait_tunnels(1, timeout=15)
        w.served_again("the relay's restart")
        outcome, why = w.echo(4 * MiB, 14)
        h.check(outcome == "ok", f"a new 4 MiB echo after the restart is byte-exact: {why}")
        downs = g.events(w.conn.log_text()[clog:], "tunnel_down")
        h.check(downs, f"the connector saw its tunnel go: {[e.get('reason') for e in downs]}")
    run(env, body)


def test_relay_sigstop(env):
    def body(w):
        relay = env.relay
        rlog, clog = len(relay.log_text()), len(w.conn.log_text())
        timeouts0 = env.counter("tunnel_ping_timeouts")
        t, out = bulk_in_thread(w, 64 * MiB, 9)
        t2, out2 = bulk_in_thread(w, 32 * MiB, 10)
        flowing(w, t)
        h.check(t2.is_alive(), "the second transfer is in flight too")
        os.kill(relay.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            time.sleep(2.0)
            h.check(t.is_alive() and t2.is_alive(), "both transfers wait while the relay is "
                                                    "stopped")
        finally:
            os.kill(relay.pid, signal.SIGCONT)
        h.log(f"relay SIGSTOPped for {time.monotonic() - t0:.2f}s, then SIGCONT")
        for th, res, what in ((t, out, "64 MiB echo"), (t2, out2, "32 MiB echo")):
            th.join(timeout=90)
            h.check(not th.is_alive(), f"{what}: the transfer ended")
            outcome, why = res.get("r", ("missing", None))
            h.check(outcome != "CORRUPT", f"{what}: never a short or corrupt clean end ({why})")
            h.check(outcome in ("ok", "error"),
                    f"{what}: byte-exact, or an error the user sees ({outcome}: {why})")
        h.check(relay.alive(), "the relay lives on after SIGCONT")
        env.wait_tunnels(1)
        w.served_again("the relay's SIGCONT")
        outcome, why = w.echo(4 * MiB, 11)
        h.check(outcome == "ok", f"a new 4 MiB echo after the relay's stop is byte-exact: {why}")
        # What happened to the tunnel (informational: any of these is correct).
        rdown = [e.get("reason") for e in g.events(relay.log_text()[rlog:], "tunnel_down")]
        cdown = g.events(w.conn.log_text()[clog:], "tunnel_down")
        h.log(f"relay tunnel_down: {rdown}; tunnel_ping_timeouts "
              f"{timeouts0} -> {env.counter('tunnel_ping_timeouts')}; connector tunnel_down: "
              f"{[e.get('reason') for e in cdown]}; outcomes: {out.get('r')[0]}, "
              f"{out2.get('r')[0]}")
        # The relay's own stop is not the connector's silence: no PING deadline is charged to
        # it, and the worker says it stalled.
        h.check(env.counter("tunnel_ping_timeouts") == timeouts0,
                "the relay did not blame the connector for its own stop (tunnel_ping_timeouts)")
        h.check(g.events(relay.log_text()[rlog:], "worker_stalled"),
                "the relay logged worker_stalled after SIGCONT")
    run(env, body)


TESTS = {"slice": test_slice, "delay": test_delay, "stall": test_stall,
         "truncate": test_truncate, "reset": test_reset, "user_reset": test_user_reset,
         "sigstop": test_sigstop, "sigkill": test_sigkill, "relay_sigstop": test_relay_sigstop,
         "relay_sigkill": test_relay_sigkill}

if __name__ == "__main__":
    names = sys.argv[1:] or list(TESTS)
    rc = 0
    for name in names:
        rc |= h.run_test(f"faults_{name}", TESTS[name])
    sys.exit(rc)
