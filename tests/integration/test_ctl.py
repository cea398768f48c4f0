#!/usr/bin/env python3
"""apprelayctl against a real relay.

json (integration_ctl): --json on every command and the documented exit codes (README.md
"apprelayctl", apprelayctl(1) EXIT STATUS):
1. Every command with --json: on success stdout is one JSON value (tokens create gives the
   API's {id, token, group, expires_at, ...}; metrics {metrics}; users issue {name, groups, cert_file,
   key_file} and writes the key 0600 without printing it); on failure stdout is empty and stderr
   is {"error": "...", "status": N}.
2. Exit codes, each with and without --json: 0 success; 1 a conflict (group exists, 409) and a
   not-found (unknown app, 404); 2 an unknown flag and a bad choice; 3 a socket path with no file
   and a socket file nothing listens on; 4 an answer 503 (a stand-in server on a UNIX socket
   that answers every request so, as the relay does when its store is unavailable).

World: 1 relay worker, tenant contoso, one enrolled connector (never started).

completion (integration_ctl_completion): the bash completion script the build generated
(control/ctl/share/apprelayctl, what meson installs), sourced in a fresh bash whose completion
function is driven with COMP_WORDS/COMP_CWORD/COMP_LINE as bash sets them. Where a command takes
the name of an existing object it offers the relay's names, asked through `apprelayctl __names`
with the --socket/--url/--token/--tenant already on the line: exactly the groups, apps,
connectors, valid tokens and tenants the relay lists, never a name it does not have, another
tenant's only with that --tenant, and a deleted group no more. With the relay unreachable (no
socket file, a socket nothing listens on, a SIGSTOPped relay that accepts but never answers, the
relay stopped) completion returns within 3 s, offers nothing and writes nothing.
World: 1 relay worker with an admin TCP listener, tenants contoso and fabrikam, one enrolled
connector (never started)."""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

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


# ---------------------------------------------------------------------------------------------
# completion
# ---------------------------------------------------------------------------------------------

ADMIN_TOKEN = "completion-test-token-0123456789"
COMPLETION_SCRIPT = os.path.join(os.path.dirname(h.CTL_BIN), "share", "apprelayctl")

# Sources the script, finds the function `complete -p apprelayctl` names and calls it as bash
# does on TAB; the offers go to $OFFERS, one a line, so that anything on stdout or stderr is
# what the user would see on the terminal. $1: script, $2: COMP_LINE, then COMP_WORDS.
DRIVER = r"""
source "$1" || exit 90
spec=$(complete -p apprelayctl) || exit 91
fn=${spec#*-F }
fn=${fn%% *}
COMP_LINE=$2
shift 2
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$fn"
printf '%s\n' "${COMPREPLY[@]}" > "$OFFERS"
"""


def complete(env, words, line=None):
    """What TAB offers after `words` (COMP_WORDS, the last the word being typed; line: COMP_LINE
    when bash split it at COMP_WORDBREAKS). Returns (offers, terminal output, seconds)."""
    offers = os.path.join(env.dir, "offers")
    if os.path.exists(offers):
        os.unlink(offers)
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("APPRELAY_ADMIN_SOCKET", "APPRELAY_ADMIN_TOKEN")}
    run_env["PATH"] = os.path.dirname(h.CTL_BIN) + os.pathsep + run_env.get("PATH", "")
    run_env["OFFERS"] = offers
    line = " ".join(words) if line is None else line
    t0 = time.monotonic()
    try:
        r = subprocess.run(["bash", "--norc", "--noprofile", "-c", DRIVER, "driver",
                            COMPLETION_SCRIPT, line] + words,
                           capture_output=True, text=True, env=run_env, timeout=10)
    except subprocess.TimeoutExpired:
        raise h.TestFailure(f"{' '.join(words[1:])!r}<TAB> still runs after 10 s: the shell hangs")
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise h.TestFailure(f"completion driver exit {r.returncode}: {r.stderr.strip()}")
    with open(offers) as f:
        got = [w for w in f.read().split("\n") if w]
    return got, r.stdout + r.stderr, took


