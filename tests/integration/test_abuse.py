#!/usr/bin/env python3
"""A malicious connector against a real relay (RELIABILITY.md "Bad inputs to try"): each abuse
gets the outcome dataplane/tunnel/SPEC.md documents (codec rows M1-M15, mux rows M16-M26, as
tests/unit/dataplane/tunnel/mux_conformance_test.cc checks them on the mux alone), with that
scope and no wider, and is counted.

World: one relay worker; tenant contoso with two groups. Default holds the honest connector c2
(a real apprelay-connector) and app web.contoso.test (echo backend); Bad holds connector c1 and
app bad.contoso.test. c1 is enrolled but never runs: a fake connector in this file holds c1's
real certificate, completes mutual TLS and HELLO / HELLO_ACK / CONFIG with the frame format of
SPEC.md, answers the relay's PINGs, and then misbehaves. One long-lived user echo stream through
c2 moves 1 MiB byte-exact before and after every abuse (and 64 KiB rounds during the floods);
c2's tunnel never goes down; the honest stream ends with close_notify at the end.

open_from_connector  The fake sends one OPEN (only the relay opens streams, M16), and a second
              fake sends a burst of 500 OPEN+RST pairs: each tunnel gets GOAWAY protocol_error
              and is closed at its first OPEN; tunnel_protocol_errors +1 per tunnel (not per
              frame); the relay opened no stream for them.
rst_flood     500 users (16 at a time) reach bad.contoso.test, served only by the fake, which
              answers each OPEN with RST (half of them after an OPEN_ACK) at once: each user sees
              a reset or a TCP end without close_notify, never a clean end, never a hang (each
              in < 5 s); streams_opened and streams_reset +500, no retry (no other connector in
              Bad); RSTs spend the tunnel's reset budget, which never closes a tunnel (M20): the
              fake's tunnel stays up with no GOAWAY, and then echoes a new user's bytes.
ping_flood    The fake stops reading its socket (8 KiB receive buffer) and sends PINGs in
              batches of 100 (each relay read queues fewer than 1000 PONGs, so they are written
              out and pile up unread until the relay's send backlog holds them): the queue of
              owed PONGs passes 1000 (M22) and the relay ends the tunnel within 20 s and 2M
              PINGs (tunnel_down "control queue overflow", tunnels_closed and
              tunnel_protocol_errors +1: the relay counts every tunnel the mux fails there);
              its GOAWAY rate_limited is checked if it can be read at all (it sits behind the
              unread PONGs, and the close resets the connection); relay RSS grows < 64 MiB.
window_overflow  On streams the relay opened to the fake (after OPEN_ACK): a WINDOW taking the
              credit to 2^31 (M18), a WINDOW of 2^31 (M13) and one of 0 (M12/M19) each reset only
              that stream (RST flow_control, flow_control, protocol_error to the fake; that user
              sees its stream cut); a WINDOW to exactly 2^31-1 is accepted and that stream
              echoes; the tunnel stays up with no GOAWAY.
closed_stream Late frames are ignored (M20): after the fake's own RST (DATA, WINDOW, FIN,
              OPEN_ACK and RST again on that id), and after the relay's RST for a user that
              aborted (DATA, FIN): no GOAWAY, the tunnel then echoes a new user. The relay's
              OPEN ids are odd and strictly increasing (M16). DATA on an odd id the relay never
              opened, and on an even id, closes the tunnel: GOAWAY protocol_error,
              tunnel_protocol_errors +1 each, and the stream in flight on it is reset.
unknown_type  Each on a fresh fake tunnel: an unknown type 14 (M4), a PING with a flag set
              (M3), a DATA header of length max_frame+1 and a PING header of length 2^31 with no
              payload behind it (M5: judged from the header, no wait for the payload, no
              allocation): GOAWAY protocol_error and close within 5 s each,
              tunnel_protocol_errors +1 each, relay RSS grows < 16 MiB.
"""
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import groups_helpers as g  # noqa: E402
import harness as h  # noqa: E402

MiB = h.MiB
WEB_SNI = "web.contoso.test"
BAD_SNI = "bad.contoso.test"

# Frame types and reasons (SPEC.md).
HELLO, HELLO_ACK, OPEN, OPEN_ACK, OPEN_FAIL, DATA, WINDOW, FIN, RST, PING, PONG, GOAWAY, \
    CONFIG = range(1, 14)
R_PROTOCOL_ERROR, R_FLOW_CONTROL, R_CANCELLED, R_RATE_LIMITED = 1, 2, 7, 11
MAX_WINDOW = 0x7fffffff
FAKE_WINDOW = 256 * 1024  # the initial_window the fake announces: the relay's send credit


def frame(ftype, sid=0, payload=b"", flags=0, reserved=0, length=None):
    n = len(payload) if length is None else length
    return struct.pack(">BBHII", ftype, flags, reserved, sid, n) + payload


