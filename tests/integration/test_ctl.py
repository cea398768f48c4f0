#!/usr/bin/env python3
"""apprelayctl against a real relay: --json on every command and the documented exit codes
(README.md "apprelayctl", apprelayctl(1) EXIT STATUS).

1. Every command with --json: on success stdout is one JSON value (tokens create gives the
   API's {id, token, group, expires_at, ...}; metrics {metrics}; users issue {name, groups, cert_file,
   key_file} and writes the key 0600 without printing it); on failure stdout is empty and stderr
   is {"error": "...", "status": N}.
2. Exit codes, each with and without --json: 0 success; 1 a conflict (group exists, 409) and a
   not-found (unknown app, 404); 2 an unknown flag and a bad choice; 3 a socket path with no file
   and a socket file nothing listens on; 4 an answer 503 (a stand-in server on a UNIX socket
   that answers every request so, as the relay does when its store is unavailable).

World: 1 relay worker, tenant contoso, one enrolled connector (never started)."""
import json
import os
import socket
import stat
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

RC_OK, RC_REFUSED, RC_USAGE, RC_UNREACHABLE, RC_SERVER = 0, 1, 2, 3, 4


def raw_ctl(socket_path, *args):
    """apprelayctl on any socket path; returns the CompletedProcess."""
    return subprocess.run([h.CTL_BIN, "--socket", socket_path] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=30)


def json_error(err, status, what):
    """stderr must be exactly one JSON object {"error", "status"} with this status (None: any
    4xx)."""
    try:
        e = json.loads(err)
    except ValueError:
        raise h.TestFailure(f"{what}: stderr is not JSON: {err!r}")
    h.check(isinstance(e, dict) and set(e) == {"error", "status"}
            and (e["status"] == status if status is not None else 400 <= e["status"] < 500)
            and isinstance(e["error"], str) and e["error"],
            f"{what}: stderr is {{error, status: {'4xx' if status is None else status}}}: {e}")
    return e["error"]


def ctl_json_ok(env, *args):
    """Runs with --json, expecting exit 0: stdout must be one JSON value."""
    _, out, _ = env.ctl(*args, json_out=True)
    try:
        return json.loads(out)
    except ValueError:
        raise h.TestFailure(f"{' '.join(map(str, args))} --json: stdout is not JSON: {out!r}")


def ctl_json_refused(env, *args, status=None):
    """Runs with --json, expecting exit 1: stdout empty, the JSON error on stderr."""
    _, out, err = env.ctl(*args, json_out=True, expect_rc=RC_REFUSED)
    h.check(out == "", f"{' '.join(map(str, args))} --json: nothing on stdout on failure")
    return json_error(err, status, " ".join(map(str, args)) + " --json")


