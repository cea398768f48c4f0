#!/usr/bin/env python3
"""User-edge limits of issue 14 (RELIABILITY.md "Limits"): each trips, is counted and logged
once per interval, and other users' streams are undisturbed.

World: one relay worker, one connector, an echo app (echo.contoso.test).

idle          [limits] idle_timeout_ms = 1500. A user that goes quiet after one echo, and a user
              that sends 4 MiB but never reads (a slow reader: its stream stalls on credit), are
              both cut within the limit + 1.5 s (streams_idle_timeout, one stream_idle_timeout
              line a second at most). A user echoing 64 KiB every 200 ms the whole time is never
              cut, byte-exact.
source_conns  [limits] source_max_connections = 6. Six idle TLS connections from 127.0.0.1
              are served; the seventh is reset at accept (user_conns_refused_source, a
              source_throttled line with budget=connections); 127.0.0.2 is served meanwhile, and
              the six still echo. Once one of them closes, 127.0.0.1 gets a new connection.
pending_opens [limits] max_pending_opens = 4, one connector, SIGSTOPped (its PING deadline
              is 30 s, so its tunnel stays). Four users send a request and wait; the fifth is
              refused at once (tunnel_pending_opens_full, streams_failed_limit) instead of
              queueing behind them. After SIGCONT the four get their echoes byte-exact, and new
              users are served again.
tunnels       [limits] max_tunnels_per_connector = 2: three processes run connector c1 (same
              certificate): two tunnels are up and the third HELLO is answered GOAWAY
              (tunnel_limit_refused) while users are served; when one of the two stops, the
              third gets its tunnel.
fd_cap        The relay runs under a descriptor limit of 768 (as with `prlimit --nofile`): it
              derives max_user_connections from it (768 - 10 % - 256 = 436, logged as
              user_connection_budget). 460 idle TLS connections are opened: the excess is reset
              at accept (user_conns_refused_full, one user_connections_full warning a second at
              most), never an EMFILE: the tunnel stays up, the admin API answers, the open users
              still echo, and once they close new users are served.
idle_app      An app's own idle limit (apprelayctl apps create --idle-timeout-ms 1500) under the
              relay's default of 1 h: a quiet user of that app is cut within 1.5 s + 1.5 s (the
              log line names the app and 1500), a quiet user of the other app is not, nor is a
              user of the app echoing every 200 ms. apps list shows it; 50 ms is refused by the
              API with the accepted range, and the app keeps 1500.
slow_handshake [limits] handshake_timeout_ms = 1500. A client that dribbles a real ClientHello
              one byte every 100 ms (a slowloris: each byte is progress, none completes the
              handshake) is closed within 1.5 s + 1 s of its first byte, and so is one that sends
              half a ClientHello and stops, and one that sends 64 bytes of garbage that could
              begin a record; each is counted (user_handshake_timeouts, or user_tls_failed for
              the garbage if the relay refuses it sooner). A user echoing the whole time is
              undisturbed and a new user is served.
buffer_budget [limits] user_buffer_budget_mb = 8. A user echoing 256 KiB at a time is open
              first. Then four slow readers each send 16 MiB of echo requests and read
              nothing (64 KiB receive buffers, 16 MiB stream windows): the echoes pile up in the relay's TLS output
              towards them until their windows are spent. Once the worker holds 8 MiB for users
              (gauge user_buffered_bytes), a new user is reset at accept
              (user_conns_refused_memory, one user_buffer_budget_full warning a second at most),
              while the first user keeps echoing byte-exact. When the slow readers go, the gauge
              falls back under 1 MiB and new users are served.
"""
import json
import os
import resource
import signal
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import groups_helpers as g  # noqa: E402
import harness as h  # noqa: E402

ECHO_SNI = "echo.contoso.test"


def world(env, limits, fd_limit=None):
    _, echo_port = env.start_backend("echo")
    env.echo_port = echo_port
    topo = h.make_world(env.pki, [("echo", ECHO_SNI, f"127.0.0.1:{echo_port}")],
                        connectors=("c1",), workers=1, with_fabrikam=False)
    topo.limits.update(limits)
    if fd_limit is not None:
        # Children inherit it: the relay (and everything else started from here) runs capped.
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    env.start_relay(topo)
    conn = env.start_connector("c1")
    env.wait_tunnels(1)
    return conn


