#!/usr/bin/env python3
"""The fleet store (issue 13): relays sharing one etcd prefix, with a real 3-member etcd cluster
on loopback and real relays, connectors and users.

shared      Two relays (A, B). An app created on A and connectors enrolled at A and at B (each pinned to that relay): B's
            config_version reaches A's within 3 s; users get echoes through both relays (each
            relay holds its own connector's tunnel); `connectors list` on either relay shows both
            connectors active (presence aggregated across relays, liveness never written per
            PING); `status` shows the etcd store, not stale, lease held. After SIGTERM of B, c2
            shows inactive on A within 3 s (B revoked its lease on the way out).
redeem      One token redeemed 1,000 times in parallel, half at A's enrollment listener and half
            at B's: exactly one success, every other answer "token already used", one connector
            recorded.
quorum      Two of three etcd members killed for 60 s under a user load through A: every user
            request succeeds (zero failed), admin writes answer 503 within 3 s each, status
            shows stale within 5 s and the routing (config_version) does not change. After
            healing, an admin write succeeds within 10 s, stale clears, and a new app created on
            A is routed by B.
failover    Under a user load, kill an etcd follower, then the leader: zero failed user
            requests, and an admin write succeeds within 3 s of each kill.
"""
import concurrent.futures
import json
import os
import signal
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



def world(env, etcd, relays=("relay-a", "relay-b"), lease_ttl_s=4):
    """Relays on one etcd prefix, echo backend, app `web` (created on the first relay), a
    connector enrolled at each relay and running. Returns (relays, connector procs)."""
    rs = [FleetRelay(env, name, etcd.endpoints, lease_ttl_s=lease_ttl_s).start()
          for name in relays]
    publish_web(env, rs[0])
    conns = []
    for i, r in enumerate(rs):
        r.use()
        cid = f"c{i + 1}"
        env.enroll(cid)
        pin_to_one_relay(env, cid)  # c1 on A only, c2 on B only: presence per relay
        conns.append(env.start_connector(cid))
    for r in rs:
        h.wait_until(lambda r=r: r.tunnels_up() >= 1, 20, f"{r.name} holds a tunnel")
    want = rs[0].config_version()
    for r in rs:
        h.wait_until(lambda r=r: r.config_version() >= want, 5, f"{r.name} at version {want}")
    return rs, conns


def statuses(relay):
    return {c["name"]: c["status"] for c in relay.ctl_json("connectors", "list")["connectors"]}


def test_shared(env):
    with EtcdCluster(3) as etcd:
        (a, b), conns = world(env, etcd)
        t0 = time.monotonic()
        h.wait_until(lambda: b.config_version() == a.config_version(), 3,
                     "relay-b at relay-a's config_version")
        h.log(f"versions converge in {time.monotonic() - t0:.2f} s: {a.config_version()}")
        for r in (a, b):
            echo_through(env, r.user_port)
        for r in (a, b):
            h.wait_until(lambda r=r: statuses(r) == {"c1": "active", "c2": "active"}, 5,
                         f"{r.name} lists c1 and c2 active")
        st = a.ctl_json("status")
        h.check(st["store"]["kind"] == "etcd" and st["store"]["stale"] is False and
                st["store"]["lease_held"] is True and st["config_stale"] is False,
                f"status shows a current etcd store: {st['store']}")
        # Liveness PINGs stay local: a quiet minute of PINGs moves the etcd revision only by
        # the periodic last_seen refresh, not per PING (checked as a bound over 3 s).
        rev0 = etcd.revision()
        time.sleep(3)
        moved = etcd.revision() - rev0
        # 2 tunnels PING every second: per-PING writes would move it by 6 or more.
        h.check(moved <= 4, f"etcd revision moved by {moved} in 3 s of idle tunnels")
        b.stop()
        h.wait_until(lambda: statuses(a).get("c2") == "inactive", 3,
                     "c2 inactive on relay-a once relay-b left")
        h.check(statuses(a).get("c1") == "active", "c1 still active")


def make_csr(env):
    key = os.path.join(env.dir, "redeem.key")
    csr = os.path.join(env.dir, "redeem.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr, "-subj",
                    "/CN=redeem"], check=True, capture_output=True)
    with open(csr) as f:
        return f.read()


def redeem(port, token, csr, deadline_s=60.0):
    """One redemption: enrollment requests (PROTOCOL.md) until a definitive answer; "busy" (the
    enrollment listener shedding load) is retried after a pause. The answer as a dict."""
    end = time.monotonic() + deadline_s
    while True:
        answer = redeem_once(port, token, csr)
        if answer.get("error") != "busy" or time.monotonic() > end:
            return answer
        time.sleep(0.02)