class answer_503:
    """A UNIX socket server that reads each request and answers 503 with the API's error body,
    one connection at a time, until closed."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        body = b'{"error":"store unavailable: no quorum"}'
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                             b"application/json\r\nConnection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def body(env):
    topo = h.Topology(workers=1)
    topo.tenants.append(dict(name="contoso"))
    env.start_relay(topo)
    cid = env.enroll("c1")

    # ---- 1. every command with --json ---------------------------------------------------------
    st = ctl_json_ok(env, "status")
    h.check("config_version" in st and "version" in st, f"status --json: {sorted(st)[:6]}...")
    m = ctl_json_ok(env, "metrics")
    h.check(set(m) == {"metrics"} and "apprelay_" in m["metrics"],
            "metrics --json is {metrics: <Prometheus text>}")
    # A lone SQLite relay has no fleet: the relays commands are refused (4xx), as JSON.
    ctl_json_refused(env, "relays", "list")
    ctl_json_refused(env, "relays", "drain", "relay-zz")
    t = ctl_json_ok(env, "tenants", "list")
    h.check("contoso" in [x["name"] for x in t["tenants"]], "tenants list --json")
    ca = ctl_json_ok(env, "tenants", "ca", "contoso")
    h.check(ca["ca_pem"].startswith("-----BEGIN CERTIFICATE"), "tenants ca --json")
    h.check("config_version" in ctl_json_ok(env, "groups", "create", "g1", "--region", "eu"),
            "groups create --json carries config_version")
    ctl_json_ok(env, "groups", "rename", "g1", "g2")
    h.check("g2" in [g["name"] for g in ctl_json_ok(env, "groups", "list")["groups"]],
            "groups list --json shows the renamed group")
    h.check(ctl_json_ok(env, "connectors", "list")["connectors"][0]["id"] == cid,
            "connectors list --json")
    ctl_json_ok(env, "connectors", "move", cid, "g2")
    d = ctl_json_ok(env, "groups", "delete", "g2", "--force")
    h.check(d.get("moved_connectors") == [cid], f"groups delete --json names moved ones: {d}")
    ctl_json_ok(env, "apps", "create", "web", "--backend", "127.0.0.1:9",
                 "--hostname", "web.contoso.test")
    ctl_json_ok(env, "apps", "update", "web", "--idle-timeout-ms", 5000)
    ctl_json_ok(env, "groups", "create", "g3")
    ctl_json_ok(env, "apps", "assign", "web", "g3")
    apps = ctl_json_ok(env, "apps", "list")["apps"]
    h.check(apps[0]["group"] == "g3" and apps[0]["idle_timeout_ms"] == 5000,
            "apps list --json shows the update and assignment")
    ctl_json_ok(env, "apps", "delete", "web")
    tok = ctl_json_ok(env, "tokens", "create", "--group", "g3", "--ttl", 600)
    h.check({"id", "token", "group", "expires_at"} <= set(tok) and tok["group"] == "g3"
            and tok["token"].startswith(f"art1.{tok['id']}."),
            f"tokens create --json carries id, token, group, expires_at: {sorted(tok)}")
    h.check(tok["id"] in [x["id"] for x in ctl_json_ok(env, "tokens", "list")["tokens"]],
            "tokens list --json")
    ctl_json_ok(env, "tokens", "revoke", tok["id"])
    out_prefix = os.path.join(env.dir, "alice")
    rc, out, err = env.ctl("users", "issue", "alice", "--group", "staff", "--out", out_prefix,
                           json_out=True)
    u = json.loads(out)
    h.check(u == {"name": "alice", "groups": ["staff"], "cert_file": out_prefix + ".crt",
                  "key_file": out_prefix + ".key"}, f"users issue --json: {u}")
    h.check("PRIVATE KEY" not in out + err, "users issue --json never prints the key")
    h.check(stat.S_IMODE(os.stat(out_prefix + ".key").st_mode) == 0o600,
            "users issue --json wrote the key 0600")
    ctl_json_ok(env, "connectors", "delete", cid)
    c = ctl_json_ok(env, "completion", "bash")
    h.check(c["shell"] == "bash" and "complete -F _apprelayctl apprelayctl" in c["script"],
            "completion bash --json is {shell, script}")
    man = ctl_json_ok(env, "man")
    h.check(man["man"].count("\n.SH ") >= 8, "man --json is {man: <roff>}")

    # ---- 2. exit codes ------------------------------------------------------------------------
    sock = env.relay_info["admin_socket"]
    env.ctl("groups", "create", "dup")
    _, out, err = env.ctl("groups", "create", "dup", expect_rc=RC_REFUSED)
    h.check(out == "" and err.startswith("error: ") and "dup" in err,
            f"a conflict exits 1 with error: on stderr: {err.strip()!r}")
    ctl_json_refused(env, "groups", "create", "dup", status=409)
    env.ctl("apps", "delete", "nosuch", expect_rc=RC_REFUSED)
    ctl_json_refused(env, "apps", "delete", "nosuch", status=404)

    _, out, err = env.ctl("groups", "list", "--no-such-flag", expect_rc=RC_USAGE)
    h.check(out == "" and "--no-such-flag" in err, f"an unknown flag exits 2: {err.strip()!r}")
    msg = json_error(env.ctl("groups", "list", "--no-such-flag", json_out=True,
                             expect_rc=RC_USAGE)[2], 0, "an unknown flag with --json")
    h.check("--no-such-flag" in msg, f"the JSON error names the flag: {msg!r}")
    env.ctl("apps", "update", "x", "--access", "open", expect_rc=RC_USAGE)
    env.ctl("apps", "update", "x", "--access", "open", json_out=True, expect_rc=RC_USAGE)

    gone = os.path.join(env.dir, "no-such-dir", "admin.sock")
    r = raw_ctl(gone, "status")
    h.check(r.returncode == RC_UNREACHABLE and gone in r.stderr,
            f"a missing socket path exits 3: {r.returncode} {r.stderr.strip()!r}")
    r = raw_ctl(gone, "--json", "tenants", "list")
    h.check(r.returncode == RC_UNREACHABLE and r.stdout == "",
            f"a missing socket path with --json exits 3: {r.returncode}")
    json_error(r.stderr, 0, "a missing socket path with --json")
    dead = os.path.join(env.dir, "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(dead)  # bound, never listening: connect() is refused
    try:
        r = raw_ctl(dead, "--json", "groups", "list")
        h.check(r.returncode == RC_UNREACHABLE and "connection refused" in r.stderr,
                f"a socket nothing listens on exits 3: {r.returncode} {r.stderr.strip()!r}")
        json_error(r.stderr, 0, "a socket nothing listens on with --json")
    finally:
        s.close()

    fake = answer_503(os.path.join(env.dir, "503.sock"))
    try:
        r = raw_ctl(fake.path, "groups", "create", "x")
        h.check(r.returncode == RC_SERVER and r.stderr == "error: store unavailable: no quorum\n",
                f"a 503 exits 4: {r.returncode} {r.stderr.strip()!r}")
        r = raw_ctl(fake.path, "--json", "groups", "create", "x")
        h.check(r.returncode == RC_SERVER and r.stdout == "", f"a 503 with --json exits 4: {r.returncode}")
        h.check(json_error(r.stderr, 503, "a 503 with --json") == "store unavailable: no quorum",
                "the 503's message is carried")
    finally:
        fake.close()

    # The relay still answers: nothing above broke it.
    h.check(json.loads(raw_ctl(sock, "--json", "status").stdout)["config_version"] > 0,
            "the relay still answers")


if __name__ == "__main__":
    sys.exit(h.run_test("ctl", body))