def tls_conn(env, source="127.0.0.1", timeout=5.0, sni=ECHO_SNI):
    """A blocking TLS connection to the echo app (or `sni`) from `source` (handshake done)."""
    ctx = h.user_ssl_context(env.pki.path("users-ca.crt"))
    raw = socket.create_connection(("127.0.0.1", env.user_port), timeout=timeout,
                                   source_address=(source, 0))
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def echo(s, n=4096, seed=0):
    data = h.pattern(n, seed=seed)
    s.sendall(data)
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise h.TestFailure(f"echo cut after {len(got)} of {n} bytes")
        got += chunk
    h.check(got == data, f"echo of {n} bytes byte-exact")


def refused(env, source="127.0.0.1"):
    """True if a new connection from `source` is reset (at accept or during the handshake)."""
    try:
        s = tls_conn(env, source)
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError, ssl.SSLEOFError, OSError) as e:
        h.log(f"new connection from {source} refused: {type(e).__name__}: {e}")
        return True
    try:
        s.settimeout(2.0)
        echo(s, 64)
        return False
    except (OSError, ssl.SSLError, h.TestFailure) as e:
        h.log(f"new connection from {source} cut after the handshake: {type(e).__name__}: {e}")
        return True
    finally:
        s.close()


def is_closed(s, wait):
    """True if the relay closed or reset `s` within `wait` seconds."""
    s.settimeout(wait)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError, OSError) as e:
        if isinstance(e, (socket.timeout, TimeoutError)):
            return False
        return True


def test_idle(env):
    conn = world(env, {"idle_timeout_ms": 1500})
    mark = len(conn.log_text())
    quiet = tls_conn(env)
    echo(quiet, 1024, seed=1)
    slow = tls_conn(env)
    slow.setblocking(False)
    sent = 0
    payload = h.pattern(4 << 20, seed=2)
    deadline = time.monotonic() + 5
    while sent < len(payload) and time.monotonic() < deadline:  # until credit and buffers stall
        try:
            sent += slow.send(payload[sent:sent + 65536])
        except (ssl.SSLWantWriteError, BlockingIOError):
            time.sleep(0.05)
    h.log(f"slow reader sent {sent} bytes and reads nothing")
    busy = tls_conn(env)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 4.0:  # never idle: one echo every 200 ms
        echo(busy, 64 * 1024, seed=10 + i)
        i += 1
        time.sleep(0.2)
    h.check(is_closed(quiet, 0.5), "the quiet user was cut")
    slow.setblocking(True)
    h.check(is_closed(slow, 2.0), "the slow reader was cut")
    echo(busy, 1024, seed=99)  # still served after 4 s of steady use
    busy.close()
    h.wait_until(lambda: env.counter("streams_idle_timeout") >= 2, 3,
                 "two streams counted as idle timeouts")
    lines = g.events(env.relay.log_text(), "stream_idle_timeout")
    h.check(1 <= len(lines) <= 3, f"stream_idle_timeout logged at most once a second: {lines}")
    h.check(not g.events(conn.log_text()[mark:], "tunnel_down"), "the tunnel never closed")


def test_source_conns(env):
    world(env, {"source_max_connections": 6})
    held = [tls_conn(env) for _ in range(6)]
    for i, s in enumerate(held):
        echo(s, 256, seed=i)
    h.check(refused(env), "the seventh connection from 127.0.0.1 is reset")
    h.check(not refused(env, "127.0.0.2"), "127.0.0.2 is served meanwhile")
    for i, s in enumerate(held):
        echo(s, 256, seed=20 + i)  # the six are undisturbed
    h.wait_until(lambda: env.counter("user_conns_refused_source") >= 1, 3,
                 "user_conns_refused_source counted")
    lines = [e for e in g.events(env.relay.log_text(), "source_throttled")
             if e.get("budget") == "connections"]
    h.check(lines and lines[0].get("source") == "127.0.0.1",
            f"source_throttled budget=connections names 127.0.0.1: {lines[:1]}")
    held.pop().close()

    def reopened():
        try:
            held.append(tls_conn(env))
            echo(held[-1], 256, seed=40)
            return True
        except (OSError, ssl.SSLError, h.TestFailure):
            return False
    h.wait_until(reopened, 5, "a new connection from 127.0.0.1 once one closed", interval=0.2)
    for s in held:
        s.close()


