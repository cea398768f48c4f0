#!/usr/bin/env python3
"""Certificates the relay must refuse, with a real relay and real TLS (RELIABILITY.md "Bad inputs":
connector certificates that are expired, not yet valid, revoked, from another tenant; and user
certificates with wrong dates). One case per run: test_certs.py CASE.

World: tenant contoso with group Default (connector c1, the honest one, app web -> echo backend)
and group Spare (connector c2, the victim, app spare -> the same backend); tenant fabrikam with
connector f1. Two relay workers, so c1 holds 2 tunnels. A user holds one long-lived echo stream
through c1 the whole time; it moves 1 MiB byte-exact before and after every refusal, and ends
with a clean close_notify. After every refusal c1 still has exactly its 2 tunnels.

How a certificate with ONLY its dates wrong is made: the relay's store (SQLite in the relay's
state dir) holds each tenant's CA certificate and key. The test reads them and re-signs the
enrolled certificate with `openssl ca -startdate/-enddate`: same subject (CN = connector id,
O = tenant), same public key (the connector's own key), same issuer and the same extensions the
store puts in (basicConstraints, keyUsage, EKU clientAuth, SKI, AKI). `openssl verify
-no_check_time -purpose sslclient` accepts every re-signed certificate and plain `openssl verify`
names the date error, so nothing but the dates differs. The relay pins a connector by the SHA-256
of its certificate: the test writes the re-signed certificate's fingerprint into c2's row of the
store (and bumps config_version, as an admin change would), so the relay knows it as c2's own
certificate and only its dates can make it refuse it. A control certificate re-signed the same
way with valid dates is registered first and gets c2's tunnels up: the re-signing is faithful.

expired        c2 with its registered certificate, expired yesterday: refused in the TLS
               handshake (alert certificate_expired seen by a raw TLS client), tunnel_cert_rejected
               rises, the relay logs tunnel_down reason "...certificate has expired"; the real
               connector binary never gets a tunnel (stats, tunnel_up log, configs_sent).
not_yet_valid  The same with a certificate valid from tomorrow ("certificate is not yet valid").
revoked        c2 runs and carries a user's stream on app spare; `apprelayctl connectors delete`
               revokes it: its 2 tunnels close (tunnel_revoked +2, within 2 s), the user's stream
               through c2 ends with an error (never a clean short end), c2's fingerprint is in the
               store's revoked table; c2 keeps redialling with its CA-valid certificate and is
               refused after the handshake (tunnel_unknown_connector, "matches no registered
               connector"), never getting a tunnel; app spare refuses new users
               (streams_failed_no_connector). A raw TLS client with c2's certificate, resuming a
               session taken before the revocation if the listener gave one, is refused too.
other_tenant   A certificate with c1's key, CN and O=contoso but signed by fabrikam's CA (CA-valid
               on the tunnel listener, which trusts every tenant CA): tunnel_unknown_connector;
               fabrikam's own f1 certificate claiming c1's id in HELLO: tunnel_protocol_errors
               ("HELLO claims another connector id"); a CA no tenant configured:
               tunnel_cert_rejected. (test_bad_inputs.py covers the last two as a sum.) Last, the
               store row of contoso's c2 is made to name a fabrikam-signed certificate: the
               fingerprint matches, but the relay checks that the chain ends at the connector's
               own tenant CA: tunnel_cert_rejected, "... is not issued by tenant contoso's CA".
user_dates     App secure, access user-cert for group staff. A user certificate issued by
               `apprelayctl users issue` opens it, and so does a control copy re-signed with valid
               dates; copies re-signed expired and not yet valid are refused: no stream opened
               (streams_opened unchanged), streams_failed_not_allowed +1 each, relay log
               user_refused reason="not allowed", the user sees the connection end without any
               echoed byte. The user listener asks for certificates as optional (tls/context.hh:
               "a bad one does not fail the handshake", the app rule decides after it), so the
               refusal comes after the handshake: a TCP reset, no TLS alert (logged, not
               asserted); the log line's detail names the date error ("user certificate:
               certificate has expired").
"""
import hashlib
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import groups_helpers as g  # noqa: E402
import harness as h  # noqa: E402

MiB = h.MiB
WEB = "web.contoso.test"
SPARE = "spare.contoso.test"
SECURE = "secure.contoso.test"
DAY = 86400
# Fast redials so that a refused connector tries several times within the watch window.
FAST_REDIAL = ("--backoff-base-ms", "200", "--backoff-cap-ms", "400")