def s8(text):
    b = text.encode()
    return bytes([len(b)]) + b


def rst(sid, code=R_CANCELLED, msg="fake"):
    return frame(RST, sid, struct.pack(">H", code) + s8(msg))


def window(sid, inc):
    return frame(WINDOW, sid, struct.pack(">I", inc))


def parse_reason(p):
    """RST / OPEN_FAIL payload -> (reason, message)."""
    return struct.unpack(">H", p[:2])[0], p[3:3 + p[2]].decode(errors="replace")


def parse_goaway(p):
    last, code = struct.unpack(">IH", p[:6])
    return last, code, p[7:7 + p[6]].decode(errors="replace")


class Frame:
    def __init__(self, ftype, flags, sid, payload):
        self.type, self.flags, self.sid, self.payload = ftype, flags, sid, payload

    def __repr__(self):
        return f"Frame(type={self.type}, sid={self.sid}, len={len(self.payload)})"


class FakeConnector:
    """c1's certificate, the frame format, and nothing of the real connector's manners. One
    thread drives it (SSLObject on memory BIOs over a nonblocking socket, like UserClient):
    pump() reads what arrived, answers PINGs (unless answer_pings is off) and keeps the other
    frames in self.inbox for take()."""

    def __init__(self, env, rcvbuf=None, hello=True, timeout=10.0):
        c1_dir = os.path.join(env.dir, "conn-c1")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(env.relay_ca_path())
        ctx.load_cert_chain(os.path.join(c1_dir, "cert.pem"), os.path.join(c1_dir, "key.pem"))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", env.tunnel_port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=h.RELAY_SERVER_NAME)
        self.pending = bytearray()  # ciphertext the socket has not taken yet
        self.plain = bytearray()    # decrypted bytes not yet parsed into frames
        self.inbox = []
        self.answer_pings = True
        self.pings_in = 0
        self.closed = None          # "eof", "reset", "close_notify", "tls: ..."
        self.eof = False            # TCP end or reset seen (written into the BIO)
        self.goaway = None          # (last_stream_id, reason, message)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self._flush()
            if time.monotonic() > deadline or self.closed:
                raise h.TestFailure(f"fake connector: TLS handshake failed ({self.closed})")
            self._fill(0.2)
        self._flush()
        if hello:
            self.hello(env.connector_ids["c1"])

    def hello(self, cid, version="0.1.0"):
        self.send(frame(HELLO, 0, struct.pack(">HHII", 1, 0xFFFF, 16 * 1024, FAKE_WINDOW) +
                        s8(cid) + s8(version)))
        ack = self.take(lambda f: f.type == HELLO_ACK, 10, "HELLO_ACK")
        (_, self.worker, self.workers, _, self.max_frame, self.relay_window, self.max_streams,
         self.ping_ms) = struct.unpack(">HHHHIIII", ack.payload[:24])
        self.take(lambda f: f.type == CONFIG, 10, "CONFIG after HELLO_ACK")

    # -- socket ------------------------------------------------------------------------------
    def _flush(self):
        if self.out.pending:
            self.pending += self.out.read()
        while self.pending and not self.closed:
            try:
                n = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                return
            except (BrokenPipeError, ConnectionResetError):
                self.closed = "reset"
                return
            del self.pending[:n]

    def _fill(self, wait):
        if self.eof:
            return
        p = select.poll()
        p.register(self.sock, select.POLLIN | (select.POLLOUT if self.pending else 0))
        ev = p.poll(max(0, int(wait * 1000)))
        self._flush()
        if not any(e & (select.POLLIN | select.POLLHUP | select.POLLERR) for _, e in ev):
            return
        for _ in range(64):
            try:
                data = self.sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                self.closed = self.closed or "reset"
                self.eof = True
                self.inc.write_eof()
                return
            if not data:
                self.eof = True
                self.inc.write_eof()
                return
            self.inc.write(data)

    def send(self, data):
        if self.closed:
            return False
        self.obj.write(data)
        self._flush()
        return not self.closed

    def backlog(self):
        return len(self.pending) + self.out.pending

    # -- frames ------------------------------------------------------------------------------
    def pump(self, wait=0.0):
        """Read what arrived (waiting up to `wait` for some); answer PINGs; new frames go to
        the inbox. Sets self.closed when the relay ended the connection."""
        if not self.closed:
            self._fill(wait)
        while True:
            try:
                b = self.obj.read(256 * 1024)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = self.closed or "close_notify"
                break
            except ssl.SSLError as e:  # TCP end without close_notify (or a TLS failure)
                self.closed = self.closed or ("eof" if "EOF" in str(e) else f"tls: {e}")
                break
            if not b:
                self.closed = self.closed or "close_notify"
                break
            self.plain += b
        while len(self.plain) >= 12:
            ftype, flags, _, sid, n = struct.unpack(">BBHII", self.plain[:12])
            if len(self.plain) < 12 + n:
                break
            f = Frame(ftype, flags, sid, bytes(self.plain[12:12 + n]))
            del self.plain[:12 + n]
            if ftype == PING:
                self.pings_in += 1
                if self.answer_pings and not self.closed:
                    self.send(frame(PONG, 0, f.payload))
                continue
            if ftype == GOAWAY:
                self.goaway = parse_goaway(f.payload)
                h.log(f"fake connector got GOAWAY {self.goaway}")
            self.inbox.append(f)

    def take(self, pred, timeout, what):
        """The first frame matching pred (removed from the inbox), pumping up to timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, f in enumerate(self.inbox):
                if pred(f):
                    return self.inbox.pop(i)
            if self.closed:
                raise h.TestFailure(f"fake connector: relay closed ({self.closed}, GOAWAY "
                                    f"{self.goaway}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise h.TestFailure(f"fake connector: no {what} within {timeout}s")
            self.pump(0.05)

    def wait_closed(self, timeout):
        """Pump until the relay ends the connection; returns how (None: still open)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.pump(0.05)
        return self.closed

    def hold(self, seconds):
        """Keep the tunnel alive (answer PINGs) for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.closed:
            self.pump(min(0.05, max(0.0, end - time.monotonic())))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# World and checks shared by the cases
# ---------------------------------------------------------------------------------------------

class World:
    def __init__(self, env):
        self.env = env
        _, echo_port = env.start_backend("echo")
        self.backend = f"127.0.0.1:{echo_port}"
        topo = h.make_world(env.pki, [("web", WEB_SNI, self.backend)], connectors=("c2",),
                            workers=1, with_fabrikam=False)
        topo.groups.append(dict(tenant="contoso", name="Bad"))
        topo.connectors.append(dict(tenant="contoso", id="c1", group="Bad"))
        crt, key = env.pki.leaf("app-bad", "users-ca", BAD_SNI, dns=[BAD_SNI])
        topo.apps.append(dict(tenant="contoso", name="bad", hostname=BAD_SNI, cert=crt, key=key,
                              backend=self.backend, group="Bad"))
        env.start_relay(topo)
        self.c2 = env.start_connector("c2")
        env.wait_tunnels(1, connector="c2")
        self.ca = env.pki.path("users-ca.crt")
        self.honest = h.UserClient(env.user_port, WEB_SNI, self.ca)
        self.seed = 0
        self.honest_ok("start")
        self.c2_mark = len(self.c2.log_text())
        self.fakes = []

    def fake(self, **kw):
        f = FakeConnector(self.env, **kw)
        self.fakes.append(f)
        h.check(f.workers == 1 and f.max_frame == 16 * 1024,
                f"fake connector with c1's certificate: TLS + HELLO / HELLO_ACK / CONFIG done "
                f"(max_frame {f.max_frame}, relay window {f.relay_window})")
        return f

    def honest_ok(self, after, n=MiB):
        self.seed += 1
        data = h.pattern(n, seed=self.seed)
        got = bytearray()
        self.honest.transfer(data, expect=len(data), timeout=30,
                             verify=lambda off, b: got.extend(b))
        h.check(bytes(got) == data, f"honest stream byte-exact ({n} bytes) after {after}")

    def c1_tunnels(self):
        return self.env.stats().get("connectors", {}).get("c1", {}).get("tunnels", 0)

    def settle(self):
        time.sleep(0.5)  # the stats file is rewritten every 200 ms

    def finish(self):
        """The honest connector never lost its tunnel; the honest stream ends cleanly."""
        st = self.env.stats()
        h.check(st.get("connectors", {}).get("c2", {}).get("tunnels") == 1,
                "honest connector c2 still has its tunnel")
        h.check(not g.events(self.c2.log_text()[self.c2_mark:], "tunnel_down"),
                "honest connector c2 never saw its tunnel go down")
        self.honest_ok("everything")
        h.echo_roundtrip(self.honest, b"", half_close=True, timeout=30)
        self.honest.close()
        h.check(self.honest.closed_notify, "honest stream half-closed, ended with close_notify")
        for f in self.fakes:
            f.close()
        h.check(self.env.relay.alive(), "relay alive")


class Ticker:
    """Echo rounds of 64 KiB on the honest stream in a thread while an abuse runs: every round
    byte-exact, none slower than 2 s."""

    def __init__(self, w, max_rounds=2000, max_seconds=45.0):
        self.w, self.rounds, self.worst, self.error = w, 0, 0.0, None
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, args=(max_rounds, max_seconds), daemon=True)
        self.t.start()

    def _run(self, max_rounds, max_seconds):
        end = time.monotonic() + max_seconds
        try:
            while not self.stop_ev.is_set() and self.rounds < max_rounds and \
                    time.monotonic() < end:
                data = h.pattern(64 * 1024, seed=1000 + self.rounds)
                got = bytearray()
                t0 = time.monotonic()
                self.w.honest.transfer(data, expect=len(data), timeout=10,
                                       verify=lambda off, b: got.extend(b))
                self.worst = max(self.worst, time.monotonic() - t0)
                if bytes(got) != data:
                    raise h.TestFailure(f"round {self.rounds}: bytes differ")
                self.rounds += 1
                time.sleep(0.02)
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self, what, min_rounds=5):
        end = time.monotonic() + 10  # an abuse may be over before a few rounds ran: let them
        while self.rounds < min_rounds and self.error is None and self.t.is_alive() and \
                time.monotonic() < end:
            time.sleep(0.02)
        self.stop_ev.set()
        self.t.join(15)
        h.check(not self.t.is_alive() and self.error is None,
                f"honest stream kept echoing during {what}: {self.rounds} rounds of 64 KiB "
                f"byte-exact, worst {self.worst:.2f}s (error: {self.error!r})")
        h.check(self.rounds >= min_rounds and self.worst < 2.0,
                f"honest stream not starved during {what} ({self.rounds} rounds, worst "
                f"{self.worst:.2f}s)")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def user_conn(env, sni=BAD_SNI, timeout=10.0):
    """A blocking TLS user connection (handshake done); a ragged EOF raises, not b""."""
    ctx = h.user_ssl_context(env.pki.path("users-ca.crt"))
    raw = socket.create_connection(("127.0.0.1", env.user_port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, suppress_ragged_eofs=False)
    except BaseException:
        raw.close()
        raise


def user_end(s, timeout):
    """How the relay ends a user's stream: reset, eof (TCP end without close_notify),
    close_notify, data, timeout."""
    s.settimeout(timeout)
    try:
        b = s.recv(65536)
    except ConnectionResetError:
        return "reset"
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
        return "close_notify" if isinstance(e, ssl.SSLZeroReturnError) else "eof"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except (ssl.SSLError, OSError) as e:
        return f"eof ({type(e).__name__})" if "EOF" in str(e) else f"reset ({e})"
    return "close_notify" if not b else "data"


def is_cut(how):
    """A cut stream never ends cleanly (RELIABILITY.md Bytes): reset or TCP end without
    close_notify."""
    return how is not None and (how.startswith("reset") or how.startswith("eof"))


def user_cut(s, timeout=5.0):
    """Send a little, then how the stream ended."""
    try:
        s.sendall(b"hello")
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
        pass
    how = user_end(s, timeout)
    s.close()
    return how


def fake_echo(w, f, what, n=48 * 1024, seed=7):
    """A new user of bad.contoso.test; the fake OPEN_ACKs and echoes its bytes: proves the fake's
    tunnel still carries streams. Returns the stream id."""
    data = h.pattern(n, seed=seed)
    out = {}

    def user():
        try:
            s = user_conn(w.env)
            s.sendall(data)
            got = b""
            while len(got) < n:
                b = s.recv(n - len(got))
                if not b:
                    break
                got += b
            out["got"] = got
            s.close()
        except Exception as e:  # reported below
            out["error"] = e

    t = threading.Thread(target=user, daemon=True)
    t.start()
    op = f.take(lambda x: x.type == OPEN, 10, f"OPEN for a new user ({what})")
    sid = op.sid
    f.send(frame(OPEN_ACK, sid))
    echoed, deadline = 0, time.monotonic() + 15
    while echoed < n and time.monotonic() < deadline:
        d = [x for x in f.inbox if x.sid == sid and x.type == DATA]
        for x in d:
            f.inbox.remove(x)
            f.send(frame(DATA, sid, x.payload))
            echoed += len(x.payload)
        if echoed < n:
            f.pump(0.05)
    t.join(15)
    h.check(out.get("got") == data and not t.is_alive(),
            f"the fake's tunnel still carries a new stream (sid {sid}): {n} bytes echoed "
            f"byte-exact after {what} (error: {out.get('error')!r})")
    # The user closed: the relay's FIN (or RST) for sid arrives; answer FIN.
    end = f.take(lambda x: x.sid == sid and x.type in (FIN, RST), 10, f"end of stream {sid}")
    if end.type == FIN:
        f.send(frame(FIN, sid))
    return sid


def expect_goaway_close(f, reason, what, timeout=5.0):
    """The relay sent GOAWAY `reason` and closed the fake's tunnel."""
    t0 = time.monotonic()
    how = f.wait_closed(timeout)
    h.check(how is not None, f"{what}: the relay closed the tunnel in "
                             f"{time.monotonic() - t0:.2f}s ({how})")
    h.check(f.goaway is not None and f.goaway[1] == reason,
            f"{what}: GOAWAY reason {reason} before the close (got {f.goaway})")


