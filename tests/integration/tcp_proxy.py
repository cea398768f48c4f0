#!/usr/bin/env python3
"""TCP fault-injection proxy for integration tests. Stdlib only, loopback only.

Sits between a process and the server it talks to (relay <-> etcd member, connector <-> relay)
so a test can partition, heal, slow down or reset the link on demand:

    with TcpProxy("127.0.0.1", etcd_port, name="etcd0") as p:   # start() on enter, close() on exit
        relay = start_relay(etcd_endpoint=p.address)
        p.cut()          # RST every open connection; new ones are accepted and RST at once
        p.heal()         # new connections are forwarded again
        p.blackhole()    # connections stay open but every byte is dropped (peers time out)
        p.heal()         # blackholed connections are RST so clients reconnect
        p.set_delay(0.2) # +200 ms per forwarded chunk, each direction
        p.reset_all()    # RST every open connection once, keep forwarding new ones
        p.set_slice(1)   # every forwarded chunk is written 1 byte per send (0 = whole chunks)
        p.after(n, "stall")     # each connection forwards n more bytes (both directions), then
                                # stops reading and writing with both sockets open (half-wedge)
        p.after(n, "truncate")  # ... then closes both sides cleanly (FIN): a truncation
        p.after(n, "reset")     # ... then RSTs both sides
        p.after(None)           # new connections are forwarded whole again
        p.stats()        # {"accepted", "open", "bytes_up", "bytes_down", "resets"}

One accept thread; one daemon thread per connection multiplexing both sockets with a poll
selector and two bounded queues (256 KiB per direction), so a slow side stalls reading from the
other instead of buffering without limit. Half-close is forwarded: EOF from one side becomes
shutdown(SHUT_WR) on the other once its queue has drained, and the other direction keeps
flowing; the connection is closed (both sockets, both sides) when both directions are done, or
RST on both sides as soon as either side errors. cut()/reset_all()/heal() return once the
affected connections are gone and blackhole() once they drop bytes (each bounded, 2 s). Every
wait is bounded; close() joins all threads within 5 s.

stats()["resets"] counts client connections the proxy aborted itself: cut(), reset_all(),
heal() of a blackholed connection, connections accepted while cut, and target unreachable
(refused, or no connect within 2 s). Resets merely passed on from a peer are not counted.
bytes_up is client->target, bytes_down target->client, counted when delivered.

CLI:  tcp_proxy.py selftest
"""
import errno
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque

CONNECT_TIMEOUT = 2.0  # to the target; then the client is reset
CONTROL_TIMEOUT = 2.0  # cut()/heal()/reset_all()/blackhole(): wait for the connections
CLOSE_TIMEOUT = 5.0  # close(): join every thread
CHUNK = 64 * 1024
QUEUE_LIMIT = 256 * 1024  # per direction: stop reading the source beyond this
SELECT_CAP = 1.0  # no single wait is longer, whatever happens to the wake-ups

_LINGER_RST = struct.pack("ii", 1, 0)
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_AGAIN = (BlockingIOError, InterruptedError)

# connection actions, set by control calls and carried out by the connection's thread
_RESET = "reset"  # RST both sides, counted in stats()["resets"]
_CLOSE = "close"  # proxy closing: RST both sides, not counted
_BLACKHOLE = "blackhole"