def redeem_once(port, token, csr):
    """One enrollment request (PROTOCOL.md); the relay's answer as a dict."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the answer's content is what this test checks
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    req = json.dumps({"token": token, "csr_pem": csr, "name": "redeem", "version": "0.1.0"})
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with ctx.wrap_socket(s) as t:
            t.sendall(req.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = t.recv(65536)
                if not chunk:
                    break
                buf += chunk
    return json.loads(buf)


def test_redeem(env):
    with EtcdCluster(3) as etcd:
        a = FleetRelay(env, "relay-a", etcd.endpoints).start()
        b = FleetRelay(env, "relay-b", etcd.endpoints).start()
        a.ctl("groups", "create", "G1")
        token = a.ctl("tokens", "create", "--group", "G1")[1].strip()
        csr = make_csr(env)
        ports = [a.info["enroll_port"], b.info["enroll_port"]]
        n = 1000
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda i: redeem(ports[i % 2], token, csr), range(n)))
        secs = time.monotonic() - t0
        ok = [x for x in answers if x.get("ok")]
        used = [x for x in answers if x.get("error") == "token already used"]
        other = [x for x in answers if not x.get("ok") and x.get("error") != "token already used"]
        h.log(f"{n} redemptions in {secs:.1f} s: {len(ok)} ok, {len(used)} already used, "
              f"{len(other)} other {other[:3]}")
        h.check(len(ok) == 1, f"exactly one redemption succeeds (got {len(ok)})")
        h.check(len(used) == n - 1, f"every other one is 'token already used' ({other[:3]})")
        conns = a.ctl_json("connectors", "list")["connectors"]
        h.check(len(conns) == 1 and conns[0]["group"] == "G1",
                f"one connector recorded in G1: {conns}")
        # A burst of 40 registrations at one relay, past its enrollment rate (20/s): the
        # listener answers "busy" to some, and `apprelay-connector register` tries again.
        tokens = [a.ctl("tokens", "create")[1].strip() for _ in range(40)]
        a.use()
        busy0 = a.log_text().count("busy")

        def register(i):
            return subprocess.run([h.CONNECTOR_BIN, "register", "--relay",
                                   f"127.0.0.1:{a.info['enroll_port']}", "--token", tokens[i],
                                   "--state-dir", os.path.join(env.dir, f"burst-{i}"),
                                   "--name", f"burst-{i}"],
                                  capture_output=True, text=True, timeout=60)
        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            runs = list(pool.map(register, range(40)))
        bad = [r.stderr.strip() for r in runs if r.returncode != 0]
        h.check(not bad, f"all 40 registrations of the burst succeed: {bad[:3]}")
        busy = a.log_text().count("busy") - busy0
        h.log(f"burst: 40 registered; {busy} busy refusals on the way were retried")


def timed_ctl(relay, *args, expect_rc=None):
    t0 = time.monotonic()
    rc, out, err = relay.ctl(*args, expect_rc=expect_rc)
    return rc, out + err, time.monotonic() - t0


def test_quorum(env):
    with EtcdCluster(3) as etcd:
        (a, b), conns = world(env, etcd)
        load = RequestLog(env, [a.user_port, b.user_port], SNI, env.pki.path("users-ca.crt"),
                          interval=0.02).start()
        time.sleep(1)
        version = a.config_version()
        killed = [i for i in range(3) if i != etcd.leader()][:1] + [etcd.leader()]
        for i in killed:
            etcd.kill(i)
        h.log(f"killed etcd members {killed}: no quorum")
        h.wait_until(lambda: a.store_health().get("stale") is True, 5, "relay-a reports stale")
        outage_end = time.monotonic() + 60
        writes = 0
        while time.monotonic() < outage_end:
            t0 = time.monotonic()
            status, body = a.admin("POST", "/v1/tenants/contoso/groups", {"name": f"g{writes}"})
            secs = time.monotonic() - t0
            h.check(status == 503 and body["error"].startswith("store unavailable"),
                    f"admin write refused with 503 during the outage: {status} {body}")
            h.check(secs < 3.0, f"the refusal took {secs:.2f} s (bound 3 s)")
            rc, text, _ = timed_ctl(a, "groups", "create", f"g{writes}", expect_rc=None)
            h.check(rc != 0 and "store unavailable" in text,
                    f"apprelayctl names the cause: rc {rc}: {text.strip()}")
            h.check(a.config_version() == version and b.config_version() == version,
                    "routing (config_version) unchanged while etcd has no quorum")
            writes += 1
            time.sleep(5)
        st = a.ctl_json("status")
        h.check(st["config_stale"] is True and st["store"]["stale_s"] > 30,
                f"status shows the copy stale for over 30 s: {st['store']}")
        for i in killed:
            etcd.restart(i)
        t0 = time.monotonic()
        h.wait_until(lambda: a.ctl("groups", "create", "after-heal", expect_rc=None)[0] == 0,
                     10, "an admin write succeeds after healing")
        h.log(f"admin writes resume {time.monotonic() - t0:.2f} s after healing")
        h.wait_until(lambda: not a.store_health().get("stale", True) and
                     not b.store_health().get("stale", True), 10, "stale clears on both relays")
        h.wait_until(lambda: b.config_version() == a.config_version(), 5, "versions converge")
        load.finish("user load during the outage", 101)


def test_failover(env):
    with EtcdCluster(3) as etcd:
        (a, b), conns = world(env, etcd)
        load = RequestLog(env, [a.user_port, b.user_port], SNI, env.pki.path("users-ca.crt"),
                          interval=0.01).start()
        time.sleep(1)
        leader = etcd.leader()
        follower = next(i for i in range(3) if i != leader)
        for what, i in (("follower", follower), ("leader", leader)):
            etcd.kill(i)
            t0 = time.monotonic()
            n = 0
            while True:
                rc, text, _ = timed_ctl(a, "groups", "create", f"{what}-{n}")
                if rc == 0:
                    break
                n += 1
                h.check(time.monotonic() - t0 < 3.0,
                        f"admin writes resume within 3 s of killing the {what}: {text.strip()}")
                time.sleep(0.1)
            h.log(f"admin write ok {time.monotonic() - t0:.2f} s after killing the {what}")
            time.sleep(1)
            if what == "follower":
                etcd.restart(i)
        load.finish("user load", 30)


def test_bad_records(env):
    """etcd is untrusted input too: records written behind the relays' backs are checked."""
    with EtcdCluster(3) as etcd:
        (a, b), conns = world(env, etcd)
        skipped0 = a.store_health().get("records_skipped", 0)
        app_key = "/apprelay/apps/contoso/web"
        good = etcd.get(app_key)
        # A malformed value over a good record, an oversized one, and a key nobody knows.
        etcd.put(app_key, "{not json")
        etcd.put("/apprelay/apps/contoso/huge", "x" * (70 * 1024))
        etcd.put("/apprelay/tenants/../../etc", "{}")
        h.wait_until(lambda: a.store_health().get("records_skipped", 0) >= skipped0 + 3, 5,
                     "relay-a counts three records skipped")
        for r in (a, b):
            echo_through(env, r.user_port)  # the app's previous record stays in force
        st = a.ctl_json("status")
        h.check(st["store"]["stale"] is False, f"a bad record is not an outage: {st['store']}")
        text = a.log_text()
        h.check("etcd_record_skipped" in text and "/apprelay/apps/contoso/huge" in text,
                "the log names each skipped record")
        etcd.put(app_key, good)  # repaired: taken again
        echo_through(env, a.user_port)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tls(env):
    """TLS to etcd with client certificates: a relay with the right files works; one without a
    client certificate fails to start, naming the store."""
    pki = env.pki
    pki.ca("etcd-ca", "etcd test CA")
    srv_crt, srv_key = pki.leaf("etcd-server", "etcd-ca", "etcd", dns=["localhost"],
                                ips=["127.0.0.1"], usage="serverAuth,clientAuth")
    cli_crt, cli_key = pki.leaf("etcd-client", "etcd-ca", "apprelay", usage="clientAuth")
    cport, pport = free_port(), free_port()
    data = os.path.join(env.dir, "etcd-tls")
    url = f"https://127.0.0.1:{cport}"
    env.start("etcd-tls", ["etcd", "--name", "tls0", "--data-dir", data,
                           "--listen-client-urls", url, "--advertise-client-urls", url,
                           "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                           "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                           "--initial-cluster", f"tls0=http://127.0.0.1:{pport}",
                           "--cert-file", pki.path(srv_crt), "--key-file", pki.path(srv_key),
                           "--trusted-ca-file", pki.path("etcd-ca.crt"), "--client-cert-auth",
                           "--log-level", "error", "--logger", "zap"])

    def tls_relay(name, endpoint, with_client_cert=True):
        r = FleetRelay(env, name, [endpoint])
        r.topo.store["ca_file"] = pki.path("etcd-ca.crt")
        if with_client_cert:
            r.topo.store["cert_file"] = pki.path(cli_crt)
            r.topo.store["key_file"] = pki.path(cli_key)
        return r

    # By IP (the certificate's IP SAN) and by name (resolved; checked against DNS:localhost).
    a = None
    for i, endpoint in enumerate((f"127.0.0.1:{cport}", f"localhost:{cport}")):
        r = tls_relay(f"relay-{i}", endpoint)
        h.wait_until(lambda r=r: _starts(r), 20, f"relay over TLS to {endpoint}")
        a = a or r
    a.ctl("groups", "create", "over-tls")
    st = a.ctl_json("status")
    h.check(st["store"]["stale"] is False and st["store"]["lease_held"] is True,
            f"current over TLS: {st['store']}")
    bad = tls_relay("relay-nocert", f"127.0.0.1:{cport}", with_client_cert=False)
    try:
        bad.start(timeout=15)
        raise h.TestFailure("a relay without a client certificate started")
    except h.TestFailure as e:
        if "started" in str(e):
            raise
    h.check("store_failed" in bad.log_text(), f"it names the store: {bad.log_text()[-400:]}")


def _starts(relay):
    """Starts `relay`; False (try again) while etcd is still coming up."""
    try:
        relay.start(timeout=15)
        return True
    except h.TestFailure:
        return False


TESTS = {"shared": test_shared, "tls": test_tls, "bad_records": test_bad_records, "redeem": test_redeem, "quorum": test_quorum,
         "failover": test_failover}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