def counters_delta(env, before):
    c = env.counters()
    return {k: int(c.get(k, 0)) - int(before.get(k, 0)) for k in set(c) | set(before)}


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def test_open_from_connector(env):
    w = World(env)
    # One OPEN.
    c0 = env.counters()
    f = w.fake()
    w.settle()
    h.check(w.c1_tunnels() == 1, "the fake's tunnel is up as connector c1")
    f.send(frame(OPEN, 1, s8("bad") + s8(w.backend)))
    expect_goaway_close(f, R_PROTOCOL_ERROR, "one OPEN from the connector")
    h.check(f.goaway[0] == 0, f"GOAWAY last_stream_id 0: the relay opened nothing ({f.goaway})")
    h.wait_until(lambda: w.c1_tunnels() == 0, 5, "c1's tunnel gone from the relay's stats")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d["tunnel_protocol_errors"] == 1 and d["tunnels_closed"] == 1,
            f"tunnel_protocol_errors +{d['tunnel_protocol_errors']}, tunnels_closed "
            f"+{d['tunnels_closed']} (want +1, +1)")
    downs = g.events(env.relay.log_text(), "tunnel_down", connector=env.connector_ids["c1"])
    h.check(downs and "OPEN from the connector" in downs[-1].get("reason", ""),
            f"relay log: tunnel_down names the violation ({downs[-1:]})")
    w.honest_ok("an OPEN from a connector")

    # A burst of 500 OPEN+RST pairs (Rapid Reset from the wrong side): closed at the first OPEN.
    c0 = env.counters()
    f2 = w.fake()
    burst = b"".join(frame(OPEN, sid, s8("bad") + s8(w.backend)) + rst(sid)
                     for sid in range(1, 1001, 2))
    f2.send(burst)
    expect_goaway_close(f2, R_PROTOCOL_ERROR, "500 OPEN+RST pairs from the connector")
    h.wait_until(lambda: w.c1_tunnels() == 0, 5, "c1's tunnel gone from the relay's stats")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d["tunnel_protocol_errors"] == 1 and d["tunnels_closed"] == 1,
            f"one tunnel, one protocol error for the whole burst: tunnel_protocol_errors "
            f"+{d['tunnel_protocol_errors']}, tunnels_closed +{d['tunnels_closed']}")
    h.check(d.get("streams_opened", 0) == 0 and d.get("streams_reset", 0) == 0,
            f"no stream opened or reset by the burst (streams_opened +{d.get('streams_opened')},"
            f" streams_reset +{d.get('streams_reset')})")
    w.honest_ok("an OPEN+RST burst from a connector")
    w.finish()


