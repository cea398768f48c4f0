"""[tls] of the relay, seen from openssl s_client (issue 11).

1. Defaults: a client that offers TLS_AES_256_GCM_SHA384 first still gets TLS_AES_128_GCM_SHA256
   (the relay's order wins), the key exchange is X25519, TLS 1.2 is refused, and without
   user_session_tickets no ticket is issued.
2. user_session_tickets = true: the second connection resumes ("Reused"), and the app answers
   through the resumed session; after a relay restart (new ticket keys) the old ticket is refused
   and the handshake is full again.
3. user_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256": that is what every client gets.
"""
import os
import re
import subprocess
import sys
import time

import harness as h

SNI = "web.contoso.test"


def s_client(env, extra, sess_in=None, sess_out=None, data=b"ping\n"):
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{env.user_port}", "-servername", SNI,
            "-CAfile", env.pki.path("users-ca.crt"), "-verify_return_error", "-ign_eof"] + extra
    if sess_in:
        argv += ["-sess_in", sess_in]
    if sess_out:
        argv += ["-sess_out", sess_out]
    argv.remove("-ign_eof")
    # stdin stays open 1 s: the echo and the session ticket (after the handshake) arrive first.
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        p.stdin.write(data)
        p.stdin.flush()
        time.sleep(1.0)
        out, _ = p.communicate(timeout=20)  # closes stdin: s_client sends close_notify, exits
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return p.returncode, out.decode(errors="replace")


def field(out, pattern):
    m = re.search(pattern, out)
    return m.group(1) if m else None


def restart(env, topo, tls, n):
    """The relay again with [tls] = tls, on the same tunnel port (connectors dial it back)."""
    h.check(env.relay.stop() == 0, "relay stopped cleanly")
    port = env.tunnel_port
    topo.tls = tls
    base = h.Topology.to_toml
    topo.to_toml = lambda state_dir: base(topo, state_dir).replace(
        'tunnel_listen = "127.0.0.1:0"', f'tunnel_listen = "127.0.0.1:{port}"')
    os.unlink(env.stats_path)
    env.start_relay(topo, provision=False, name=f"relay{n}")
    env.wait_tunnels(1, timeout=20)


def body(env):
    _, port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.1:{port}")], connectors=("c1",),
                        workers=1, with_fabrikam=False)
    env.start_relay(topo)
    env.start_connector("c1")
    env.wait_tunnels(1)
    sess = os.path.join(env.dir, "sess.pem")

    # -- 1: defaults ----------------------------------------------------------------------
    rc, out = s_client(env, ["-ciphersuites", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"],
                       sess_out=sess)
    h.check(rc == 0 and "ping" in out,
            f"s_client through the relay echoes (rc {rc})")
    suite = field(out, r"Ciphersuite: (\S+)") or field(out, r"Cipher is (\S+)")
    h.check(suite == "TLS_AES_128_GCM_SHA256",
            f"a client preferring AES-256 gets {suite} (the relay's order: AES-128-GCM first)")
    tk = field(out, r"(?:Server|Peer) Temp Key: ([^,\n]+)")
    h.check(tk == "X25519", f"key exchange {tk}")
    rc, out = s_client(env, ["-tls1_2"])
    h.check(rc != 0 and field(out, r"Cipher\s*: (\S+)") == "0000",
            f"TLS 1.2 is refused (rc {rc}: {out[-400:]})")
    h.check(not os.path.exists(sess), "without user_session_tickets the relay issues no ticket "
                                      "(s_client had no session to save)")

    # -- 2: session tickets ---------------------------------------------------------------
    restart(env, topo, {"user_session_tickets": True, "ticket_key_rotation_s": 3600}, 2)
    rc, out = s_client(env, [], sess_out=sess)
    h.check(rc == 0 and "New, TLSv1.3" in out, "first connection: full handshake, ticket kept")
    rc, out = s_client(env, [], sess_in=sess)
    h.check(rc == 0 and "Reused, TLSv1.3" in out, "second connection resumes from the ticket")
    h.check(out.count("ping") >= 1, "the app answers through the resumed session")
    restart(env, topo, topo.tls, 3)
    rc, out = s_client(env, [], sess_in=sess)
    h.check(rc == 0 and "New, TLSv1.3" in out,
            "after a restart (new ticket keys) the old ticket gives a full handshake, not an error")

    # -- 3: configured suites -------------------------------------------------------------
    restart(env, topo, {"user_ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"}, 4)
    rc, out = s_client(env, [])
    suite = field(out, r"Ciphersuite: (\S+)") or field(out, r"Cipher is (\S+)")
    h.check(rc == 0 and suite == "TLS_CHACHA20_POLY1305_SHA256",
            f"user_ciphersuites = CHACHA20 only: negotiated {suite}")
    print("RESULT tls_settings: AES-128-GCM by the relay's order, X25519, TLS 1.2 refused, "
          "tickets resume only when on, CHACHA20 when configured")


if __name__ == "__main__":
    sys.exit(h.run_test("tls_settings", body))