def offered(env, words, line=None):
    """The offers, checking that completion wrote nothing on the terminal."""
    got, terminal, _ = complete(env, words, line)
    typed = " ".join(words[1:]).replace(env.dir + os.sep, "")
    h.check(terminal == "", f"{typed!r}<TAB> writes nothing on the terminal ({terminal.strip()!r})")
    return got


def names_listed(env, what, key, field="name", tenant="contoso"):
    return sorted(o[field] for o in env.ctl_json(what, "list", tenant=tenant)[key])


def completion_body(env):
    h.check(os.path.isfile(COMPLETION_SCRIPT), f"the build generated {COMPLETION_SCRIPT}")
    topo = h.Topology(workers=1)
    topo.tenants.append(dict(name="contoso"))
    plain_toml = topo.to_toml
    topo.to_toml = lambda sd: plain_toml(sd) + (f'\n[admin]\nlisten = "127.0.0.1:0"\n'
                                                f'token = "{ADMIN_TOKEN}"\n')
    info = env.start_relay(topo)
    sock, port = info["admin_socket"], info["admin_port"]
    h.check(port > 0, f"admin TCP listener on 127.0.0.1:{port}")
    for g in ("g-alpha", "g-beta"):
        env.ctl("groups", "create", g)
    for a in ("web-one", "web-two"):
        env.ctl("apps", "create", a, "--backend", "127.0.0.1:9", "--hostname",
                f"{a}.contoso.test")
    cid = env.enroll("c1")  # uses up its token
    valid = env.ctl_json("tokens", "create")["id"]
    revoked = env.ctl_json("tokens", "create")["id"]
    env.ctl("tokens", "revoke", revoked)
    env.ctl("groups", "create", "fab-only", tenant="fabrikam")
    groups = names_listed(env, "groups", "groups")
    h.check({"g-alpha", "g-beta"} <= set(groups) and "fab-only" not in groups,
            f"contoso's groups: {groups}")
    ctl = ["apprelayctl", "--socket", sock, "--tenant", "contoso"]

    # ---- names where a command takes one --------------------------------------------------------
    got = offered(env, ctl + ["groups", "delete", ""])
    h.check(sorted(got) == groups, f"groups delete <TAB>: the relay's groups {got}")
    h.check("g-gamma" not in got and "fab-only" not in got,
            "no group that does not exist in the tenant (g-gamma, fabrikam's fab-only)")
    h.check(offered(env, ctl + ["groups", "delete", "g-a"]) == ["g-alpha"],
            "groups delete g-a<TAB> -> g-alpha")
    h.check(offered(env, ctl + ["groups", "rename", ""]) == got, "groups rename <TAB>: groups")
    got = offered(env, ctl + ["apps", "update", ""])
    h.check(sorted(got) == ["web-one", "web-two"], f"apps update <TAB>: the relay's apps {got}")
    h.check(sorted(offered(env, ctl + ["apps", "delete", "web-t"])) == ["web-two"],
            "apps delete web-t<TAB> -> web-two")
    h.check(sorted(offered(env, ctl + ["apps", "update", "web-one", "--group", ""])) == groups,
            "apps update web-one --group <TAB>: groups")
    h.check(sorted(offered(env, ctl + ["apps", "assign", "web-one", ""])) == groups,
            "apps assign web-one <TAB>: groups (its second argument)")
    h.check(offered(env, ctl + ["apps", "create", ""]) == [],
            "apps create <TAB>: nothing (a new name)")
    h.check(offered(env, ctl + ["connectors", "move", ""]) == [cid],
            f"connectors move <TAB>: the connector's id {cid}")
    h.check(sorted(offered(env, ctl + ["connectors", "move", cid, ""])) == groups,
            "connectors move ID <TAB>: groups")
    h.check(offered(env, ctl + ["tokens", "revoke", ""]) == [valid],
            f"tokens revoke <TAB>: only the valid token {valid} (not the used or revoked one)")
    tenants = offered(env, ["apprelayctl", "--socket", sock, "--tenant", ""])
    h.check({"contoso", "fabrikam"} <= set(tenants), f"--tenant <TAB>: the tenants {tenants}")

    # ---- the connection options on the line ---------------------------------------------------
    got = offered(env, ["apprelayctl", "--socket", sock, "--tenant", "fabrikam", "groups",
                        "delete", ""])
    h.check("fab-only" in got and "g-alpha" not in got, f"with --tenant fabrikam: {got}")
    got = offered(env, ["apprelayctl", "groups", "delete", "--tenant", "contoso", "--socket",
                        sock, "g-"])
    h.check(sorted(got) == ["g-alpha", "g-beta"], f"options after the command: {got}")
    # --url http://127.0.0.1:PORT and --tenant=contoso: bash splits the words at ":" and "=".
    url_words = ["--url", "http", ":", "//127.0.0.1", ":", str(port), "--token", ADMIN_TOKEN,
                 "--tenant", "=", "contoso", "groups", "delete", ""]
    url_line = (f"apprelayctl --url http://127.0.0.1:{port} --token {ADMIN_TOKEN} "
                f"--tenant=contoso groups delete ")
    got = offered(env, ["apprelayctl"] + url_words, url_line)
    h.check(sorted(got) == groups, f"over --url with --token: {got}")
    bad = [w if w != ADMIN_TOKEN else "wrong-token" for w in url_words]
    got = offered(env, ["apprelayctl"] + bad, url_line.replace(ADMIN_TOKEN, "wrong-token"))
    h.check(got == [], f"a wrong --token: nothing (401) {got}")

    # ---- the names are the relay's now ---------------------------------------------------------
    env.ctl("groups", "delete", "g-beta")
    got = offered(env, ctl + ["groups", "delete", ""])
    h.check("g-beta" not in got and "g-alpha" in got, f"a deleted group is no longer offered {got}")

    # ---- a relay that does not answer --------------------------------------------------------
    def nothing_quickly(words, what, line=None):
        got, terminal, took = complete(env, words, line)
        h.check(got == [] and terminal == "" and took < 3.0,
                f"{what}: returns in {took:.2f}s (< 3 s), offers {got}, writes "
                f"{terminal.strip()!r}")
        return took

    missing = os.path.join(env.dir, "no-such-dir", "admin.sock")
    nothing_quickly(["apprelayctl", "--socket", missing, "groups", "delete", ""],
                    "no socket file")
    dead = os.path.join(env.dir, "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(dead)  # bound, never listening: connect() is refused
    try:
        nothing_quickly(["apprelayctl", "--socket", dead, "apps", "update", ""],
                        "a socket nothing listens on")
    finally:
        s.close()
    os.kill(env.relay.pid, signal.SIGSTOP)  # the kernel still accepts; nobody answers
    try:
        took = nothing_quickly(ctl + ["apps", "update", ""], "a SIGSTOPped relay")
        h.check(took >= 1.5, f"it waited for the relay ({took:.2f}s) before giving up")
    finally:
        os.kill(env.relay.pid, signal.SIGCONT)
    h.check(sorted(offered(env, ctl + ["apps", "update", ""])) == ["web-one", "web-two"],
            "the relay continued: apps offered again")
    rc = env.relay.stop()
    h.check(rc == 0, f"relay stopped (exit {rc})")
    nothing_quickly(ctl + ["groups", "delete", ""], "the relay stopped")
    nothing_quickly(["apprelayctl"] + url_words, "--url with the relay stopped", url_line)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "json"
    fn = {"json": body, "completion": completion_body}[mode]
    sys.exit(h.run_test("ctl" if mode == "json" else f"ctl_{mode}", fn))