def test_rst_flood(env):
    n_users, conc = 500, 16
    w = World(env)
    f = w.fake()
    w.settle()
    c0 = env.counters()
    rss0 = rss_kib(env.relay.pid)
    ticker = Ticker(w)
    outcomes, times = [], []
    lock = threading.Lock()

    def user(i):
        t0 = time.monotonic()
        try:
            how = user_cut(user_conn(env, timeout=10.0), timeout=5.0)
        except (ConnectionResetError, BrokenPipeError) as e:
            how = f"reset (handshake: {e})"
        except (ssl.SSLError, OSError) as e:
            how = f"error: {type(e).__name__}: {e}"
        with lock:
            outcomes.append(how)
            times.append(time.monotonic() - t0)

    opens, acked, t0 = [], 0, time.monotonic()
    with ThreadPoolExecutor(conc) as pool:
        futs = [pool.submit(user, i) for i in range(n_users)]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not all(x.done() for x in futs):
            f.pump(0.02)
            batch = [x for x in f.inbox if x.type == OPEN]
            out = bytearray()
            for x in batch:
                f.inbox.remove(x)
                if len(opens) % 2:
                    out += frame(OPEN_ACK, x.sid)
                    acked += 1
                out += rst(x.sid, R_CANCELLED, "flood")
                opens.append(x.sid)
            if out:
                f.send(bytes(out))
            if f.closed:
                raise h.TestFailure(f"the relay closed the fake's tunnel during the RST flood "
                                    f"({f.closed}, GOAWAY {f.goaway})")
    secs = time.monotonic() - t0
    ticker.stop("the RST flood")
    h.check(len(outcomes) == n_users, f"all {n_users} users finished ({len(outcomes)}) in "
                                      f"{secs:.1f}s")
    kinds = {}
    for o in outcomes:
        k = o.split(" ")[0]
        kinds[k] = kinds.get(k, 0) + 1
    h.log(f"user outcomes: {kinds}; slowest {max(times):.2f}s")
    bad = [o for o in outcomes if not is_cut(o)]
    h.check(not bad, f"every user saw a reset or a TCP end without close_notify, never a clean "
                     f"end, data or a hang ({kinds}; first bad: {bad[:3]})")
    h.check(max(times) < 5.0, f"each user ended in bounded time (slowest {max(times):.2f}s)")
    h.check(len(opens) == n_users and len(set(opens)) == n_users,
            f"the relay sent one OPEN per user to the fake ({len(opens)}, {acked} of them "
            f"OPEN_ACKed before the RST)")
    h.check(all(b > a for a, b in zip(opens, opens[1:])) and all(s % 2 for s in opens),
            "the relay's stream ids are odd and strictly increasing (M16)")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d["streams_opened"] == n_users and d["streams_reset"] == n_users,
            f"streams_opened +{d['streams_opened']}, streams_reset +{d['streams_reset']} "
            f"(want +{n_users} each)")
    h.check(d.get("streams_retried", 0) == 0,
            f"no retry: Bad has no other connector (streams_retried +{d.get('streams_retried')})")
    h.check(d.get("tunnel_protocol_errors", 0) == 0 and d.get("tunnels_closed", 0) == 0,
            f"no tunnel closed (tunnel_protocol_errors +{d.get('tunnel_protocol_errors')}, "
            f"tunnels_closed +{d.get('tunnels_closed')})")
    f.hold(0.3)
    h.check(f.goaway is None and not f.closed and w.c1_tunnels() == 1,
            "RSTs never close a tunnel (M20): the fake's tunnel is up, no GOAWAY")
    rss1 = rss_kib(env.relay.pid)
    h.check(rss1 - rss0 < 64 * 1024, f"relay RSS {rss0} -> {rss1} KiB")
    fake_echo(w, f, "500 RSTs")
    w.honest_ok("the RST flood")
    w.finish()