def test_pending_opens(env):
    conn = world(env, {"max_pending_opens": 4, "ping_interval_ms": 1000,
                       "ping_timeout_ms": 30000})
    s0 = tls_conn(env)
    echo(s0, 1024, seed=1)
    s0.close()
    os.kill(conn.pid, signal.SIGSTOP)
    try:
        waiting = []
        for i in range(4):
            s = tls_conn(env)
            data = h.pattern(2048, seed=10 + i)
            s.sendall(data)
            waiting.append((s, data))
        h.wait_until(lambda: env.counter("streams_opened") >= 5, 3, "the four OPENs are sent")
        t0 = time.monotonic()
        h.check(refused(env), "the fifth user is refused")
        h.check(time.monotonic() - t0 < 3.0, "at once, not after a timeout")
        h.wait_until(lambda: env.counter("tunnel_pending_opens_full") >= 1, 3,
                     "tunnel_pending_opens_full counted")
    finally:
        os.kill(conn.pid, signal.SIGCONT)
    for s, data in waiting:
        s.settimeout(10)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(len(data) - len(got))
            if not chunk:
                break
            got += chunk
        h.check(got == data, f"a waiting user got its {len(data)}-byte echo after SIGCONT")
        s.close()
    h.wait_until(lambda: not refused(env), 5, "new users are served again", interval=0.3)


def test_tunnels(env):
    first = world(env, {"max_tunnels_per_connector": 2})
    second = env.start_connector("c1", name="connector-c1-b")
    h.wait_until(lambda: env.counter("tunnels_up") == 2, 10, "two tunnels of c1")
    third = env.start_connector("c1", name="connector-c1-c")
    h.wait_until(lambda: env.counter("tunnel_limit_refused") >= 1, 10,
                 "the third tunnel of c1 refused")
    time.sleep(1.5)
    h.check(env.counter("tunnels_up") == 2, f"still 2 tunnels ({env.counter('tunnels_up')})")
    s = tls_conn(env)
    echo(s, 64 * 1024, seed=5)
    s.close()
    first.stop()
    h.wait_until(lambda: env.counter("tunnels_up") == 2, 20,
                 "the waiting process got its tunnel once one stopped")
    second.stop()
    third.stop()