def _rst(sock):
    """Abortive close: SO_LINGER 0 makes close() send RST instead of FIN."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _close(sock):
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


class _Pipe:
    """One direction: chunks read from the source waiting to be written to the destination."""

    __slots__ = ("q", "size", "eof", "shut")

    def __init__(self):
        self.q = deque()  # (deliver_at monotonic, bytes)
        self.size = 0
        self.eof = False  # source sent FIN
        self.shut = False  # destination got shutdown(SHUT_WR)

    def clear(self):
        self.q.clear()
        self.size = 0


class _Conn:
    def __init__(self, proxy, cid, client, blackholed):
        self.proxy = proxy
        self.client = client
        self.upstream = None
        self.lock = threading.Lock()  # action, wake_w
        self.action = _BLACKHOLE if blackholed else None
        self.dropping = threading.Event()  # set once in blackhole mode (or gone)
        # after(): bytes still forwarded (both directions) before after_action; None = no limit
        self.budget, self.after_action = proxy._after if proxy._after else (None, None)
        self.fired = None  # the after() action once the budget is spent
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.thread = threading.Thread(target=self._run, name=f"{proxy.name}-conn{cid}",
                                       daemon=True)

    # -- control side (any thread) --

    def signal(self, action):
        with self.lock:
            if self.action in (_RESET, _CLOSE) or self.wake_w is None:
                return
            self.action = action
            try:
                self.wake_w.send(b"\0")
            except OSError:
                pass  # full: a wake-up is already pending

    def discard(self):
        """Never started: closes the wake-up pair (the caller resets the client)."""
        _close(self.wake_r)
        _close(self.wake_w)

    # -- connection thread --

    def _run(self):
        sel = selectors.PollSelector()  # no fd of its own, no FD_SETSIZE limit
        try:
            sel.register(self.wake_r, _READ)
            if self._connect(sel):
                self._pump(sel)
        except Exception:  # never leave sockets behind, whatever went wrong
            self._abort(counted=False)
        finally:
            sel.close()
            self._finish()

    def _finish(self):
        _rst(self.client)  # only still set on an unexpected path
        _rst(self.upstream)
        self.client = self.upstream = None
        with self.lock:
            _close(self.wake_w)
            self.wake_w = None
        _close(self.wake_r)
        self.dropping.set()
        self.proxy._forget(self)

    def _abort(self, counted):
        if counted and self.client is not None:
            self.proxy._count("resets", 1)
        _rst(self.client)
        _rst(self.upstream)
        self.client = self.upstream = None

    def _close_both(self):
        _close(self.client)
        _close(self.upstream)
        self.client = self.upstream = None

    def _connect(self, sel):
        """Connects to the target; False if the connection is over (client reset)."""
        self.client.setblocking(False)
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.action == _BLACKHOLE:
            return True
        family, addr = self.proxy._target_addr
        up = self.upstream = socket.socket(family, socket.SOCK_STREAM)
        up.setblocking(False)
        err = up.connect_ex(addr)
        if err == errno.EINPROGRESS:
            sel.register(up, _WRITE)
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while True:
                action = self.action
                if action in (_RESET, _CLOSE):
                    self._abort(counted=action == _RESET)
                    return False
                if action == _BLACKHOLE:  # partitioned mid-connect: never reach the target
                    sel.unregister(up)
                    _rst(up)
                    self.upstream = None
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    err = errno.ETIMEDOUT
                    break
                ready = False
                for key, _ in sel.select(min(left, SELECT_CAP)):
                    if key.fileobj is self.wake_r:
                        _drain(self.wake_r)
                    else:
                        ready = True
                if ready:
                    err = up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
            sel.unregister(up)
        if err:  # target down: fail the client fast
            self._abort(counted=True)
            return False
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True

    def _pump(self, sel):
        c, u = self.client, self.upstream
        up, down = _Pipe(), _Pipe()  # client->upstream, upstream->client
        registered = {}
        proxy = self.proxy

        def want(sock, mask):
            cur = registered.get(sock, 0)
            if mask == cur:
                return
            if not mask:
                sel.unregister(sock)
                del registered[sock]
            elif not cur:
                sel.register(sock, mask)
                registered[sock] = mask
            else:
                sel.modify(sock, mask)
                registered[sock] = mask

        def flush(pipe, dst, stat, now):
            """Writes the due chunks; False on a socket error."""
            try:
                while pipe.q and pipe.q[0][0] <= now and self.fired is None:
                    at, data = pipe.q[0]
                    limit = len(data)
                    if proxy._slice:
                        limit = min(limit, proxy._slice)
                    budget = self.budget
                    if budget is not None:
                        limit = min(limit, budget)
                        if limit == 0:
                            self.fired = self.after_action
                            break
                    n = dst.send(data[:limit] if limit < len(data) else data, _SEND_FLAGS)
                    if budget is not None:
                        self.budget = budget - n
                        if self.budget == 0:
                            self.fired = self.after_action
                    pipe.size -= n
                    proxy._count(stat, n)
                    if n < len(data):
                        pipe.q[0] = (at, data[n:])
                        break
                    pipe.q.popleft()
            except _AGAIN:
                pass
            except OSError:
                return False
            return True

        def fill(pipe, src, now):
            """Reads one chunk into pipe; False on a socket error."""
            try:
                data = src.recv(CHUNK)
            except _AGAIN:
                return True
            except OSError:
                return False
            if data:
                pipe.q.append((now + proxy._delay, data))
                pipe.size += len(data)
            else:
                pipe.eof = True
            return True

        dropping = False
        while True:
            action = self.action
            if action in (_RESET, _CLOSE):
                self._abort(counted=action == _RESET)
                return
            if action == _BLACKHOLE and not dropping:
                dropping = True
                up.clear()
                down.clear()
                self.dropping.set()
            if self.fired == "truncate":
                self._close_both()
                return
            if self.fired == "reset":
                self._abort(counted=True)
                return
            timeout = SELECT_CAP
            now = time.monotonic()
            if self.fired == "stall":  # wedged: nothing read, nothing written, sockets open
                want(c, 0)
                want(u, 0)
                sel.select(SELECT_CAP)
                _drain(self.wake_r)
                continue
            if dropping:
                want(c, _READ)
                if u is not None:
                    want(u, _READ)
            else:
                cmask = 0 if up.eof or up.size >= QUEUE_LIMIT else _READ
                umask = 0 if down.eof or down.size >= QUEUE_LIMIT else _READ
                if down.q:
                    if down.q[0][0] <= now:
                        cmask |= _WRITE
                    else:
                        timeout = min(timeout, down.q[0][0] - now)
                if up.q:
                    if up.q[0][0] <= now:
                        umask |= _WRITE
                    else:
                        timeout = min(timeout, up.q[0][0] - now)
                want(c, cmask)
                want(u, umask)

            events = sel.select(max(timeout, 0.0))
            now = time.monotonic()
            for key, mask in events:
                s = key.fileobj
                if s is self.wake_r:
                    _drain(s)
                    continue
                if dropping:  # read and discard; a vanished target stays partitioned
                    try:
                        alive = bool(s.recv(CHUNK))
                    except _AGAIN:
                        alive = True
                    except OSError:
                        alive = False
                    if not alive:
                        if s is c:
                            self._close_both()
                            return
                        want(u, 0)
                        _close(u)
                        u = self.upstream = None
                    continue
                interest = registered.get(s, 0)
                if s is c:
                    src_pipe, dst, dst_stat, out_pipe, out_stat = up, u, "bytes_up", down, "bytes_down"
                else:
                    src_pipe, dst, dst_stat, out_pipe, out_stat = down, c, "bytes_down", up, "bytes_up"
                if mask & _WRITE and interest & _WRITE:
                    if not flush(out_pipe, s, out_stat, now):
                        self._abort(counted=False)
                        return
                if mask & _READ and interest & _READ:
                    if not fill(src_pipe, s, now) or not flush(src_pipe, dst, dst_stat, now):
                        self._abort(counted=False)
                        return

            if dropping:
                continue
            # half-close: forward EOF once everything before it was delivered
            for pipe, dst in ((up, u), (down, c)):
                if pipe.eof and not pipe.q and not pipe.shut:
                    pipe.shut = True
                    want(dst, registered.get(dst, 0) & ~_WRITE)
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        self._abort(counted=False)
                        return
            if up.shut and down.shut:
                self._close_both()
                return


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host="127.0.0.1",
                 listen_port=0, name="proxy"):
        self.name = name
        self.target = (target_host, int(target_port))
        self._listen = (listen_host, int(listen_port))
        self._lock = threading.Lock()
        self._mode = "normal"  # normal | cut | blackhole: what new connections get
        self._delay = 0.0
        self._slice = 0  # set_slice(): max bytes per send (0 = whole chunks)
        self._after = None  # after(): (bytes, action) for connections accepted from now on
        self._conns = set()
        self._next_id = 0
        self._stats = {"accepted": 0, "bytes_up": 0, "bytes_down": 0, "resets": 0}
        self._target_addr = None
        self._listener = None
        self._port = None
        self._thread = None
        self._wake_r = self._wake_w = None
        self._closing = False
        self._closed = False

    def __repr__(self):
        return f"TcpProxy({self.name} {self.address if self._port else '-'} -> " \
               f"{self.target[0]}:{self.target[1]} {self._mode})"

    # -- lifecycle --

    def start(self) -> "TcpProxy":
        if self._listener is not None or self._closed:
            raise RuntimeError(f"{self.name}: start() called twice")
        info = socket.getaddrinfo(*self.target, type=socket.SOCK_STREAM)[0]
        self._target_addr = (info[0], info[4])
        linfo = socket.getaddrinfo(*self._listen, type=socket.SOCK_STREAM)[0]
        ls = socket.socket(linfo[0], socket.SOCK_STREAM)
        try:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(linfo[4])
            ls.listen(1024)
            ls.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
        except BaseException:
            ls.close()
            _close(self._wake_r)
            _close(self._wake_w)
            raise
        self._listener = ls
        self._port = ls.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self):
        """Stops accepting, RSTs every connection, joins every thread (5 s in all). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._closing = True
            conns = list(self._conns)
            for conn in conns:
                conn.signal(_CLOSE)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        if self._thread is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            conn.thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None and not self._thread.is_alive():
            _close(self._wake_w)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._port

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    # -- faults --

    def cut(self):
        """Partition: RST every open connection (both sides); new ones are accepted and RST."""
        with self._lock:
            self._mode = "cut"
            conns = list(self._conns)
            for conn in conns:
                conn.signal(_RESET)
        self._wait(conns, lambda c, t: c.thread.join(t) or not c.thread.is_alive())

    def blackhole(self):
        """Partition: connections stay open, all bytes are dropped both ways, new ones too."""
        with self._lock:
            self._mode = "blackhole"
            conns = list(self._conns)
            for conn in conns:
                conn.signal(_BLACKHOLE)
        self._wait(conns, lambda c, t: c.dropping.wait(t))

    def heal(self):
        """New connections are forwarded again; blackholed ones are RST so clients reconnect."""
        with self._lock:
            self._mode = "normal"
            conns = [c for c in self._conns if c.action == _BLACKHOLE]
            for conn in conns:
                conn.signal(_RESET)
        self._wait(conns, lambda c, t: c.thread.join(t) or not c.thread.is_alive())

    def reset_all(self):
        """RST every open connection once; keeps accepting (in the current mode)."""
        with self._lock:
            conns = list(self._conns)
            for conn in conns:
                conn.signal(_RESET)
        self._wait(conns, lambda c, t: c.thread.join(t) or not c.thread.is_alive())

    def set_delay(self, seconds: float):
        """Latency added to every chunk forwarded from now on, each direction (0 = none)."""
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = seconds

    def set_slice(self, nbytes: int):
        """Every send of forwarded bytes carries at most nbytes (1 = byte by byte); 0 = off."""
        if nbytes < 0:
            raise ValueError("slice must be >= 0")
        self._slice = int(nbytes)

    def after(self, nbytes, action="stall"):
        """Every open connection, and each one accepted from now on, forwards `nbytes` more
        bytes (both directions together), then: "stall" (stops reading and writing, both
        sockets stay open: a half-wedged link), "truncate" (clean close of both sides, FIN) or
        "reset" (RST both sides). after(None) disarms it for new connections."""
        if nbytes is not None and (nbytes < 0 or action not in ("stall", "truncate", "reset")):
            raise ValueError("after(nbytes >= 0, stall|truncate|reset)")
        with self._lock:
            self._after = None if nbytes is None else (int(nbytes), action)
            if nbytes is not None:
                for conn in self._conns:
                    with conn.lock:
                        conn.budget, conn.after_action = int(nbytes), action
                        if conn.wake_w is not None:
                            try:
                                conn.wake_w.send(b"\0")
                            except OSError:
                                pass

    # -- observation --

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats, open=len(self._conns))

    def wait_idle(self, timeout=2.0) -> bool:
        """True once no connection is open (polls every 10 ms, at most timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._conns:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # -- internals --

    def _wait(self, conns, done):
        if not conns:
            return
        deadline = time.monotonic() + CONTROL_TIMEOUT
        for conn in conns:
            if not done(conn, max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{self.name}: connection did not react within "
                                   f"{CONTROL_TIMEOUT}s")

    def _count(self, key, n):
        with self._lock:
            self._stats[key] += n

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self):
        sel = selectors.PollSelector()
        try:
            sel.register(self._listener, _READ)
            sel.register(self._wake_r, _READ)
            while not self._closing:
                for key, _ in sel.select(SELECT_CAP):
                    if key.fileobj is self._wake_r:
                        _drain(self._wake_r)
                    elif not self._closing:
                        self._accept_ready()
        finally:
            sel.close()
            _close(self._listener)  # the kernel RSTs whatever is still in the backlog
            _close(self._wake_r)

    def _accept_ready(self):
        for _ in range(256):  # then let the loop look at the wake-up pipe again
            try:
                sock, _ = self._listener.accept()
            except _AGAIN:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # the listener stays readable: back off instead of spinning
                    time.sleep(0.05)
                    return
                continue  # ECONNABORTED and the like: that one is gone, go on
            conn = None
            with self._lock:
                self._stats["accepted"] += 1
                if self._closing or self._mode == "cut":
                    if not self._closing:
                        self._stats["resets"] += 1
                else:
                    try:
                        conn = _Conn(self, self._next_id, sock, self._mode == "blackhole")
                    except OSError:
                        conn = None  # out of fds: the client gets a reset
                    else:
                        self._next_id += 1
                        try:  # under the lock: control calls only ever see started threads
                            conn.thread.start()
                            self._conns.add(conn)
                        except RuntimeError:  # can't start a thread
                            conn.discard()
                            conn = None
            if conn is None:
                _rst(sock)


# ----------------------------------------------------------------------------- selftest


class _EchoServer:
    """Echoes every byte back; EOF from the client -> close. One thread per connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)  # accept() wakes up to look at the stop flag
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._loop, name="echo-accept", daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stop:
                    break
                continue
            threading.Thread(target=self._echo, args=(s,), name="echo", daemon=True).start()
        self.sock.close()

    @staticmethod
    def _echo(s):
        with s:
            s.settimeout(10)
            try:
                while True:
                    data = s.recv(CHUNK)
                    if not data:
                        break
                    s.sendall(data)
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join(2)