def test_ping_flood(env):
    w = World(env)
    c0 = env.counters()
    f = w.fake(rcvbuf=8192)
    f.answer_pings = False  # and from now on never pump(): the socket is not read
    rss0 = rss_kib(env.relay.pid)
    peak = rss0
    ticker = Ticker(w)
    # Paced in batches of 100 (2000 bytes): each relay read queues fewer than 1000 PONGs, so
    # the relay writes them out and they pile up in the fake's unread socket and then in the
    # relay's own send backlog; once that backlog holds, the owed PONGs pass 1000 (M22).
    ping_batch = b"".join(frame(PING, 0, struct.pack(">Q", i)) for i in range(100))
    sent, t0, last_poll = 0, time.monotonic(), 0.0
    gone = False
    while sent < 2_000_000 and time.monotonic() - t0 < 20:
        if f.backlog() > 2 * MiB:  # the relay is not keeping up: wait for the socket
            p = select.poll()
            p.register(f.sock, select.POLLOUT)
            p.poll(50)
            f._flush()
        else:
            if not f.send(ping_batch):
                break
            sent += 100
            time.sleep(0.0005)
        if time.monotonic() - last_poll > 0.1:
            last_poll = time.monotonic()
            peak = max(peak, rss_kib(env.relay.pid))
            if counters_delta(env, c0).get("tunnels_closed", 0) >= 1:
                gone = True
                break
    secs = time.monotonic() - t0
    h.log(f"sent {sent} PINGs in {secs:.2f}s, fake closed={f.closed}, backlog {f.backlog()}")
    h.wait_until(lambda: counters_delta(env, c0).get("tunnels_closed", 0) >= 1, 10,
                 "the relay closed the flooding tunnel")
    peak = max(peak, rss_kib(env.relay.pid))
    h.check(True, f"the relay ended the tunnel after {sent} PINGs in {secs:.1f}s "
                  f"(seen while sending: {gone})")
    h.check(peak - rss0 < 64 * 1024,
            f"relay RSS bounded during the flood: {rss0} -> peak {peak} KiB "
            f"(+{(peak - rss0) // 1024} MiB)")
    ticker.stop("the PING flood")
    # Now read what the relay had sent: PONGs, then maybe its GOAWAY, then the end.
    f.answer_pings = False
    how = f.wait_closed(10)
    h.check(how is not None, f"the fake's connection is closed ({how}, "
                             f"{f.pings_in} PINGs from the relay)")
    if f.goaway is not None:
        h.check(f.goaway[1] == R_RATE_LIMITED, f"GOAWAY reason rate_limited ({f.goaway})")
    else:
        h.log("note: no GOAWAY readable: it was queued behind the unread PONGs when the relay "
              "closed (the spec's GOAWAY is best effort on a peer that does not read)")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d["tunnels_closed"] == 1 and d["tunnel_protocol_errors"] == 1,
            f"tunnels_closed +{d['tunnels_closed']}, tunnel_protocol_errors "
            f"+{d['tunnel_protocol_errors']} (want +1, +1)")
    downs = g.events(env.relay.log_text(), "tunnel_down", connector=env.connector_ids["c1"])
    h.check(downs and "control queue" in downs[-1].get("reason", ""),
            f"relay log: tunnel_down names the control queue overflow (M22): {downs[-1:]}")
    h.check(w.c1_tunnels() == 0, "c1 has no tunnel left")
    w.honest_ok("the PING flood")
    w.finish()