def test_fd_cap(env):
    world(env, {"source_max_connections": 0, "source_open_rate": 0, "source_abort_rate": 0},
          fd_limit=768)
    budget = [e for e in g.events(env.relay.log_text(), "user_connection_budget")]
    h.check(budget and int(budget[0]["max_user_connections"]) == 768 - 76 - 256,
            f"max_user_connections derived from the fd limit: {budget[:1]}")
    cap = int(budget[0]["max_user_connections"])
    held, refusals = [], 0
    for i in range(cap + 24):
        try:
            held.append(tls_conn(env, source=f"127.0.{1 + i // 200}.{1 + i % 200}"))
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError, OSError):
            refusals += 1
    h.log(f"{len(held)} connections held, {refusals} refused")
    h.check(refusals >= 20 and len(held) <= cap,
            f"the excess is refused ({refusals} refused, {len(held)} held, cap {cap})")
    h.wait_until(lambda: env.counter("user_conns_refused_full") >= 20, 3,
                 "user_conns_refused_full counted")
    warns = g.events(env.relay.log_text(), "user_connections_full")
    h.check(1 <= len(warns) <= 4, f"user_connections_full at most once a second: {len(warns)}")
    h.check("Too many open files" not in env.relay.log_text(), "no EMFILE in the relay's log")
    h.check(env.counter("tunnels_up") == 1, "the tunnel stayed up")
    env.ctl("connectors", "list")  # the admin API still answers
    for i in (0, len(held) // 2, len(held) - 1):
        echo(held[i], 1024, seed=i)
    for s in held:
        s.close()
    h.wait_until(lambda: not refused(env, "127.0.9.9"), 10, "new users are served again",
                 interval=0.3)


def test_idle_app(env):
    world(env, {})
    sni2 = "echo2.contoso.test"
    crt, key = env.pki.leaf("app-echo2", "users-ca", sni2, dns=[sni2], usage="serverAuth")
    env.ctl("apps", "create", "echo2", "--backend", f"127.0.0.1:{env.echo_port}",
            "--hostname", sni2, "--cert", env.pki.path(crt), "--key", env.pki.path(key),
            "--idle-timeout-ms", "1500")

    def served():
        try:
            s = tls_conn(env, sni=sni2)
        except (OSError, ssl.SSLError):
            return False
        try:
            echo(s, 64)
            return True
        except (OSError, ssl.SSLError, h.TestFailure):
            return False
        finally:
            s.close()
    h.wait_until(served, 10, "the new app is served", interval=0.2)
    apps = {a["name"]: a for a in json.loads(env.ctl("apps", "list", json_out=True)[1])["apps"]}
    h.check(apps["echo2"]["idle_timeout_ms"] == 1500 and apps["echo"]["idle_timeout_ms"] == 0,
            f"apps list shows the app's own limit: {apps['echo2']['idle_timeout_ms']}, "
            f"{apps['echo']['idle_timeout_ms']}")
    rc, out, err = env.ctl("apps", "update", "echo2", "--idle-timeout-ms", "50", expect_rc=None)
    h.check(rc != 0 and "100-86400000" in (err + out),
            f"50 ms is refused with the accepted range (exit {rc}): {(err + out).strip()!r}")
    mark = len(env.relay.log_text())
    quiet2 = tls_conn(env, sni=sni2)
    echo(quiet2, 1024, seed=1)
    quiet1 = tls_conn(env)
    echo(quiet1, 1024, seed=2)
    busy2 = tls_conn(env, sni=sni2)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 3.5:  # never idle: one echo every 200 ms
        echo(busy2, 16 * 1024, seed=10 + i)
        i += 1
        time.sleep(0.2)
    h.check(is_closed(quiet2, 0.5), "the quiet user of the app with 1500 ms was cut")
    h.check(not is_closed(quiet1, 0.2), "the quiet user of the app with the relay's 1 h was not")
    echo(quiet1, 1024, seed=3)
    echo(busy2, 1024, seed=4)
    h.check(env.counter("streams_idle_timeout") >= 1, "streams_idle_timeout counted")
    lines = g.events(env.relay.log_text()[mark:], "stream_idle_timeout")
    h.check(any(e.get("app") == sni2 and e.get("idle_timeout_ms") == "1500" for e in lines),
            f"the log line names the app and its limit: {lines}")
    quiet1.close()
    busy2.close()


def client_hello():
    """The bytes of a real TLS ClientHello for the echo app (SNI set), from Python's ssl."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=ECHO_SNI)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_slow_handshake(env):
    world(env, {"handshake_timeout_ms": 1500})
    busy = tls_conn(env)
    echo(busy, 4096, seed=1)
    hello = client_hello()
    h.check(len(hello) > 200 and hello[0] == 0x16, f"a ClientHello of {len(hello)} bytes")
    t0s = env.counter("user_handshake_timeouts")
    f0s = env.counter("user_tls_failed")

    # 1. One byte every 100 ms: 300+ bytes would take 30 s; the deadline is 1.5 s in total.
    s = socket.create_connection(("127.0.0.1", env.user_port), timeout=5)
    start = time.monotonic()
    closed_at = None
    i = 0
    while time.monotonic() - start < 6 and i < len(hello):
        try:
            s.sendall(hello[i:i + 1])
        except OSError:
            closed_at = time.monotonic() - start
            break
        i += 1
        if i % 5 == 0:
            echo(busy, 1024, seed=100 + i)  # the established user is served meanwhile
        if is_closed(s, 0.1):
            closed_at = time.monotonic() - start
            break
    s.close()
    h.check(closed_at is not None and closed_at < 2.5,
            f"the dribbling client was closed after {closed_at} s and {i} bytes (limit 1.5 s)")

    # 2. Half a ClientHello, then silence.
    s = socket.create_connection(("127.0.0.1", env.user_port), timeout=5)
    start = time.monotonic()
    s.sendall(hello[:len(hello) // 2])
    h.check(is_closed(s, 3.0), "a truncated handshake is closed at the deadline")
    took = time.monotonic() - start
    s.close()
    h.check(1.2 < took < 2.5, f"... after {took:.2f} s (limit 1.5 s)")

    # 3. Garbage shaped like the start of a handshake record, then silence.
    s = socket.create_connection(("127.0.0.1", env.user_port), timeout=5)
    s.sendall(bytes([0x16, 0x03, 0x01, 0x40, 0x00]) + bytes(range(59)))
    h.check(is_closed(s, 3.0), "garbage that begins like a record is closed by the deadline")
    s.close()

    h.wait_until(lambda: env.counter("user_handshake_timeouts") + env.counter("user_tls_failed")
                 >= t0s + f0s + 3, 3, "the three clients counted")
    h.check(env.counter("user_handshake_timeouts") >= t0s + 2,
            f"the dribbler and the truncated one are handshake timeouts "
            f"({t0s} -> {env.counter('user_handshake_timeouts')})")
    echo(busy, 64 * 1024, seed=7)
    fresh = tls_conn(env, source="127.0.0.2")
    echo(fresh, 4096, seed=8)
    fresh.close()
    busy.close()


def test_buffer_budget(env):
    # Windows of 16 MiB: once stalled, each slow reader's echo sits mostly in the relay (the
    # kernel's send buffer towards it takes at most tcp_wmem's 4 MiB).
    world(env, {"user_buffer_budget_mb": 8, "initial_window": 16 << 20})
    busy = tls_conn(env)
    echo(busy, 256 * 1024, seed=1)
    ctx = h.user_ssl_context(env.pki.path("users-ca.crt"))
    slow = []
    for i in range(4):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        raw.settimeout(5)
        raw.connect(("127.0.0.1", env.user_port))
        s = ctx.wrap_socket(raw, server_hostname=ECHO_SNI)
        s.setblocking(False)
        slow.append(s)
    payload = h.pattern(16 << 20, seed=2)
    sent = [0] * len(slow)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and min(sent) < len(payload):
        moved = False
        for i, s in enumerate(slow):
            if sent[i] >= len(payload):
                continue
            try:
                sent[i] += s.send(payload[sent[i]:sent[i] + 65536])
                moved = True
            except (ssl.SSLWantWriteError, BlockingIOError):
                pass
        if not moved:
            time.sleep(0.05)
    h.log(f"slow readers sent {sent} bytes")
    h.wait_until(lambda: env.counter("user_buffered_bytes") >= (8 << 20), 5,
                 "the slow readers' echoes fill the budget")
    time.sleep(1.2)  # one more gauge sample: the bytes stay held
    held = env.counter("user_buffered_bytes")
    h.check(held >= (8 << 20), f"the relay holds {held} bytes for the slow readers")
    h.check(refused(env, "127.0.0.3"), "a new user is refused while the budget is spent")
    h.wait_until(lambda: env.counter("user_conns_refused_memory") >= 1, 3,
                 "user_conns_refused_memory counted")
    for i in range(3):
        echo(busy, 256 * 1024, seed=20 + i)  # the stream already open keeps its window
    h.check(refused(env, "127.0.0.4"), "still refused: the slow readers still hold the bytes")
    warns = g.events(env.relay.log_text(), "user_buffer_budget_full")
    h.check(1 <= len(warns) <= 3, f"user_buffer_budget_full at most once a second: {len(warns)}")
    for s in slow:
        s.close()
    h.wait_until(lambda: env.counter("user_buffered_bytes") < (1 << 20), 10,
                 "the bytes held for the slow readers are released")
    h.wait_until(lambda: not refused(env, "127.0.0.5"), 10, "new users are served again",
                 interval=0.3)
    echo(busy, 256 * 1024, seed=30)
    h.check(env.counter("tunnels_up") == 1, "the tunnel stayed up")


TESTS = {"idle": test_idle, "source_conns": test_source_conns,
         "pending_opens": test_pending_opens, "tunnels": test_tunnels, "fd_cap": test_fd_cap,
         "buffer_budget": test_buffer_budget, "idle_app": test_idle_app,
         "slow_handshake": test_slow_handshake}

if __name__ == "__main__":
    names = sys.argv[1:] or list(TESTS)
    rc = 0
    for name in names:
        rc |= h.run_test(f"limits_{name}", TESTS[name])
    sys.exit(rc)
