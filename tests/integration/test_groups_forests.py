#!/usr/bin/env python3
"""Scenario (f), multi-forest: apps whose access rule is user-cert with allowed user groups.
A user certificate issued by the tenant CA with OU forest1-users opens forest-1's app and is
refused forest-2's app; a user with no certificate, and a certificate from another tenant's CA
carrying the right group, are refused too. Passthrough apps keep working for everyone, and never
ask for a certificate (seen by openssl s_client): a user-cert app's request names only its own
tenant's CA, never another tenant's.

World: tenant contoso, connector c1, echo backend; apps f1app (user-cert, forest1-users),
f2app (user-cert, forest2-users), open (passthrough)."""
import os
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MiB = 1024 * 1024


def attempt(env, sni, cert=None, key=None):
    """True if 64 KiB echo through the app works; False if the relay refused the stream."""
    try:
        c = h.UserClient(env.user_port, sni, env.pki.path("users-ca.crt"), cert=cert, key=key)
        h.echo_roundtrip(c, h.pattern(64 * 1024, seed=3), half_close=True, timeout=20)
        c.close()
        return True
    except (h.TestFailure, ssl.SSLError, OSError) as e:
        h.log(f"{sni}: refused ({e!r:.120})")
        return False


def cert_request(env, sni):
    """The CertificateRequest openssl s_client saw for sni: None if there was none, else the
    CA names it listed."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{env.user_port}",
                        "-servername", sni, "-CAfile", env.pki.path("users-ca.crt")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    h.check("Verify return code: 0 (ok)" in r.stdout, f"s_client {sni}: handshake verified")
    lines = r.stdout.splitlines()
    if "Acceptable client certificate CA names" not in lines:
        return None
    names = []
    for line in lines[lines.index("Acceptable client certificate CA names") + 1:]:
        if line.startswith("Requested Signature") or line.startswith("---") or ":" in line:
            break
        names.append(line.strip())
    return names


def body(env):
    _, port = env.start_backend("echo")
    backend = f"127.0.0.1:{port}"
    topo = h.make_world(env.pki, [("open", "open.contoso.test", backend)], workers=1,
                        with_fabrikam=False)
    env.start_relay(topo)
    for app, group in [("f1app", "forest1-users"), ("f2app", "forest2-users")]:
        crt, key = env.pki.leaf(f"app-{app}", "users-ca", f"{app}.contoso.test",
                                dns=[f"{app}.contoso.test"])
        env.ctl("apps", "create", app, "--backend", backend, "--hostname", f"{app}.contoso.test",
                "--access", "user-cert", "--allow-group", group, "--cert", env.pki.path(crt),
                "--key", env.pki.path(key))
    env.start_connector("c1")
    env.wait_tunnels(1, connector="c1")

    alice = os.path.join(env.dir, "alice")
    env.ctl("users", "issue", "alice", "--group", "forest1-users", "--out", alice)
    h.check(oct(os.stat(alice + ".key").st_mode & 0o777) == "0o600",
            "apprelayctl users issue: key written 0600")
    # Same group name, but from another tenant's CA (another forest's trust): never accepted.
    mallory = os.path.join(env.dir, "mallory")
    env.ctl("groups", "create", "forest2", tenant="fabrikam")  # creates tenant fabrikam + its CA
    env.ctl("users", "issue", "mallory", "--group", "forest1-users", "--out", mallory,
            tenant="fabrikam")

    n0 = env.counter("streams_failed_not_allowed")
    h.check(attempt(env, "f1app.contoso.test", alice + ".crt", alice + ".key"),
            "forest-1 user opens forest-1's app")
    h.check(not attempt(env, "f2app.contoso.test", alice + ".crt", alice + ".key"),
            "forest-1 user is refused forest-2's app")
    h.check(not attempt(env, "f1app.contoso.test"), "no user certificate: refused")
    h.check(not attempt(env, "f1app.contoso.test", mallory + ".crt", mallory + ".key"),
            "right group name from another tenant's CA: refused")
    env.wait_counter("streams_failed_not_allowed", n0 + 3)
    h.check(env.counter("streams_failed_not_allowed") == n0 + 3,
            "exactly the three refusals counted as streams_failed_not_allowed")
    h.check(attempt(env, "open.contoso.test"), "passthrough app: works without a certificate")
    h.check(attempt(env, "open.contoso.test", alice + ".crt", alice + ".key"),
            "passthrough app: works with a certificate too")
    h.check(cert_request(env, "open.contoso.test") is None,
            "passthrough app: no certificate request (a browser would prompt its user)")
    names = cert_request(env, "f1app.contoso.test")
    h.log(f"f1app certificate request names: {names}")
    h.check(names is not None and len(names) == 1 and "contoso" in names[0].lower(),
            "user-cert app: the request names contoso's CA only")
    h.check(not any("fabrikam" in n.lower() for n in names or []),
            "user-cert app: another tenant's CA is never named")
    h.check('reason="not allowed"' in env.relay.log_text() or "reason=not" in env.relay.log_text(),
            "relay log names the refusal: not allowed")


if __name__ == "__main__":
    sys.exit(h.run_test("groups_forests", body))