def _check(cond, what):
    if not cond:
        raise AssertionError(f"tcp_proxy selftest: {what}")


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        data = s.recv(min(CHUNK, n - len(buf)))
        if not data:
            break
        buf += data
    return bytes(buf)


def _roundtrip(addr, data, half_close=False, timeout=5.0):
    """Sends data (from a thread) and reads the echo; with half_close, shutdown(SHUT_WR) after
    sending and read until EOF."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        errors = []

        def send():
            try:
                s.sendall(data)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        if half_close:
            got = _recv_exact(s, len(data) + 1)  # + 1: must end at EOF, not at len(data)
        else:
            got = _recv_exact(s, len(data))
        t.join(timeout)
        _check(not t.is_alive() and not errors, f"sender finished cleanly ({errors})")
        return got


def _connect(addr, timeout=1.0):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def _fails_fast(s, limit=1.0, send=b""):
    """The connection errors out (RST or EOF) within limit seconds."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        if send:
            s.sendall(send)
        data = s.recv(1)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        data = b""
    except socket.timeout:
        return False
    return data == b"" and time.monotonic() - t0 < limit


def _new_conn_fails_fast(addr, limit=1.0):
    t0 = time.monotonic()
    try:
        s = _connect(addr, limit)
    except (ConnectionRefusedError, ConnectionResetError):
        return time.monotonic() - t0 < limit
    with s:
        return _fails_fast(s, limit - (time.monotonic() - t0), b"hello")


