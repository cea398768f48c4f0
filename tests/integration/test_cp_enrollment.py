#!/usr/bin/env python3
"""Control plane, enrollment end to end (control/enroll/PROTOCOL.md, API.md "Enrollment token").

1. token -> `apprelay-connector register` -> `run` -> tunnels up (one per relay worker) -> a user
   stream is echoed byte-exact; `connectors list --json` shows the connector active, with the
   connector binary's version and the name it registered with; the state dir holds exactly
   relay.json, key.pem, cert.pem, ca.pem, all 0600 (dir 0700); the token secret is never logged.
2. Refusals, each with the relay's exact reason and nothing created (connector count unchanged,
   no state files written): replay ("token already used"), expired (`--ttl 1`, wait 2 s:
   "token expired"), revoked ("token revoked").
3. A token whose CA-fingerprint part is altered is refused by the connector itself before it sends
   anything: exit non-zero, message names the fingerprint; the relay saw no request (only a
   failed TLS handshake) and the token is still valid and redeemable afterwards.
4. `tokens list` shows the states used / expired / revoked (and valid).
5. Token creation refusals (ttl over 30 days, unknown group) create nothing. Parallel
   redemption of one token (for group gp) by 50 registers at once: exactly one succeeds and
   joins gp, the 49 others get "token already used" and no certificate, exactly one connector
   is created.

World: 2 relay workers, echo backend, tenant contoso (no pre-enrolled connectors)."""
import os
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CTL_RC_REFUSED = 1


def register(env, token, cid):
    """`apprelay-connector register` into conn-<cid>; returns CompletedProcess."""
    state = os.path.join(env.dir, f"conn-{cid}")
    return subprocess.run([h.CONNECTOR_BIN, "register", "--relay",
                           f"127.0.0.1:{env.relay_info['enroll_port']}", "--token", token,
                           "--state-dir", state, "--name", cid],
                          capture_output=True, text=True, timeout=30)


def new_token(env, *extra):
    rc, out, err = env.ctl("tokens", "create", *extra)
    token = out.strip()
    # "token <id> for group <g> expires ..." on stderr
    tid = err.split()[1]
    h.check(token.startswith(f"art1.{tid}.") and len(token.split(".")) == 4,
            f"tokens create printed art1.<id>.<secret>.<fp> with id {tid}")
    return token, tid


def token_states(env):
    return {t["id"]: t["state"] for t in env.ctl_json("tokens", "list")["tokens"]}


def connectors(env):
    return env.ctl_json("connectors", "list")["connectors"]


def state_files(env, cid):
    d = os.path.join(env.dir, f"conn-{cid}")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def check_refused(env, token, cid, reason, before):
    r = register(env, token, cid)
    msg = r.stderr.strip()
    h.check(r.returncode == 1, f"register with {cid}'s token exits 1 (refused): rc={r.returncode}")
    h.check(msg == reason, f"refusal message is exactly {reason!r} (got {msg!r})")
    h.check("registered connector" not in r.stdout, "no registration printed")
    h.check(len(connectors(env)) == before, f"no connector created (still {before})")
    files = [f for f in state_files(env, cid) if f in ("cert.pem", "ca.pem", "relay.json")]
    h.check(not files, f"no identity written to conn-{cid} after refusal ({files})")