def test_window_overflow(env):
    w = World(env)
    f = w.fake()
    c0 = env.counters()
    cases = [
        # (what, increment, expected RST reason or None = accepted)
        ("M18: credit 256 KiB + (2^31 - 256 KiB) = 2^31", MAX_WINDOW - FAKE_WINDOW + 1,
         R_FLOW_CONTROL),
        ("M13: increment 2^31", 0x80000000, R_FLOW_CONTROL),
        ("M12/M19: increment 0", 0, R_PROTOCOL_ERROR),
        ("M18: credit to exactly 2^31-1", MAX_WINDOW - FAKE_WINDOW, None),
    ]
    resets = 0
    for what, inc, want in cases:
        s = user_conn(env)
        op = f.take(lambda x: x.type == OPEN, 10, f"OPEN ({what})")
        f.send(frame(OPEN_ACK, op.sid))
        f.send(window(op.sid, inc))
        if want is None:
            f.hold(0.5)
            h.check(not [x for x in f.inbox if x.sid == op.sid and x.type == RST]
                    and not f.closed,
                    f"{what}: accepted, no RST, tunnel up")
            data = h.pattern(32 * 1024, seed=3)
            s.sendall(data)
            got, deadline = bytearray(), time.monotonic() + 10
            while len(got) < len(data) and time.monotonic() < deadline:
                for x in [x for x in f.inbox if x.sid == op.sid and x.type == DATA]:
                    f.inbox.remove(x)
                    got += x.payload
                f.pump(0.05)
            f.send(b"".join(frame(DATA, op.sid, bytes(got[i:i + f.max_frame]))
                            for i in range(0, len(got), f.max_frame)))
            s.settimeout(10)
            back = b""
            while len(back) < len(data):
                b = s.recv(len(data) - len(back))
                if not b:
                    break
                back += b
            h.check(bytes(got) == data and back == data,
                    f"{what}: the stream then carries 32 KiB both ways byte-exact")
            s.close()
            continue
        r = f.take(lambda x: x.sid == op.sid and x.type == RST, 5, f"RST ({what})")
        code, msg = parse_reason(r.payload)
        h.check(code == want, f"{what}: the relay resets stream {op.sid} with reason {want} "
                              f"(got {code} '{msg}')")
        resets += 1
        how = user_cut(s)
        h.check(is_cut(how), f"{what}: the user sees the stream cut ({how})")
        h.check(not f.closed and f.goaway is None, f"{what}: stream scope only, tunnel up")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d["streams_reset"] == resets and d.get("tunnel_protocol_errors", 0) == 0 and
            d.get("tunnels_closed", 0) == 0,
            f"streams_reset +{d['streams_reset']} (want +{resets}), tunnel_protocol_errors "
            f"+{d.get('tunnel_protocol_errors')}, tunnels_closed +{d.get('tunnels_closed')}")
    h.check(w.c1_tunnels() == 1, "the fake's tunnel is still up")
    fake_echo(w, f, "three window violations")
    w.honest_ok("window violations")
    w.finish()