def _times_out(s, timeout=0.5):
    s.settimeout(timeout)
    try:
        s.recv(1)
    except socket.timeout:
        return True
    except OSError:
        return False
    return False


def selftest():
    t_start = time.monotonic()
    fds0 = _fds()
    threads0 = threading.active_count()
    echo = _EchoServer()
    proxy = TcpProxy("127.0.0.1", echo.port, name="selftest").start()
    addr = proxy.address
    _check(addr == f"127.0.0.1:{proxy.port}" and proxy.port > 0, f"address {addr}")

    # 1 MiB round trip
    payload = os.urandom(1 << 20)
    _check(_roundtrip(addr, payload) == payload, "1 MiB echo through the proxy")
    _check(proxy.wait_idle(2), "idle after the 1 MiB echo")  # counters settle with the thread
    st = proxy.stats()
    _check(st["bytes_up"] == len(payload) and st["bytes_down"] == len(payload), f"bytes {st}")

    # half-close: shutdown(SHUT_WR), still read the whole echo, then EOF
    data = os.urandom(300 * 1024)
    _check(_roundtrip(addr, data, half_close=True) == data, "half-close echo")

    # concurrent connections
    results = []

    def worker(i):
        d = os.urandom(64 * 1024 + i)
        results.append(_roundtrip(addr, d) == d)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(50)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    _check(len(results) == 50 and all(results), "50 concurrent echo connections")

    # cut: open connection RST at once, new connections fail fast
    s = _connect(addr)
    s.sendall(b"ping")
    _check(_recv_exact(s, 4) == b"ping", "echo before cut")
    resets = proxy.stats()["resets"]
    proxy.cut()
    _check(_fails_fast(s), "open connection fails within 1 s after cut()")
    s.close()
    _check(_new_conn_fails_fast(addr), "new connection fails within 1 s while cut")
    _check(proxy.stats()["resets"] >= resets + 2, f"resets counted {proxy.stats()}")

    # heal
    proxy.heal()
    _check(_roundtrip(addr, b"after heal") == b"after heal", "echo after heal()")

    # blackhole: old and new connections time out, heal resets them, echo works again
    _check(proxy.wait_idle(2), "idle before blackhole")
    old = _connect(addr)
    old.sendall(b"ping")
    _check(_recv_exact(old, 4) == b"ping", "echo before blackhole")
    proxy.blackhole()
    old.sendall(b"lost")
    new = _connect(addr)
    new.sendall(b"lost too")
    _check(_times_out(old), "open connection times out while blackholed")
    _check(_times_out(new), "new connection times out while blackholed")
    _check(proxy.stats()["open"] == 2, f"blackholed connections stay open {proxy.stats()}")
    proxy.heal()
    _check(_fails_fast(old), "blackholed connection reset by heal()")
    _check(_fails_fast(new), "connection made while blackholed reset by heal()")
    old.close()
    new.close()
    _check(_roundtrip(addr, b"healed again") == b"healed again", "echo after blackhole heal")

    # reset_all: the open connection dies, new ones work
    s = _connect(addr)
    s.sendall(b"ping")
    _check(_recv_exact(s, 4) == b"ping", "echo before reset_all")
    proxy.reset_all()
    _check(_fails_fast(s), "reset_all() resets the open connection")
    s.close()
    _check(_roundtrip(addr, b"still up") == b"still up", "echo after reset_all")

    # delay
    proxy.set_delay(0.2)
    t0 = time.monotonic()
    _check(_roundtrip(addr, b"slow") == b"slow", "echo with delay")
    took = time.monotonic() - t0
    _check(took >= 0.2, f"round trip with set_delay(0.2) took {took:.3f}s")
    proxy.set_delay(0)

    # target down: the client is reset quickly
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    with hole, TcpProxy("127.0.0.1", hole.getsockname()[1], name="selftest-down") as down:
        _check(_new_conn_fails_fast(down.address), "target down: client reset within 1 s")
        _check(down.wait_idle(2) and down.stats()["resets"] == 1, f"target down {down.stats()}")

    # many short connections: no leak
    _check(proxy.wait_idle(2), "idle before the churn")
    fds1 = _fds()
    for i in range(500):
        with _connect(addr, 2) as c:
            c.sendall(b"ping")
            _check(_recv_exact(c, 4) == b"ping", f"short connection {i}")
    deadline = time.monotonic() + 2
    while (proxy.stats()["open"] or _fds() > fds1) and time.monotonic() < deadline:
        time.sleep(0.01)
    _check(proxy.stats()["open"] == 0, f"500 short connections all closed {proxy.stats()}")
    _check(_fds() <= fds1, f"fd leak: {fds1} -> {_fds()}")

    st = proxy.stats()
    _check(st["accepted"] >= 560, f"accepted {st}")
    proxy.close()
    proxy.close()  # idempotent
    echo.close()
    deadline = time.monotonic() + 2
    while (_fds() > fds0 or threading.active_count() > threads0) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    _check(_fds() <= fds0, f"fds after close: {fds0} -> {_fds()}")
    _check(threading.active_count() <= threads0,
           f"threads after close: {[t.name for t in threading.enumerate()]}")
    print(f"tcp_proxy selftest ok ({time.monotonic() - t_start:.2f}s)", flush=True)


def main(argv):
    if len(argv) >= 2 and argv[1] == "selftest":
        selftest()
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