def body(env):
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}")],
                        connectors=(), workers=2, with_fabrikam=False)
    env.start_relay(topo)
    workers = env.relay_info["workers"]
    version = subprocess.run([h.CONNECTOR_BIN, "--version"], capture_output=True, text=True,
                             timeout=10).stdout.strip().split()[-1]
    h.check(bool(version) and version[0].isdigit(), f"connector binary version {version!r}")

    # ---- 1. happy path ---------------------------------------------------------------------
    token, tid = new_token(env)
    secret = token.split(".")[2]
    h.check(token.split(".")[3] == env.relay_info["relay_ca_fingerprint"],
            "token carries the relay CA fingerprint from the ready file")
    h.check(token_states(env).get(tid) == "valid", f"fresh token {tid} is listed as valid")
    r = register(env, token, "c1")
    h.check(r.returncode == 0, f"register c1 exits 0 ({r.stderr.strip()})")
    words = r.stdout.split()
    h.check(r.stdout.startswith("registered connector ") and
            "in group Default of tenant contoso" in r.stdout,
            f"register prints its id, group and tenant: {r.stdout.strip()!r}")
    cid = words[words.index("connector") + 1]
    env.connector_ids["c1"] = cid

    sdir = os.path.join(env.dir, "conn-c1")
    files = state_files(env, "c1")
    h.check(files == ["ca.pem", "cert.pem", "key.pem", "relay.json"],
            f"state dir holds exactly ca.pem cert.pem key.pem relay.json: {files}")
    for f in files:
        mode = stat.S_IMODE(os.stat(os.path.join(sdir, f)).st_mode)
        h.check(mode == 0o600, f"{f} mode {oct(mode)} == 0o600")
    dmode = stat.S_IMODE(os.stat(sdir).st_mode)
    h.check(dmode == 0o700, f"state dir mode {oct(dmode)} == 0o700")
    rj = h.read_json_file(os.path.join(sdir, "relay.json"))
    h.check(rj.get("relay") == f"127.0.0.1:{env.tunnel_port}" and
            rj.get("server_name") == h.RELAY_SERVER_NAME,
            f"relay.json points at the tunnel port and server name: {rj}")
    h.check(token_states(env).get(tid) == "used", f"token {tid} is used after registration")

    env.start_connector("c1")
    env.wait_tunnels(workers, connector="c1")
    c = h.UserClient(env.user_port, "web.contoso.test", env.pki.path("users-ca.crt"))
    h.echo_roundtrip(c, h.pattern(256 * 1024, seed=3), half_close=True, timeout=20)
    c.close()
    h.check(True, "256 KiB echoed byte-exact through the freshly enrolled connector")
    lst = connectors(env)
    h.check(len(lst) == 1, f"connectors list has 1 connector ({len(lst)})")
    me = lst[0]
    h.check(me["id"] == cid and me["name"] == "c1" and me["group"] == "Default",
            f"listed id {me['id']} name {me['name']} group {me['group']}")
    h.check(me["status"] == "active", f"connector status {me['status']!r} == 'active'")
    h.check(me["version"] == version, f"connector version {me['version']!r} == {version!r}")
    h.check(me["tunnels"] == workers, f"connector tunnels {me['tunnels']} == {workers}")
    h.check(len(me["fingerprint"]) == 64 and me["last_seen"] >= me["first_seen"] > 0,
            "fingerprint (64 hex) and first/last seen set")
    h.check(secret not in env.relay.log_text(), "the token secret never appears in the relay log")

    # ---- 2. refusals -----------------------------------------------------------------------
    check_refused(env, token, "replay", "token already used", 1)

    tok_exp, tid_exp = new_token(env, "--ttl", "1")
    time.sleep(2.2)
    check_refused(env, tok_exp, "expired", "token expired", 1)

    tok_rev, tid_rev = new_token(env)
    env.ctl("tokens", "revoke", tid_rev)
    check_refused(env, tok_rev, "revoked", "token revoked", 1)
    rc, _, err = env.ctl("tokens", "revoke", tid_rev, expect_rc=CTL_RC_REFUSED)
    h.check("already revoked" in err, f"revoking twice is refused: {err.strip()!r}")

    # ---- 3. altered fingerprint: refused by the connector before sending ---------------------
    tok_fp, tid_fp = new_token(env)
    parts = tok_fp.split(".")
    fp = parts[3]
    bad_fp = fp[:-1] + ("0" if fp[-1] != "0" else "1")
    bad = ".".join(parts[:3] + [bad_fp])
    log_before = len(env.relay.log_text())
    r = register(env, bad, "badfp")
    msg = r.stderr.strip()
    h.check(r.returncode != 0,
            f"register with an altered fingerprint exits non-zero ({r.returncode})")
    h.check("fingerprint" in msg, f"its message names the fingerprint: {msg!r}")
    h.check(state_files(env, "badfp") == [], "nothing written to its state dir")
    time.sleep(0.3)
    new_log = env.relay.log_text()[log_before:]
    enroll_lines = [ln for ln in new_log.splitlines() if "event=enroll_" in ln]
    failed_tls = ('reason="TLS handshake failed"', 'reason="no request"')
    h.check(enroll_lines and all(any(f in ln for f in failed_tls) for ln in enroll_lines),
            f"the relay saw no enrollment request, only a failed handshake: {enroll_lines}")
    h.check(token_states(env).get(tid_fp) == "valid",
            f"token {tid_fp} is still valid (its secret was never sent)")
    r = register(env, tok_fp, "c2")
    h.check(r.returncode == 0, f"the same token with its true fingerprint registers c2 "
                               f"({r.stderr.strip()})")
    env.connector_ids["c2"] = r.stdout.split()[2]

    # ---- 4. token states -------------------------------------------------------------------
    states = token_states(env)
    want = {tid: "used", tid_exp: "expired", tid_rev: "revoked", tid_fp: "used"}
    h.check(all(states.get(k) == v for k, v in want.items()),
            f"tokens list states {[(k, states.get(k)) for k in want]} == {list(want.items())}")
    text = env.ctl("tokens", "list")[1]
    for k, v in want.items():
        line = next((ln for ln in text.splitlines() if ln.startswith(k)), "")
        h.check(f" {v} " in f" {line} ", f"text list line for {k} shows {v}: {line!r}")

    # ---- token creation refusals ----------------------------------------------------------
    n_tokens = len(token_states(env))
    _, _, err = env.ctl("tokens", "create", "--ttl", 30 * 86400 + 1, expect_rc=1)
    h.check(err.strip() == "error: ttl_s 2592001 exceeds the maximum of 2592000",
            f"ttl over 30 days refused: {err.strip()!r}")
    _, _, err = env.ctl("tokens", "create", "--group", "nosuch", expect_rc=1)
    h.check(err.strip() == "error: no group 'nosuch' in tenant 'contoso'",
            f"token for an unknown group refused: {err.strip()!r}")
    h.check(len(token_states(env)) == n_tokens, "no token created by the refusals")

    # ---- 5. parallel redemption (token for group gp: the winner joins gp) -------------------
    env.ctl("groups", "create", "gp")
    tok_par, tid_par = new_token(env, "--group", "gp")
    before = len(connectors(env))
    results = {}
    racers = [f"par{i}" for i in range(1, 51)]  # the token redeemed 50 times at once
    barrier = threading.Barrier(len(racers))

    def go(name):
        barrier.wait()
        results[name] = register(env, tok_par, name)

    ts = [threading.Thread(target=go, args=(n,)) for n in racers]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    oks = [n for n, r in results.items() if r.returncode == 0]
    fails = [n for n, r in results.items() if r.returncode != 0]
    h.check(len(results) == len(racers) and len(oks) == 1 and len(fails) == len(racers) - 1,
            f"parallel redemption: exactly one of {len(racers)} succeeds (ok={oks}, "
            f"{len(fails)} failed)")
    wrong = [n for n in fails if results[n].returncode != 1
             or results[n].stderr.strip() != "token already used"]
    h.check(not wrong, f"every loser is refused with 'token already used': {wrong[:3]} "
                       f"{[results[n].stderr.strip() for n in wrong[:3]]}")
    loser = results[fails[0]]
    h.check(loser.returncode == 1 and loser.stderr.strip() == "token already used",
            f"the loser is refused with 'token already used': rc={loser.returncode} "
            f"{loser.stderr.strip()!r}")
    after = connectors(env)
    h.check(len(after) == before + 1, f"exactly one connector created ({before} -> {len(after)})")
    winner = results[oks[0]]
    h.check("in group gp of tenant contoso" in winner.stdout,
            f"the winner joined the token's group: {winner.stdout.strip()!r}")
    h.check([c["group"] for c in after if c["name"] == oks[0]] == ["gp"],
            f"connectors list shows {oks[0]} in gp")
    h.check(all("cert.pem" not in state_files(env, n) for n in fails),
            f"none of the {len(fails)} losers got a certificate")
    h.check(token_states(env).get(tid_par) == "used", f"token {tid_par} is used")

    # ---- a fresh host: the state dir's parents do not exist yet ------------------------------
    tok_deep, _ = new_token(env)
    deep = os.path.join(env.dir, "fresh-host", "var", "lib", "apprelay-connector", "site-a")
    r = subprocess.run([h.CONNECTOR_BIN, "register", "--relay",
                        f"127.0.0.1:{env.relay_info['enroll_port']}", "--token", tok_deep,
                        "--state-dir", deep, "--name", "deep"],
                       capture_output=True, text=True, timeout=30)
    parent = os.path.dirname(deep)
    h.check(r.returncode == 0 and os.path.isfile(os.path.join(deep, "cert.pem")) and
            stat.S_IMODE(os.stat(deep).st_mode) == 0o700 and
            stat.S_IMODE(os.stat(parent).st_mode) == 0o755,
            f"register makes missing parents (0755) and the state dir (0700): rc={r.returncode} "
            f"{r.stderr.strip()!r}")
    rj = h.read_json_file(os.path.join(deep, "relay.json"))
    h.check(rj.get("enroll") == f"127.0.0.1:{env.relay_info['enroll_port']}",
            f"relay.json records the enrollment listener for connector requests: {rj}")


if __name__ == "__main__":
    sys.exit(h.run_test("cp_enrollment", body))
