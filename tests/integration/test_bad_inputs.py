#!/usr/bin/env python3
"""Bad inputs are refused with the documented outcome and counter, and touch nothing else.

Checks, while one good echo stream through connector c1 stays open the whole time:
  - unknown SNI -> the TLS handshake fails (alert unrecognized_name), user_unknown_sni counts;
  - plaintext to the user TLS port -> connection closed, user_tls_failed counts;
  - a connector cert from another tenant's CA (fabrikam, claiming id c1) and one from a CA no
    tenant configured -> refused (tunnel_cert_rejected / tunnel_unknown_connector /
    tunnel_tls_failed), never counted as a tunnel of c1;
  - a fake connector with c1's valid cert sending a bogus frame header after TLS -> its
    connection is closed, tunnel_protocol_errors counts;
  - the good stream moves 1 MiB byte-exact after each of these, and a new stream works."""
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MiB = h.MiB
REFUSED = ["tunnel_cert_rejected", "tunnel_unknown_connector", "tunnel_tls_failed",
           "tunnel_protocol_errors"]


def good_stream_works(env, c, what, seed):
    data = h.pattern(1 * MiB, seed=seed)
    got = bytearray()
    c.transfer(data, expect=len(data), timeout=60, verify=lambda off, b: got.extend(b))
    h.check(bytes(got) == data, f"good stream still byte-exact (1 MiB) after {what}")


def wait_closed(sock, timeout):
    """Read until the peer closes; return how (eof / reset / alert text)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            b = sock.recv(65536)
        except ssl.SSLError as e:
            return f"TLS error {e.reason or e}"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            return None
        if not b:
            return "eof"
    return None


def body(env):
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}")],
                        workers=2)
    env.start_relay(topo)
    env.start_connector("c1")
    env.wait_tunnels(2, connector="c1")
    ca = env.pki.path("users-ca.crt")
    good = h.UserClient(env.user_port, "web.contoso.test", ca)
    good_stream_works(env, good, "start", 1)

    # 1. Unknown SNI.
    n0 = env.counter("user_unknown_sni")
    err = h.tls_handshake_error(env.user_port, "nope.contoso.test", ca)
    h.check(err is not None, f"unknown SNI: handshake fails ({err})")
    if "UNRECOGNIZED_NAME" not in (err or "").upper():
        print(f"  note: expected alert unrecognized_name, got: {err}")
    h.check("UNRECOGNIZED_NAME" in (err or "").upper(), "unknown SNI: alert unrecognized_name")
    env.wait_counter("user_unknown_sni", n0 + 1)
    h.check(True, f"user_unknown_sni {n0} -> {env.counter('user_unknown_sni')}")
    good_stream_works(env, good, "unknown SNI", 2)

    # 2. Plaintext to the TLS port.
    n0 = env.counter("user_tls_failed")
    s = socket.create_connection(("127.0.0.1", env.user_port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: web.contoso.test\r\n\r\n")
    how = wait_closed(s, 15)
    s.close()
    h.check(how is not None, f"plaintext to the user port: connection closed ({how})")
    env.wait_counter("user_tls_failed", n0 + 1)
    h.check(True, f"user_tls_failed {n0} -> {env.counter('user_tls_failed')}")
    good_stream_works(env, good, "plaintext on the user port", 3)

    # 3. Connector certs from the wrong CA, and another tenant's (fabrikam) valid connector
    # certificate claiming contoso's c1 in HELLO.
    c1_id = env.connector_ids["c1"]
    f1_dir = os.path.join(env.dir, "conn-f1")
    for cert, key, what in [
            (os.path.join(f1_dir, "cert.pem"), os.path.join(f1_dir, "key.pem"),
             "another tenant's connector (fabrikam f1) claiming c1's id"),
            ("rogue-ext.crt", "rogue-ext.key", "an unconfigured CA claiming id c1")]:
        r0 = sum(env.counter(n) for n in REFUSED)
        p = env.start_connector("c1", cert=cert, key=key, claim_id=c1_id,
                                name=f"rogue-{os.path.basename(key)}")
        total = env.wait_counters_sum(REFUSED, r0 + 1, timeout=15)
        st = env.stats()
        h.check(st.get("connectors", {}).get("c1", {}).get("tunnels") == 2,
                f"connector cert from {what}: refused ({' + '.join(REFUSED)} {r0} -> {total}); "
                f"c1 still has exactly its 2 tunnels")
        p.stop()
        good_stream_works(env, good, f"a connector cert from {what}", 4)

    # 4. Malformed frame from a fake connector holding a valid connector cert.
    p0 = env.counter("tunnel_protocol_errors")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(env.relay_ca_path())
    c1_dir = os.path.join(env.dir, "conn-c1")
    ctx.load_cert_chain(os.path.join(c1_dir, "cert.pem"), os.path.join(c1_dir, "key.pem"))
    raw = socket.create_connection(("127.0.0.1", env.tunnel_port), timeout=10)
    fake = ctx.wrap_socket(raw, server_hostname=h.RELAY_SERVER_NAME)
    h.check(True, f"fake connector: mutual TLS established ({fake.version()})")
    # All-ones header: unknown type, reserved flags set, and a length far beyond the 1 MiB cap,
    # whatever the exact field layout; the relay must close this tunnel without allocating.
    fake.sendall(b"\xff" * 32)
    how = wait_closed(fake, 15)
    fake.close()
    h.check(how is not None, f"malformed frame: fake tunnel closed by the relay ({how})")
    env.wait_counter("tunnel_protocol_errors", p0 + 1)
    h.check(True, f"tunnel_protocol_errors {p0} -> {env.counter('tunnel_protocol_errors')}")
    good_stream_works(env, good, "a malformed frame on another tunnel", 5)
    st = env.wait_tunnels(2, connector="c1")

    # The good stream ends cleanly; a fresh stream works too.
    secs, _ = h.echo_roundtrip(good, b"", half_close=True, timeout=30)
    good.close()
    h.check(good.closed_notify, "good stream half-closed and ended with close_notify")
    c = h.UserClient(env.user_port, "web.contoso.test", ca)
    h.echo_roundtrip(c, h.pattern(MiB, seed=6), half_close=True, timeout=60)
    c.close()
    h.check(True, "a new stream after all bad inputs: 1 MiB byte-exact")
    h.check(env.relay.alive(), "relay alive")


if __name__ == "__main__":
    sys.exit(h.run_test("bad_inputs", body))
