"""Helpers shared by the connector-group scenario tests (test_groups_*.py); not a test itself.

- site backends on distinct loopback addresses (127.0.0.2, 127.0.0.3, ...) standing for sites;
- per-connector stats (the connector's own --stats-file: streams_opened ...);
- relay / connector log parsing (logfmt, one event per line);
- a network namespace with a connector inside it that reaches the relay through a forwarder whose
  listening socket lives in the namespace (loopback only on both sides, no veth, no routes)."""
import ctypes
import os
import socket
import ssl
import subprocess
import threading
import time

import harness as h


# -------------------------------------------------------------------------------- backends

def start_site_backend(env, host, name, mode="echo", netns=None):
    """An apprelay-testbackend listening on HOST:0 (optionally inside a netns); returns port."""
    ready = os.path.join(env.dir, f"{name}.ready")
    argv = [h.BACKEND_BIN, "--listen", f"{host}:0", "--mode", mode, "--ready-file", ready,
            "--threads", "1"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    p = env.start(name, argv)
    return p, env.wait_ready(p, ready)["port"]


# -------------------------------------------------------------------------------- stats

def conn_stats_path(env, cid):
    return os.path.join(env.dir, f"connector-{cid}-stats.json")


def conn_counters(env, cid):
    try:
        return h.read_json_file(conn_stats_path(env, cid)).get("counters", {})
    except (OSError, ValueError):
        return {}


def conn_counter(env, cid, name):
    return int(conn_counters(env, cid).get(name, 0))


def opened(env, cids):
    """streams_opened of each connector (its own stats file), as a dict."""
    return {c: conn_counter(env, c, "streams_opened") for c in cids}


def wait_opened_total(env, cids, total, timeout=5.0):
    """Connector stats files are rewritten every 200 ms: wait until they add up to `total`
    (or more), then give the settled values (read twice 300 ms apart)."""
    h.wait_until(lambda: sum(opened(env, cids).values()) >= total, timeout,
                 f"streams_opened of {list(cids)} to add up to {total} (now {opened(env, cids)})")
    time.sleep(0.3)
    return opened(env, cids)


def relay_tunnels_of(env, cid):
    try:
        return env.stats().get("connectors", {}).get(cid, {}).get("tunnels", 0)
    except (OSError, ValueError):
        return 0


# -------------------------------------------------------------------------------- logs

def parse_logfmt(line):
    out = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        j = line.find("=", i)
        if j < 0:
            break
        key = line[i:j]
        i = j + 1
        if i < n and line[i] == '"':
            i += 1
            val = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(line[i])
                i += 1
            i += 1
            out[key] = "".join(val)
        else:
            j = line.find(" ", i)
            j = n if j < 0 else j
            out[key] = line[i:j]
            i = j
    return out


def events(text, name, **match):
    """Log events named `name` whose fields equal every `match` value."""
    found = []
    for line in text.splitlines():
        if f"event={name}" not in line:
            continue
        ev = parse_logfmt(line)
        if ev.get("event") == name and all(ev.get(k) == str(v) for k, v in match.items()):
            found.append(ev)
    return found


# -------------------------------------------------------------------------------- streams

def echo_ok(env, sni, n=16 * 1024, seed=1, timeout=15):
    """One fresh stream: n bytes echoed byte-exact and a clean close_notify. Returns True/False
    (the error text is logged)."""
    try:
        c = h.UserClient(env.user_port, sni, env.pki.path("users-ca.crt"), timeout=timeout)
        h.echo_roundtrip(c, h.pattern(n, seed=seed), half_close=True, timeout=timeout)
        ok = c.closed_notify
        c.close()
        return ok
    except (h.TestFailure, ssl.SSLError, OSError, TimeoutError) as e:
        h.log(f"stream to {sni} failed: {type(e).__name__}: {e}")
        return False


def count_ok(env, sni, n_streams, nbytes=4096):
    return sum(1 for i in range(n_streams) if echo_ok(env, sni, nbytes, seed=i % 251))


class PacedEcho:
    """One long echo stream driven step by step by the test (single-threaded): each step sends
    one chunk and reads its echo back. outcome(): 'ok' (every byte back + close_notify), 'reset'
    (error / TCP close without close_notify) or 'clean-short' (close_notify before all bytes:
    the forbidden outcome)."""

    def __init__(self, env, sni, total, chunk=256 * 1024, seed=3):
        self.data = h.pattern(total, seed=seed)
        self.chunk = chunk
        self.sent = 0
        self.got = bytearray()
        self.c = h.UserClient(env.user_port, sni, env.pki.path("users-ca.crt"))
        self.error = None

    def step(self, timeout=20):
        """Send the next chunk, read its echo. False once the stream broke or is done."""
        if self.error or self.sent >= len(self.data):
            return False
        part = self.data[self.sent:self.sent + self.chunk]
        try:
            self.c.transfer(part, expect=len(part), timeout=timeout,
                            verify=lambda off, b: self.got.extend(b))
        except (h.TestFailure, ssl.SSLError, OSError, TimeoutError) as e:
            self.error = f"{type(e).__name__}: {e}"
            return False
        self.sent += len(part)
        if self.c.closed_notify:
            self.error = "close_notify mid-stream"
            return False
        return True

    def finish(self, timeout=60):
        """Send the rest, half-close, read until close_notify. Returns the outcome."""
        while self.step():
            pass
        if self.error is None:
            try:
                self.c.transfer(b"", expect=0, timeout=timeout, half_close=True,
                                until_close=True, verify=lambda off, b: self.got.extend(b))
            except (h.TestFailure, ssl.SSLError, OSError, TimeoutError) as e:
                self.error = f"{type(e).__name__}: {e}"
        return self.outcome()

    def outcome(self):
        if self.error is None and self.c.closed_notify and bytes(self.got) == self.data:
            return "ok"
        if self.c.closed_notify and len(self.got) < len(self.data):
            return "clean-short"
        if self.error is not None:
            return "reset"
        return "corrupt"

    def close(self):
        try:
            self.c.abort()
        except OSError:
            pass


# -------------------------------------------------------------------------------- netns

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def netns_supported():
    if os.geteuid() != 0:
        return False, "not root"
    name = f"aprchk{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return False, f"ip netns add: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True, ""


class NetNS:
    """A network namespace with only its own loopback (up). A forwarder listens INSIDE it on
    127.0.0.1 and carries each connection to 127.0.0.1:<target> of the root namespace, so a
    connector inside reaches the relay while nothing else of the root namespace is reachable."""

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if r.returncode != 0:
            raise h.TestFailure(f"ip netns add {name}: {r.stderr.strip()}")
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        self._socks = []
        self._stop = False

    def listen_inside(self):
        """A listening TCP socket on 127.0.0.1:0 created inside the namespace (setns on this
        thread only, then back)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise h.TestFailure(f"setns: errno {ctypes.get_errno()}")
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", 0))
                s.listen(64)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    raise h.TestFailure(f"setns back: errno {ctypes.get_errno()}")
        finally:
            os.close(own)
            os.close(target)
        self._socks.append(s)
        return s

    def forward(self, target_port):
        """Forwarder: inside 127.0.0.1:P -> root 127.0.0.1:target_port. Returns P."""
        ls = self.listen_inside()

        def pump(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        b.shutdown(socket.SHUT_WR)
                        return
                    b.sendall(d)
            except OSError:
                for x in (a, b):
                    try:
                        x.close()
                    except OSError:
                        pass

        def accept_loop():
            while not self._stop:
                try:
                    a, _ = ls.accept()
                except OSError:
                    return
                try:
                    b = socket.create_connection(("127.0.0.1", target_port), timeout=5)
                    b.settimeout(None)
                except OSError:
                    a.close()
                    continue
                self._socks += [a, b]
                threading.Thread(target=pump, args=(a, b), daemon=True).start()
                threading.Thread(target=pump, args=(b, a), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        return ls.getsockname()[1]

    def start_connector(self, env, cid, relay_port, extra=()):
        """Runs enrolled connector `cid` inside the namespace, dialing the forwarder."""
        state = os.path.join(env.dir, f"conn-{cid}")
        stats = conn_stats_path(env, cid)
        argv = ["ip", "netns", "exec", self.name, h.CONNECTOR_BIN, "run",
                "--relay", f"127.0.0.1:{relay_port}",
                "--cert", os.path.join(state, "cert.pem"), "--key", os.path.join(state, "key.pem"),
                "--ca", os.path.join(state, "ca.pem"), "--id", env.connector_ids[cid],
                "--server-name", h.RELAY_SERVER_NAME, "--stats-file", stats,
                "--log-level", "info"] + list(extra)
        return env.start(f"connector-{cid}", argv)

    def close(self):
        self._stop = True
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

