#!/usr/bin/env python3
"""The forwarding hop between relays (issue 13, item 4), with a real 3-member etcd cluster and
real relays on loopback. Both connectors of the group are pinned to relay A (pin_to_one_relay),
so relay B holds no tunnel for the app and must carry its users to A over mutual TLS (relay-CA
certificates), and A opens the streams on its own tunnels.

forward     Users through B: echo round trips of 1 KiB and 4 MiB are byte-exact, a load of
            requests through B fails none, a user aborting mid-transfer does not disturb the
            others; B counts streams_forwarded, A counts streams_forwarded_in, and B refuses
            nobody (streams_failed_no_connector and streams_failed_no_peer stay 0). Authorization
            stays on B: a user-cert app refuses a user without a certificate on B
            (streams_failed_not_allowed on B) and A sees no forwarded stream for it.
peer        A peer's view of the hop, with a certificate the test issues from the fleet's relay
            CA (read from etcd): on A, a valid header is answered "OK"; an unknown app, a
            malformed header and an over-long header get "ERR ..." and A keeps serving; on B
            (no tunnel) a forwarded stream is refused "ERR no connector available" - it is never
            forwarded a second time. A relay-CA certificate that is not a peer's (wrong common
            name) is closed without an answer.
partition   Three relays: c1 pinned to A, c2 to B, none on C, so C forwards every user to A or
            B (both receive some). B reaches etcd only through TCP fault proxies, which the test
            cuts: once B's lease expires (TTL 4 s + 3 s) C forwards only to A - B's
            streams_forwarded_in stops growing while C's users go on with zero failures. After
            healing, B announces its tunnel again and C forwards to it again.
no_peer     SIGKILL relay A, the only holder: a user on B is refused quickly (within 3 s, while
            A's presence has not expired yet) with streams_failed_no_peer counted on B; once A's
            lease expires (TTL 4 s) B has no peer for the group and refuses as a lone relay
            would (streams_failed_no_connector).
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402
from fleet import (WEB_SNI as SNI, FleetRelay, RequestLog, echo_through,  # noqa: E402
                   pin_to_one_relay, publish_web, run_tests)
from tcp_proxy import TcpProxy  # noqa: E402

TTL = 4
PREFIX = "/apprelay/"


def world(env, etcd):
    """Relays A and B; connectors c1 and c2 of group Default both on A only."""
    a = FleetRelay(env, "relay-a", etcd.endpoints, lease_ttl_s=TTL).start()
    b = FleetRelay(env, "relay-b", etcd.endpoints, lease_ttl_s=TTL).start()
    publish_web(env, a)
    a.use()
    for cid in ("c1", "c2"):
        env.enroll(cid)
        pin_to_one_relay(env, cid)
        env.start_connector(cid)
    h.wait_until(lambda: a.tunnels_up() >= 2, 20, "A holds both tunnels")
    h.check(b.tunnels_up() == 0, "B holds no tunnel")

    def b_knows():
        # B's connectors list shows where each tunnel lands (presence): both on relay-a.
        cs = b.ctl_json("connectors", "list")["connectors"]
        return len(cs) == 2 and all(c.get("relays") == ["relay-a"] for c in cs)
    h.wait_until(b_knows, 10, "B sees both connectors' tunnels on relay-a")
    return a, b


def test_forward(env):
    with EtcdCluster(3) as etcd:
        a, b = world(env, etcd)
        echo_through(env, b.user_port, nbytes=1024, seed=1)
        echo_through(env, b.user_port, nbytes=4 * 1024 * 1024, seed=2)
        # A user that leaves mid-transfer: only its stream ends.
        c = h.UserClient(b.user_port, SNI, env.pki.path("users-ca.crt"), timeout=10.0)
        c.send_all(h.pattern(256 * 1024, seed=3))
        c.abort()
        load = RequestLog(env, [b.user_port], SNI, env.pki.path("users-ca.crt"),
                          interval=0.005, limit=200).start()
        time.sleep(3)
        load.finish("users through B (forwarded to A)", 20)
        h.wait_until(lambda: b.counter("streams_forwarded") >= 22, 5,
                     "B counts its forwarded streams")
        h.wait_until(lambda: a.counter("streams_forwarded_in") >= 22, 5,
                     "A counts the streams forwarded to it")
        for name in ("streams_failed_no_connector", "streams_failed_no_peer",
                     "peer_link_failures"):
            h.check(b.counter(name) == 0, f"B: {name} = {b.counter(name)}")
        h.check(a.counter("peer_in_refused") == 0,
                f"A refused no peer: {a.counter('peer_in_refused')}")

        # Authorization stays on the user's relay.
        env.pki.ca("employees-ca", "contoso employees")
        crt, key = env.pki.leaf("app-hr", "users-ca", "hr.contoso.test",
                                dns=["hr.contoso.test"], usage="serverAuth")
        _, port = env.start_backend("echo", name="hr-backend")
        a.ctl("apps", "create", "hr", "--backend", f"127.0.0.1:{port}", "--hostname",
              "hr.contoso.test", "--cert", env.pki.path(crt), "--key", env.pki.path(key),
              "--access", "user-cert", "--allow-group", "hr")
        in0 = a.counter("streams_forwarded_in")
        # A handshake that succeeds means B has the app (and then refuses the stream itself).
        h.wait_until(lambda: h.tls_handshake_error(b.user_port, "hr.contoso.test",
                                                   env.pki.path("users-ca.crt")) is None,
                     5, "B has the hr app")
        h.wait_until(lambda: b.counter("streams_failed_not_allowed") >= 1, 5,
                     "B refused that user (no certificate)")
        denied0 = b.counter("streams_failed_not_allowed")
        try:
            u = h.UserClient(b.user_port, "hr.contoso.test", env.pki.path("users-ca.crt"),
                             timeout=5.0)
            try:
                u.send_all(b"x" * 16)
                got = u.read_some(wait=2.0)
                h.check(not got, f"no bytes for a user without a certificate: {got!r}")
            finally:
                u.close()
        except (OSError, ssl.SSLError, h.TestFailure) as e:
            h.log(f"user without certificate cut as expected: {type(e).__name__}: {e}")
        h.wait_until(lambda: b.counter("streams_failed_not_allowed") > denied0, 5,
                     "B refused the user itself")
        time.sleep(1.5)  # the stats file is rewritten every second
        h.check(a.counter("streams_forwarded_in") == in0,
                "nothing was forwarded for the refused user")


def relay_ca(etcd):
    return json.loads(etcd.ctl_any(["get", PREFIX + "relay/ca", "--print-value-only"]))


def peer_cert(env, ca, cn):
    """A certificate from the relay CA (client use), as relays issue themselves."""
    d = os.path.join(env.dir, "peer-pki")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ca.crt"), "w") as f:
        f.write(ca["cert"])
    with open(os.path.join(d, "ca.key"), "w") as f:
        f.write(ca["key"])
    name = cn.replace(" ", "_")
    key, csr, crt = (os.path.join(d, f"{name}.{x}") for x in ("key", "csr", "crt"))
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=DNS:apprelay-peer\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
                    "-subj", f"/CN={cn}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(d, "ca.crt"),
                    "-CAkey", os.path.join(d, "ca.key"), "-CAcreateserial", "-days", "2",
                    "-extfile", ext, "-out", crt], check=True, capture_output=True)
    return crt, key, os.path.join(d, "ca.crt")


def peer_exchange(port, cert, lines, timeout=5.0):
    """Connects to a relay's tunnel listener as a peer, sends `lines`, returns the first answer
    line (b"" if the relay closed without one)."""
    crt, key, ca = cert
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(crt, key)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="apprelay-peer") as s:
            s.settimeout(timeout)
            s.sendall(lines)
            buf = b""
            try:
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            except (ssl.SSLError, ConnectionResetError) as e:
                h.log(f"peer connection ended: {type(e).__name__}: {e}")
            return buf.split(b"\n", 1)[0] if b"\n" in buf else b""


def test_peer(env):
    with EtcdCluster(3) as etcd:
        a, b = world(env, etcd)
        ca = relay_ca(etcd)
        good = peer_cert(env, ca, "apprelay-peer test")
        bad = peer_cert(env, ca, "not-a-peer")
        ans = peer_exchange(a.tunnel_port, good, f"APPRELAY-FWD/1 {SNI} alice\n".encode())
        h.check(ans == b"OK", f"A opens a forwarded stream: {ans!r}")
        ans = peer_exchange(a.tunnel_port, good, b"APPRELAY-FWD/1 nope.contoso.test alice\n")
        h.check(ans == b"ERR unknown application", f"unknown app: {ans!r}")
        ans = peer_exchange(a.tunnel_port, good, b"GET / HTTP/1.1\n")
        h.check(ans == b"ERR malformed header", f"malformed header: {ans!r}")
        ans = peer_exchange(a.tunnel_port, good, b"A" * 4096)
        h.check(ans == b"ERR header line too long", f"over-long header: {ans!r}")
        ans = peer_exchange(b.tunnel_port, good, f"APPRELAY-FWD/1 {SNI} alice\n".encode())
        h.check(ans == b"ERR no connector available",
                f"B never forwards a forwarded stream: {ans!r}")
        h.check(b.counter("streams_forwarded") == 0, "B forwarded nothing")
        try:
            ans = peer_exchange(a.tunnel_port, bad, f"APPRELAY-FWD/1 {SNI} alice\n".encode())
        except (OSError, ssl.SSLError) as e:
            ans = b""
            h.log(f"non-peer certificate refused: {type(e).__name__}: {e}")
        h.check(ans == b"", f"a relay-CA certificate that is not a peer's gets nothing: {ans!r}")
        h.wait_until(lambda: a.counter("peer_in_refused") >= 3, 5, "A counted its 3 refusals")
        h.wait_until(lambda: a.counter("tunnel_unknown_connector") >= 1, 5,
                     "A counted the non-peer certificate")
        echo_through(env, b.user_port, nbytes=64 * 1024, seed=7)  # the hop still works


def test_partition(env):
    with EtcdCluster(3) as etcd:
        proxies = [TcpProxy("127.0.0.1", int(e.rsplit(":", 1)[1]), name=f"etcd{i}").start()
                   for i, e in enumerate(etcd.endpoints)]
        try:
            a = FleetRelay(env, "relay-a", etcd.endpoints, lease_ttl_s=TTL).start()
            b = FleetRelay(env, "relay-b", [p.address for p in proxies], lease_ttl_s=TTL).start()
            c = FleetRelay(env, "relay-c", etcd.endpoints, lease_ttl_s=TTL).start()
            publish_web(env, a)
            for cid, r in (("c1", a), ("c2", b)):
                r.use()
                env.enroll(cid)
                pin_to_one_relay(env, cid)
                env.start_connector(cid)
            for r in (a, b):
                h.wait_until(lambda r=r: r.tunnels_up() >= 1, 20, f"{r.name} holds a tunnel")

            def holders():
                cs = c.ctl_json("connectors", "list")["connectors"]
                return sorted(n for x in cs for n in (x.get("relays") or []))
            h.wait_until(lambda: holders() == ["relay-a", "relay-b"], 10,
                         "C sees the tunnels on A and B")
            ca = env.pki.path("users-ca.crt")
            first = RequestLog(env, [c.user_port], SNI, ca, interval=0.005, limit=60).start()
            h.wait_until(lambda: len(first.outcomes) >= 60, 30, "60 requests through C")
            first.finish("users through C (forwarded to A and B)", 60)
            h.wait_until(lambda: a.counter("streams_forwarded_in") > 0 and
                         b.counter("streams_forwarded_in") > 0, 5, "both A and B took some")

            load = RequestLog(env, [c.user_port], SNI, ca, interval=0.01).start()
            for p in proxies:
                p.cut()
            h.log("relay-b cut off from etcd")
            h.wait_until(lambda: holders() == ["relay-a"], TTL + 3,
                         "B's presence expires on C")
            time.sleep(1.5)  # C's snapshot follows within its next tick; stats every second
            b0, a0 = b.counter("streams_forwarded_in"), a.counter("streams_forwarded_in")
            time.sleep(3)
            time.sleep(1.5)
            h.check(b.counter("streams_forwarded_in") == b0,
                    f"no stream forwarded to the partitioned relay "
                    f"({b.counter('streams_forwarded_in')} vs {b0})")
            h.check(a.counter("streams_forwarded_in") > a0, "A took C's users meanwhile")
            for p in proxies:
                p.heal()
            h.log("healed")
            h.wait_until(lambda: holders() == ["relay-a", "relay-b"], 15,
                         "B's tunnel announced again")
            b1 = b.counter("streams_forwarded_in")
            h.wait_until(lambda: b.counter("streams_forwarded_in") > b1, 10,
                         "C forwards to B again")
            load.finish("users through C during the partition", 50)
        finally:
            for p in proxies:
                p.close()


def test_no_peer(env):
    with EtcdCluster(3) as etcd:
        a, b = world(env, etcd)
        echo_through(env, b.user_port, nbytes=1024, seed=1)
        a.stop(sig=9)
        t0 = time.monotonic()
        try:
            echo_through(env, b.user_port, nbytes=1024, seed=2)
            raise h.TestFailure("a user on B was served with no relay holding a tunnel")
        except h.TestFailure:
            raise
        except Exception as e:  # noqa: BLE001 - the refusal is the expected outcome
            h.log(f"refused after {time.monotonic() - t0:.2f} s: {type(e).__name__}: {e}")
        h.check(time.monotonic() - t0 < 3.0, "the refusal is quick")
        h.wait_until(lambda: b.counter("streams_failed_no_peer") >= 1, 3,
                     "B counted the refusal (no reachable peer)")
        h.wait_until(lambda: not any(c.get("relays") for c in
                                     b.ctl_json("connectors", "list")["connectors"]),
                     TTL + 4, "A's presence expired")
        nc0 = b.counter("streams_failed_no_connector")

        def refused_as_lone_relay():
            # B's routing snapshot follows presence on its next control tick (about 1 s).
            try:
                echo_through(env, b.user_port, nbytes=1024, seed=3)
                raise h.TestFailure("a user on B was served with no relay holding a tunnel")
            except h.TestFailure:
                raise
            except Exception:  # noqa: BLE001 - refused, as expected; which refusal is counted
                pass
            return b.counter("streams_failed_no_connector") > nc0
        h.wait_until(refused_as_lone_relay, 8, "without peers B refuses as a lone relay would",
                     interval=0.5)


if __name__ == "__main__":
    sys.exit(run_tests({"forward": test_forward, "peer": test_peer, "partition": test_partition,
                        "no_peer": test_no_peer}))