# ------------------------------------------------------------------------------ the store

def store_path(env):
    return os.path.join(env.state_dir, "apprelay.db")


def store_rows(env, sql, args=()):
    con = sqlite3.connect(store_path(env), timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def tenant_ca(env, tenant):
    """The tenant's CA certificate and key, from the relay's store, as PKI file names."""
    rows = store_rows(env, "SELECT ca_cert_pem, ca_key_pem FROM tenants WHERE name = ?", (tenant,))
    h.check(len(rows) == 1, f"the store holds tenant {tenant}'s CA certificate and key")
    crt, key = f"store-{tenant}-ca.crt", f"store-{tenant}-ca.key"
    with open(env.pki.path(crt), "w") as f:
        f.write(rows[0][0])
    fd = os.open(env.pki.path(key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(rows[0][1])
    return crt, key


def fingerprint(path):
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def register_cert(env, cid, cert_path):
    """Makes cert_path connector cid's registered certificate in the store, as if the relay had
    issued it, and waits until the relay published that configuration."""
    cid_real = env.connector_ids[cid]
    with open(cert_path) as f:
        pem = f.read()
    fp = fingerprint(cert_path)
    con = sqlite3.connect(store_path(env), timeout=10, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        n = con.execute("UPDATE connectors SET fingerprint = ?, cert_pem = ? WHERE id = ?",
                        (fp, pem, cid_real)).rowcount
        con.execute("UPDATE meta SET value = value + 1 WHERE key = 'config_version'")
        version = int(con.execute(
            "SELECT value FROM meta WHERE key = 'config_version'").fetchone()[0])
        con.execute("COMMIT")
    finally:
        con.close()
    h.check(n == 1, f"store: {cid}'s registered certificate is now {os.path.basename(cert_path)} "
                    f"({fp[:16]}...)")
    h.wait_until(lambda: int(env.stats().get("config_version", 0)) >= version, 10,
                 f"the relay to publish config_version {version}")
    return fp


# ------------------------------------------------------------------------------ certificates

def openssl(args, cwd, ok=True):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if ok and r.returncode != 0:
        raise h.TestFailure(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")
    return r


CA_CNF = """[ ca ]
default_ca = sign
[ sign ]
database = index.txt
new_certs_dir = .
rand_serial = yes
default_md = sha256
policy = anything
unique_subject = no
email_in_dn = no
x509_extensions = leaf
[ anything ]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def asn1_time(t):
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))


def resign(env, name, src_cert, key, ca, not_before, not_after):
    """PKI file <name>.crt: src_cert's subject and public key (the holder's own key), the store's
    extensions, signed by ca = (cert, key) PKI names, valid from not_before to not_after."""
    d = env.pki.path(f"sign-{name}")
    os.makedirs(d)
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write(CA_CNF)
    open(os.path.join(d, "index.txt"), "w").close()
    openssl(["x509", "-x509toreq", "-in", env.pki.path(src_cert), "-signkey", env.pki.path(key),
             "-out", "req.csr"], d)
    openssl(["ca", "-batch", "-config", "ca.cnf", "-cert", env.pki.path(ca[0]), "-keyfile",
             env.pki.path(ca[1]), "-in", "req.csr", "-out", env.pki.path(f"{name}.crt"),
             "-startdate", asn1_time(not_before), "-enddate", asn1_time(not_after),
             "-preserveDN", "-notext"], d)
    return f"{name}.crt"


def cert_facts(env, crt):
    r = openssl(["x509", "-in", env.pki.path(crt), "-noout", "-subject", "-issuer", "-pubkey",
                 "-nameopt", "RFC2253", "-ext", "basicConstraints,keyUsage,extendedKeyUsage,"
                 "subjectKeyIdentifier,authorityKeyIdentifier,subjectAltName"], env.pki.dir)
    return r.stdout


def check_only_dates_differ(env, crt, original, ca_crt, date_error):
    """crt has original's subject, key, issuer and extensions; it verifies against ca_crt when
    time is not checked; with time checked it fails with date_error (None: it verifies)."""
    same = cert_facts(env, crt) == cert_facts(env, original)
    h.check(same, f"{crt}: subject, public key, issuer and extensions equal {original}'s")
    r = openssl(["verify", "-no_check_time", "-purpose", "sslclient", "-CAfile",
                 env.pki.path(ca_crt), env.pki.path(crt)], env.pki.dir, ok=False)
    h.check(r.returncode == 0, f"{crt}: verifies against {ca_crt} (-no_check_time, sslclient)")
    r = openssl(["verify", "-purpose", "sslclient", "-CAfile", env.pki.path(ca_crt),
                 env.pki.path(crt)], env.pki.dir, ok=False)
    errors = [ln.split(": ", 1)[-1] for ln in (r.stdout + r.stderr).splitlines()
              if ln.startswith("error ")]
    if date_error is None:
        h.check(r.returncode == 0, f"{crt}: verifies with time checked too")
    else:
        h.check(r.returncode != 0 and any(date_error in e for e in errors),
                f"{crt}: with time checked, only the dates fail: {errors}")


# ------------------------------------------------------------------------------ the world

def good_stream_works(c, what, seed):
    data = h.pattern(1 * MiB, seed=seed)
    got = bytearray()
    c.transfer(data, expect=len(data), timeout=60, verify=lambda off, b: got.extend(b))
    h.check(bytes(got) == data, f"long-lived stream through c1: 1 MiB byte-exact {what}")


class World:
    def __init__(self, env, c2_running=False):
        self.env = env
        _, echo = env.start_backend("echo")
        backend = f"127.0.0.1:{echo}"
        topo = h.make_world(env.pki, [("web", WEB, backend)], connectors=("c1",), workers=2,
                            with_fabrikam=True)
        topo.groups.append(dict(tenant="contoso", name="Spare"))
        crt, key = env.pki.leaf("app-spare", "users-ca", SPARE, dns=[SPARE])
        topo.apps.append(dict(tenant="contoso", name="spare", hostname=SPARE, cert=crt, key=key,
                              backend=backend, group="Spare"))
        topo.connectors.append(dict(tenant="contoso", id="c2", group="Spare"))
        self.backend = backend
        env.start_relay(topo)
        self.c1 = env.start_connector("c1")
        self.c2 = env.start_connector("c2", extra=FAST_REDIAL) if c2_running else None
        env.wait_tunnels(2, connector="c1")
        if c2_running:
            env.wait_tunnels(2, connector="c2")
        self.users_ca = env.pki.path("users-ca.crt")
        self.good = h.UserClient(env.user_port, WEB, self.users_ca)
        self.seed = 1
        self.good_works("at the start")

    def abandon(self):
        """On failure: drop the long-lived stream so teardown does not wait for its drain."""
        try:
            self.good.abort()
        except OSError:
            pass

    def good_works(self, what):
        self.seed += 1
        good_stream_works(self.good, what, self.seed)

    def finish(self):
        env = self.env
        h.echo_roundtrip(self.good, b"", half_close=True, timeout=30)
        self.good.close()
        h.check(self.good.closed_notify, "long-lived stream half-closed, ended with close_notify")
        c = h.UserClient(env.user_port, WEB, self.users_ca)
        h.echo_roundtrip(c, h.pattern(MiB, seed=99), half_close=True, timeout=60)
        c.close()
        h.check(True, "a new user stream through c1 afterwards: 1 MiB byte-exact")
        st = env.stats()
        h.check(st.get("connectors", {}).get("c1", {}).get("tunnels") == 2,
                "c1 ends with exactly its 2 tunnels")
        h.check(env.relay.alive(), "relay alive")

    def c1_tunnels_only(self):
        st = self.env.stats()
        return (st.get("connectors", {}).get("c1", {}).get("tunnels") == 2
                and st.get("tunnels_up") == 2)


def watch_refused(w, victim, counter, before, seconds, at_least=1, extra_ok=()):
    """For `seconds`, samples the relay's stats every 50 ms: `victim` (a connector id as the test
    names it, or None) never has a tunnel and c1 keeps exactly its 2 (no 3rd tunnel counted for
    anyone). Then `counter` must have risen by at least `at_least` from `before`."""
    env = w.env
    deadline = time.monotonic() + seconds
    samples = 0
    while time.monotonic() < deadline:
        try:
            st = env.stats()
        except (OSError, ValueError):
            time.sleep(0.02)
            continue
        conns = st.get("connectors", {})
        if victim is not None and conns.get(victim, {}).get("tunnels", 0):
            raise h.TestFailure(f"{victim} got a tunnel: {conns}")
        if st.get("tunnels_up") != 2 or conns.get("c1", {}).get("tunnels") != 2:
            raise h.TestFailure(f"tunnels changed: tunnels_up={st.get('tunnels_up')} {conns}")
        samples += 1
        time.sleep(0.05)
    now = env.counter(counter)
    h.check(now >= before + at_least,
            f"{counter} {before} -> {now} (at least +{at_least}); over {seconds:.1f}s "
            f"({samples} samples) no tunnel for {victim or 'the impostor'}, c1 kept its 2")
    return now


def tunnel_client_ctx(env, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(env.relay_ca_path())
    ctx.load_cert_chain(env.pki.path(cert), env.pki.path(key))
    return ctx


def raw_tunnel_attempt(env, cert, key, timeout=5.0, session=None, ctx=None):
    """A raw TLS client on the tunnel listener with cert/key: returns (outcome, detail, ssl
    socket or None). outcome: 'alert' (handshake failed), 'closed' (the relay closed after the
    handshake), 'open' (it still waits for HELLO after `timeout`)."""
    ctx = ctx or tunnel_client_ctx(env, cert, key)
    raw = socket.create_connection(("127.0.0.1", env.tunnel_port), timeout=timeout)
    try:
        s = ctx.wrap_socket(raw, server_hostname=h.RELAY_SERVER_NAME, session=session)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return "alert", f"{type(e).__name__}: {e}", None
    # TLS 1.3: the client finishes its handshake before the server checked its certificate;
    # the verdict (alert or close) arrives with the first read.
    s.settimeout(timeout)
    try:
        b = s.recv(4096)
        if not b:
            return "closed", f"EOF (resumed={s.session_reused})", s
        return "open", f"{len(b)} bytes (resumed={s.session_reused})", s
    except socket.timeout:
        return "open", f"no verdict in {timeout}s (resumed={s.session_reused})", s
    except ssl.SSLError as e:
        s.close()
        return "alert", f"SSLError: {e.reason or e}", None
    except (ConnectionResetError, BrokenPipeError) as e:
        s.close()
        return "closed", f"{type(e).__name__} (resumed={s.session_reused})", None


def relay_log_has(env, *needles):
    text = env.relay.log_text()
    return any(all(n in line for n in needles) for line in text.splitlines())


# ------------------------------------------------------------------------------ cases

def dates_case(env, w, when, date_error, alert_word):
    """expired / not_yet_valid: c2's registered certificate, with only its dates wrong."""
    c2_dir = os.path.join(env.dir, "conn-c2")
    c2_crt, c2_key = os.path.join(c2_dir, "cert.pem"), os.path.join(c2_dir, "key.pem")
    ca = tenant_ca(env, "contoso")
    now = time.time()
    control = resign(env, "c2-control", c2_crt, c2_key, ca, now - 300, now + DAY)
    bad = resign(env, f"c2-{when}", c2_crt, c2_key, ca, *{
        "expired": (now - 2 * DAY, now - DAY),
        "not_yet_valid": (now + DAY, now + 2 * DAY)}[when])
    check_only_dates_differ(env, control, c2_crt, ca[0], None)
    check_only_dates_differ(env, bad, c2_crt, ca[0], date_error)
    c2_id = env.connector_ids["c2"]

    # Control: the faithful re-signing with valid dates, registered as c2's, gets c2 its tunnels.
    register_cert(env, "c2", env.pki.path(control))
    p = env.start_connector("c2", cert=control, key=c2_key, claim_id=c2_id, name="c2-control")
    env.wait_tunnels(2, connector="c2")
    h.check(True, "control: c2 with the re-signed, in-date certificate has its 2 tunnels")
    p.stop()
    h.wait_until(lambda: not env.stats().get("connectors", {}).get("c2", {}).get("tunnels", 0),
                 10, "c2's control tunnels to close")
    w.good_works("after the control connector")

    # The same certificate with only its dates wrong, registered as c2's.
    register_cert(env, "c2", env.pki.path(bad))
    time.sleep(0.3)  # let the stats file catch up before taking the baselines
    rej0, unk0 = env.counter("tunnel_cert_rejected"), env.counter("tunnel_unknown_connector")
    cfg0 = env.counter("configs_sent")
    mark = len(env.relay.log_text())

    outcome, detail, s = raw_tunnel_attempt(env, bad, c2_key)
    if s is not None:
        s.close()
    h.check(outcome == "alert", f"raw TLS client with the {when} certificate: refused in the "
                                f"handshake ({detail})")
    h.check(alert_word in detail.lower(), f"the alert names the problem ('{alert_word}')")
    p = env.start_connector("c2", cert=bad, key=c2_key, claim_id=c2_id, name=f"c2-{when}",
                            extra=FAST_REDIAL)
    rej = watch_refused(w, "c2", "tunnel_cert_rejected", rej0, 3.0, at_least=3)
    h.check(p.alive(), f"the {when} connector is still redialling")
    p.stop()
    h.check(env.counter("tunnel_unknown_connector") == unk0,
            "refused for its dates, not its identity (tunnel_unknown_connector unchanged)")
    h.check(env.counter("configs_sent") == cfg0, "configs_sent unchanged: no tunnel was set up")
    new_log = env.relay.log_text()[mark:]
    downs = [e for e in g.events(new_log, "tunnel_down") if date_error in e.get("reason", "")]
    h.check(len(downs) >= rej - rej0,
            f"relay log: {len(downs)} tunnel_down with reason '...{date_error}' "
            f"(e.g. {downs[0].get('reason') if downs else None!r})")
    h.check(not g.events(new_log, "tunnel_up", connector=c2_id), f"no tunnel_up for c2 logged")
    h.log(f"connector log tail: {p.log_text()[-300:]!r}")
    w.good_works(f"after the {when} connector")
    w.finish()


def test_expired(env, w):
    dates_case(env, w, "expired", "certificate has expired", "certificate_expired")


def test_not_yet_valid(env, w):
    # OpenSSL sends bad_certificate for a certificate not yet valid (no dedicated alert).
    dates_case(env, w, "not_yet_valid", "certificate is not yet valid", "bad_certificate")


def test_revoked(env, w):
    c2_id = env.connector_ids["c2"]
    c2_dir = os.path.join(env.dir, "conn-c2")
    c2_crt, c2_key = os.path.join(c2_dir, "cert.pem"), os.path.join(c2_dir, "key.pem")
    c2_fp = fingerprint(c2_crt)
    # Before: c2 serves app spare; a user's stream through it stays open over the revocation.
    c = h.UserClient(env.user_port, SPARE, w.users_ca)
    h.echo_roundtrip(c, h.pattern(256 * 1024, seed=5), half_close=True, timeout=30)
    c.close()
    h.check(True, "before: app spare through c2 echoes 256 KiB byte-exact")
    victim = h.UserClient(env.user_port, SPARE, w.users_ca)
    data = h.pattern(MiB, seed=6)
    got = bytearray()
    victim.transfer(data, expect=len(data), timeout=30, verify=lambda o, b: got.extend(b))
    h.check(bytes(got) == data, "a user's stream through c2 moves 1 MiB before the revocation")
    # A raw TLS client with c2's certificate, before: accepted (waits for HELLO); keep its session
    # for a resumption attempt after the revocation.
    c2_ctx = tunnel_client_ctx(env, c2_crt, c2_key)
    outcome, detail, s = raw_tunnel_attempt(env, c2_crt, c2_key, timeout=1.0, ctx=c2_ctx)
    h.check(outcome == "open", f"before: raw TLS with c2's certificate is accepted ({detail})")
    session = s.session
    s.close()
    # The tunnel listener gives no tickets (tls/context.cc: SSL_OP_NO_TICKET unless configured):
    # the "resumption" below is then a full handshake; either way it must be refused.
    h.log(f"tunnel listener session ticket before the revocation: "
          f"{bool(session is not None and session.has_ticket)}")

    rev0, unk0 = env.counter("tunnel_revoked"), env.counter("tunnel_unknown_connector")
    mark = len(env.relay.log_text())
    t0 = time.monotonic()
    env.ctl("connectors", "delete", c2_id)
    h.wait_until(lambda: env.counter("tunnel_revoked") >= rev0 + 2, 5,
                 "c2's 2 tunnels closed as revoked")
    secs = time.monotonic() - t0
    h.check(secs < 2.0, f"tunnel_revoked {rev0} -> {env.counter('tunnel_revoked')} "
                        f"{secs:.2f}s after the delete (stats are written every 200 ms)")
    # The stream that was riding c2 ends with an error the user sees, never a short clean end.
    try:
        victim.transfer(h.pattern(MiB, seed=7), expect=MiB, timeout=15, half_close=True,
                        until_close=True)
        raise h.TestFailure("the stream through the revoked connector kept working")
    except h.TestFailure:
        raise
    except Exception as e:  # noqa: BLE001 - reset, EOF without close_notify, TLS error
        h.check(True, f"the stream through c2 ended with an error the user sees: "
                      f"{type(e).__name__}: {str(e)[:80]}")
    finally:
        victim.sock.close()
    rows = store_rows(env, "SELECT fingerprint FROM revoked WHERE fingerprint = ?", (c2_fp,))
    h.check(len(rows) == 1, f"store: c2's fingerprint {c2_fp[:16]}... is in the revoked table")
    w.good_works("after the revocation")

    # c2 keeps redialling with its CA-valid, revoked certificate: refused after the handshake.
    rev_now = env.counter("tunnel_revoked")
    cfg0 = env.counter("configs_sent")
    unk = watch_refused(w, "c2", "tunnel_unknown_connector", unk0, 3.0, at_least=2)
    h.check(w.c2.alive(), "the revoked connector is still redialling")
    h.check(env.counter("configs_sent") == cfg0, "configs_sent unchanged: no tunnel was set up")
    new_log = env.relay.log_text()[mark:]
    h.check(not g.events(new_log, "tunnel_up", connector=c2_id), "no tunnel_up for c2 logged")
    downs = [e for e in g.events(new_log, "tunnel_down")
             if "matches no registered connector" in e.get("reason", "")]
    h.check(len(downs) >= unk - unk0, f"relay log: {len(downs)} tunnel_down 'matches no "
                                      f"registered connector' for {unk - unk0} refusals")
    # A raw TLS client with c2's certificate (resuming the earlier session if there was one).
    outcome, detail, s = raw_tunnel_attempt(env, c2_crt, c2_key, timeout=5.0, ctx=c2_ctx,
                                            session=session)
    if s is not None:
        s.close()
    h.check(outcome in ("closed", "alert"), f"raw TLS client with the revoked certificate: "
                                            f"refused ({outcome}: {detail})")
    h.check(env.counter("tunnel_revoked") == rev_now, "no more tunnel_revoked: nothing was up")
    # App spare has no connector left.
    nf0 = env.counter("streams_failed_no_connector")
    try:
        c = h.UserClient(env.user_port, SPARE, w.users_ca)
        h.echo_roundtrip(c, h.pattern(64 * 1024, seed=8), half_close=True, timeout=10)
        raise h.TestFailure("app spare still served after its only connector was revoked")
    except h.TestFailure:
        raise
    except Exception as e:  # noqa: BLE001
        h.log(f"spare user refused: {type(e).__name__}: {e}")
    env.wait_counter("streams_failed_no_connector", nf0 + 1)
    h.check(True, "app spare refuses new users: streams_failed_no_connector "
                  f"{nf0} -> {env.counter('streams_failed_no_connector')}")
    w.c2.stop()
    w.good_works("after the revoked connector's redials")
    w.finish()


def test_other_tenant(env, w):
    c1_id = env.connector_ids["c1"]
    c1_dir = os.path.join(env.dir, "conn-c1")
    c1_crt, c1_key = os.path.join(c1_dir, "cert.pem"), os.path.join(c1_dir, "key.pem")
    fab_ca = tenant_ca(env, "fabrikam")
    now = time.time()
    forged = resign(env, "c1-by-fabrikam", c1_crt, c1_key, fab_ca, now - 300, now + DAY)
    r = openssl(["x509", "-in", env.pki.path(forged), "-noout", "-subject", "-issuer",
                 "-nameopt", "RFC2253"], env.pki.dir)
    h.log(f"forged: {r.stdout.strip()!r}")
    h.check(f"CN={c1_id}" in r.stdout and "O=contoso" in r.stdout and "fabrikam" in
            r.stdout.split("issuer=")[1], "forged certificate: c1's key, CN and O=contoso, "
                                          "issued by fabrikam's CA")
    r = openssl(["verify", "-purpose", "sslclient", "-CAfile", env.pki.path(fab_ca[0]),
                 env.pki.path(forged)], env.pki.dir, ok=False)
    h.check(r.returncode == 0, "forged certificate verifies against fabrikam's CA (in date)")

    # 1. Signed by another tenant's CA, claiming c1 (CN, O, id): TLS verifies (the tunnel
    # listener trusts every tenant CA), the fingerprint is no connector's.
    unk0 = env.counter("tunnel_unknown_connector")
    cfg0 = env.counter("configs_sent")
    mark = len(env.relay.log_text())
    p = env.start_connector("c1", cert=forged, key=c1_key, claim_id=c1_id, name="forged-c1",
                            extra=FAST_REDIAL)
    watch_refused(w, None, "tunnel_unknown_connector", unk0, 3.0, at_least=2)
    p.stop()
    new_log = env.relay.log_text()[mark:]
    h.check(any("matches no registered connector" in e.get("reason", "")
                for e in g.events(new_log, "tunnel_down")),
            "relay log: tunnel_down 'matches no registered connector'")
    h.check(env.counter("configs_sent") == cfg0, "configs_sent unchanged: no tunnel was set up")
    w.good_works("after the fabrikam-signed impostor")

    # 2. fabrikam's own connector certificate (valid, registered to f1) claiming c1's id.
    pe0 = env.counter("tunnel_protocol_errors")
    mark = len(env.relay.log_text())
    f1_dir = os.path.join(env.dir, "conn-f1")
    p = env.start_connector("c1", cert=os.path.join(f1_dir, "cert.pem"),
                            key=os.path.join(f1_dir, "key.pem"), claim_id=c1_id,
                            name="f1-as-c1", extra=FAST_REDIAL)
    watch_refused(w, "f1", "tunnel_protocol_errors", pe0, 3.0, at_least=2)
    p.stop()
    new_log = env.relay.log_text()[mark:]
    h.check("HELLO claims another connector id" in new_log,
            "relay log: HELLO claims another connector id than its certificate")
    h.check(env.counter("configs_sent") == cfg0, "configs_sent unchanged: no tunnel was set up")
    w.good_works("after fabrikam's f1 claimed c1")

    # 3. A CA no tenant configured (CN c1): refused in the handshake.
    rej0 = env.counter("tunnel_cert_rejected")
    mark = len(env.relay.log_text())
    outcome, detail, s = raw_tunnel_attempt(env, "rogue-ext.crt", "rogue-ext.key")
    if s is not None:
        s.close()
    h.check(outcome == "alert", f"raw TLS client, unconfigured CA: refused in the handshake "
                                f"({detail})")
    p = env.start_connector("c1", cert="rogue-ext.crt", key="rogue-ext.key", claim_id=c1_id,
                            name="rogue-c1", extra=FAST_REDIAL)
    watch_refused(w, None, "tunnel_cert_rejected", rej0, 3.0, at_least=3)
    p.stop()
    h.check(relay_log_has(env, "event=tunnel_down", "unable to get local issuer certificate"),
            "relay log: tunnel_down '...unable to get local issuer certificate'")
    h.check(env.counter("configs_sent") == cfg0, "configs_sent unchanged: no tunnel was set up")
    w.good_works("after the unconfigured CA")

    # 4. The store itself names a fabrikam-signed certificate for contoso's c2 (a corrupted or
    # tampered row): the fingerprint matches, but the chain does not end at contoso's CA, so
    # the relay refuses it (the tenant-CA check behind the fingerprint).
    c2_dir = os.path.join(env.dir, "conn-c2")
    c2_crt, c2_key = os.path.join(c2_dir, "cert.pem"), os.path.join(c2_dir, "key.pem")
    forged2 = resign(env, "c2-by-fabrikam", c2_crt, c2_key, fab_ca, now - 300, now + DAY)
    register_cert(env, "c2", env.pki.path(forged2))
    rej0 = env.counter("tunnel_cert_rejected")
    mark = len(env.relay.log_text())
    p = env.start_connector("c2", cert=forged2, key=c2_key, claim_id=env.connector_ids["c2"],
                            name="c2-by-fabrikam", extra=FAST_REDIAL)
    watch_refused(w, "c2", "tunnel_cert_rejected", rej0, 3.0, at_least=2)
    p.stop()
    h.check(relay_log_has(env, "event=tunnel_down", "is not issued by tenant contoso"),
            "relay log: tunnel_down '... is not issued by tenant contoso's CA'")
    h.check(env.counter("configs_sent") == cfg0, "configs_sent unchanged: no tunnel was set up")
    w.good_works("after the store named a fabrikam-signed certificate for c2")
    w.finish()


def test_user_dates(env, w):
    crt, key = env.pki.leaf("app-secure", "users-ca", SECURE, dns=[SECURE])
    env.ctl("apps", "create", "secure", "--backend", w.backend, "--hostname", SECURE,
            "--access", "user-cert", "--allow-group", "staff", "--cert", env.pki.path(crt),
            "--key", env.pki.path(key))
    alice = os.path.join(env.pki.dir, "alice")
    env.ctl("users", "issue", "alice", "--group", "staff", "--out", alice)
    ca = tenant_ca(env, "contoso")
    now = time.time()
    certs = {
        "issued": "alice.crt",
        "control": resign(env, "alice-control", "alice.crt", "alice.key", ca, now - 300,
                          now + DAY),
        "expired": resign(env, "alice-expired", "alice.crt", "alice.key", ca, now - 2 * DAY,
                          now - DAY),
        "not_yet_valid": resign(env, "alice-not-yet-valid", "alice.crt", "alice.key", ca,
                                now + DAY, now + 2 * DAY),
    }
    check_only_dates_differ(env, certs["control"], "alice.crt", ca[0], None)
    check_only_dates_differ(env, certs["expired"], "alice.crt", ca[0], "certificate has expired")
    check_only_dates_differ(env, certs["not_yet_valid"], "alice.crt", ca[0],
                            "certificate is not yet valid")
    time.sleep(0.3)

    def attempt(which):
        """(True, None, n) if a 64 KiB echo through app secure came back byte-exact, else
        (False, what the user saw, n); n = bytes echoed back."""
        c = None
        data = h.pattern(64 * 1024, seed=3)
        got = bytearray()
        try:
            c = h.UserClient(env.user_port, SECURE, w.users_ca, cert=env.pki.path(certs[which]),
                             key=env.pki.path("alice.key"))
            c.transfer(data, expect=len(data), timeout=15, half_close=True, until_close=True,
                       verify=lambda off, b: got.extend(b))
            if bytes(got) != data:
                raise h.TestFailure(f"{which}: echo ended cleanly with {len(got)} bytes, "
                                    f"not the {len(data)} sent")
            return True, None, len(got)
        except h.TestFailure:
            raise
        except Exception as e:  # noqa: BLE001 - reset, TLS alert, EOF
            return False, f"{type(e).__name__}: {str(e)[:100]}", len(got)
        finally:
            if c is not None:
                c.sock.close()

    for which in ("issued", "control"):
        ok, why, _ = attempt(which)
        h.check(ok, f"alice's {which} certificate opens app secure ({why})")
    w.good_works("after the in-date user certificates")
    for which, date_error in (("expired", "certificate has expired"),
                              ("not_yet_valid", "certificate is not yet valid")):
        time.sleep(0.3)
        na0 = env.counter("streams_failed_not_allowed")
        so0 = env.counter("streams_opened")
        b0 = env.counter("bytes_user_to_backend")
        mark = len(env.relay.log_text())
        ok, why, n = attempt(which)
        h.check(not ok and n == 0, f"alice's {which} certificate is refused by app secure, "
                                   f"no byte echoed ({why})")
        alert = "ALERT" in (why or "").upper() or "SSLError" in (why or "")
        h.log(f"{which}: the user saw {'a TLS alert' if alert else 'no TLS alert'}: {why}")
        env.wait_counter("streams_failed_not_allowed", na0 + 1)
        time.sleep(0.3)
        h.check(env.counter("streams_failed_not_allowed") == na0 + 1,
                f"streams_failed_not_allowed {na0} -> {na0 + 1} (exactly one refusal)")
        h.check(env.counter("streams_opened") == so0,
                "streams_opened unchanged: no stream reached a connector")
        h.check(env.counter("bytes_user_to_backend") == b0,
                "bytes_user_to_backend unchanged: none of the user's bytes went in")
        new_log = env.relay.log_text()[mark:]
        refusals = g.events(new_log, "user_refused", app="secure")
        h.check(len(refusals) == 1 and refusals[0].get("reason") == "not allowed",
                f"relay log names this refusal: {refusals}")
        h.check(refusals[0].get("detail") == f"user certificate: {date_error}",
                f"the log line says why: {refusals[0].get('detail')!r}")
        w.good_works(f"after the {which} user certificate")
    ok, why, _ = attempt("issued")
    h.check(ok, f"alice's issued certificate still opens app secure ({why})")
    w.finish()


def with_world(fn, **kw):
    def test(env):
        w = World(env, **kw)
        try:
            fn(env, w)
        except BaseException:
            w.abandon()
            raise
    return test


TESTS = {"expired": with_world(test_expired),
         "not_yet_valid": with_world(test_not_yet_valid),
         "revoked": with_world(test_revoked, c2_running=True),
         "other_tenant": with_world(test_other_tenant),
         "user_dates": with_world(test_user_dates)}

if __name__ == "__main__":
    names = sys.argv[1:] or list(TESTS)
    rc = 0
    for name in names:
        if name not in TESTS:
            print(f"unknown case {name!r}; cases: {', '.join(TESTS)}")
            sys.exit(2)
        rc |= h.run_test(f"certs_{name}", TESTS[name])
    sys.exit(rc)