def test_closed_stream(env):
    w = World(env)
    f = w.fake()
    c0 = env.counters()
    sids = []

    # a) Late frames after the fake's own RST on a stream the relay opened.
    s = user_conn(env)
    op = f.take(lambda x: x.type == OPEN, 10, "OPEN (a)")
    sids.append(op.sid)
    f.send(frame(OPEN_ACK, op.sid) + rst(op.sid))
    how = user_cut(s)
    h.check(is_cut(how), f"the user of stream {op.sid} sees the fake's RST as a cut ({how})")
    late = (frame(DATA, op.sid, b"x" * 1000) + window(op.sid, 4096) + frame(FIN, op.sid) +
            frame(OPEN_ACK, op.sid) + rst(op.sid) + frame(DATA, op.sid, b"y" * 16000))
    f.send(late)
    f.hold(0.5)
    h.check(not f.closed and f.goaway is None,
            "DATA, WINDOW, FIN, OPEN_ACK, RST on a stream after the fake's RST: ignored (M20)")
    sids.append(fake_echo(w, f, "late frames after the connector's RST", seed=11))

    # b) Late DATA after the relay's RST: the user aborts, the relay sends RST; the fake then
    # sends a window of DATA and a FIN, as a connector racing the reset would.
    s = user_conn(env)
    op = f.take(lambda x: x.type == OPEN, 10, "OPEN (b)")
    sids.append(op.sid)
    f.send(frame(OPEN_ACK, op.sid))
    f.hold(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # TCP RST from the user
    r = f.take(lambda x: x.sid == op.sid and x.type == RST, 5, "the relay's RST for the abort")
    code, msg = parse_reason(r.payload)
    h.check(code == R_CANCELLED,
            f"the relay resets stream {op.sid} after its user's abort (reason {code} '{msg}')")
    f.send(b"".join(frame(DATA, op.sid, b"z" * 16000) for _ in range(8)) + frame(FIN, op.sid))
    f.hold(0.5)
    h.check(not f.closed and f.goaway is None,
            "128 KB of DATA and a FIN after the relay's RST: ignored (M20)")
    sids.append(fake_echo(w, f, "late DATA after the relay's RST", seed=12))
    h.check(all(b > a for a, b in zip(sids, sids[1:])) and all(x % 2 for x in sids),
            f"the relay's stream ids are odd and strictly increasing (M16): {sids}")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d.get("tunnel_protocol_errors", 0) == 0 and d.get("tunnels_closed", 0) == 0,
            f"late frames closed nothing (tunnel_protocol_errors +{d.get('tunnel_protocol_errors')}"
            f", tunnels_closed +{d.get('tunnels_closed')})")
    w.honest_ok("late frames on closed streams")

    # c) DATA on an odd id the relay never opened (above every id it used): protocol error,
    # tunnel scope (M16 row "DATA on an id never opened"); the stream in flight is reset.
    c0 = env.counters()
    s = user_conn(env)
    op = f.take(lambda x: x.type == OPEN, 10, "OPEN (c)")
    f.send(frame(OPEN_ACK, op.sid))
    f.hold(0.2)
    f.send(frame(DATA, op.sid + 200, b"forged"))
    expect_goaway_close(f, R_PROTOCOL_ERROR, f"DATA on never-opened id {op.sid + 200}")
    how = user_cut(s)
    h.check(is_cut(how), f"the stream in flight on that tunnel is cut for its user ({how})")
    # d) DATA on an even id (never a stream of the relay's) on a fresh fake tunnel.
    f2 = w.fake()
    f2.send(frame(DATA, 2, b"forged"))
    expect_goaway_close(f2, R_PROTOCOL_ERROR, "DATA on even id 2")
    w.settle()
    d = counters_delta(env, c0)
    h.check(d["tunnel_protocol_errors"] == 2 and d["tunnels_closed"] == 2 and
            d["streams_reset"] == 1,
            f"tunnel_protocol_errors +{d['tunnel_protocol_errors']}, tunnels_closed "
            f"+{d['tunnels_closed']}, streams_reset +{d['streams_reset']} (want +2, +2, +1)")
    w.honest_ok("DATA on never-opened stream ids")
    w.finish()


def test_unknown_type(env):
    w = World(env)
    rss0 = rss_kib(env.relay.pid)
    bad = [
        ("unknown type 14 (M4)", frame(14, 0, b"\0" * 8)),
        ("PING with a flag set (M3)", frame(PING, 0, b"\0" * 8, flags=1)),
        ("DATA header of length max_frame+1, no payload (M5)",
         frame(DATA, 1, length=16 * 1024 + 1)),
        ("PING header of length 2^31, no payload (M5)", frame(PING, 0, length=0x80000000)),
    ]
    for what, data in bad:
        c0 = env.counters()
        f = w.fake()
        f.send(data)
        expect_goaway_close(f, R_PROTOCOL_ERROR, what)
        w.settle()
        d = counters_delta(env, c0)
        h.check(d["tunnel_protocol_errors"] == 1 and d["tunnels_closed"] == 1,
                f"{what}: tunnel_protocol_errors +{d['tunnel_protocol_errors']}, tunnels_closed "
                f"+{d['tunnels_closed']} (want +1, +1)")
        w.honest_ok(what, n=256 * 1024)
    rss1 = rss_kib(env.relay.pid)
    h.check(rss1 - rss0 < 16 * 1024, f"relay RSS {rss0} -> {rss1} KiB (no allocation per "
                                     f"announced length)")
    w.finish()


TESTS = {"open_from_connector": test_open_from_connector, "rst_flood": test_rst_flood,
         "ping_flood": test_ping_flood, "window_overflow": test_window_overflow,
         "closed_stream": test_closed_stream, "unknown_type": test_unknown_type}

if __name__ == "__main__":
    names = sys.argv[1:] or list(TESTS)
    rc = 0
    for name in names:
        rc |= h.run_test(f"abuse_{name}", TESTS[name])
    sys.exit(rc)
