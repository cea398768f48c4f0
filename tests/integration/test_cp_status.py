#!/usr/bin/env python3
"""Control plane status, versions, purge and metrics (control/API.md, DESIGN.md connectors).

Phase 1 (relay with [connectors] inactive_purge_s = 2):
- a connector is `active` (with its tunnels and version) while it holds a tunnel; `status` counts
  it; after SIGKILL it is `inactive` within 3 s with 0 tunnels, and `status` counts it inactive;
- it is purged: gone from `connectors list` within 5 s of the kill (connector_purged in the
  log), while the other, active, connector stays; the purged identity can no longer connect
  (tunnel_unknown_connector / tunnel_cert_rejected move);
- metrics: `apprelayctl metrics` and the raw `/metrics` body (Content-Type text/plain;
  version=0.0.4) parse with a strict Prometheus text 0.0.4 parser; apprelay_streams_opened_total
  grows by exactly the number of streams sent; per-worker samples sum to the total;
  apprelay_connectors / apprelay_config_version agree with `status`.
Phase 2 (same state dir and tunnel port, restarted with min_version 9.0.0, latest_version 9.1.0):
- `status` (JSON and text) shows latest 9.1.0 and minimum 9.0.0;
- the purged c1 identity is still refused (revocation persisted in the store);
- the running connector (version 0.1.0) reconnects, is refused at HELLO and exits with code 4,
  its log naming both versions; a freshly enrolled one is refused the same way;
  tunnel_version_refused counts them, and no tunnel comes up.

World: 2 relay workers, echo backend, app web, tenant contoso."""
import json
import math
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# ---- strict Prometheus text format 0.0.4 parser ----------------------------------------------
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _parse_value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", s):
        raise h.TestFailure(f"{where}: bad sample value {s!r}")
    return float(s)


def _parse_labels(s, where):
    """s is the text between { and }; returns a tuple of (name, value) in order."""
    out = []
    i = 0
    while i < len(s):
        m = re.compile(_LABEL).match(s, i)
        if not m:
            raise h.TestFailure(f"{where}: bad label name at {s[i:]!r}")
        name = m.group(0)
        i = m.end()
        if s[i:i + 2] != '="':
            raise h.TestFailure(f"{where}: expected =\" after label {name}")
        i += 2
        val = []
        while True:
            if i >= len(s):
                raise h.TestFailure(f"{where}: unterminated label value for {name}")
            c = s[i]
            if c == "\\":
                nxt = s[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise h.TestFailure(f"{where}: bad escape \\{nxt} in label {name}")
                val.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise h.TestFailure(f"{where}: newline in label value")
            else:
                val.append(c)
                i += 1
        if name in dict(out):
            raise h.TestFailure(f"{where}: duplicate label {name}")
        out.append((name, "".join(val)))
        if i < len(s):
            if s[i] != ",":
                raise h.TestFailure(f"{where}: expected , between labels at {s[i:]!r}")
            i += 1
    return tuple(out)


def parse_prometheus(text):
    """Returns {family: {"type", "help", "samples": {(name, labels): value}}}. Raises on any
    deviation from the text format 0.0.4: bad names, escapes or values, TYPE after samples,
    repeated HELP/TYPE, samples of a family not contiguous, duplicate series, no final newline,
    samples without a TYPE of their family, negative counters."""
    if not text.endswith("\n"):
        raise h.TestFailure("metrics: body does not end with a newline")
    fams = {}
    done = set()      # families whose sample block is over
    current = None    # family of the previous sample
    series = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"metrics line {n} {line!r}"
        if line == "":
            raise h.TestFailure(f"{where}: empty line")
        if line.startswith("#"):
            m = re.fullmatch(rf"# (HELP|TYPE) ({_NAME}) ?(.*)", line)
            if not m:
                if line.startswith("# HELP") or line.startswith("# TYPE"):
                    raise h.TestFailure(f"{where}: malformed {line[2:6]}")
                continue  # a plain comment
            kind, name, rest = m.groups()
            f = fams.setdefault(name, {"type": None, "help": None, "samples": {}})
            if f["samples"] or name in done:
                raise h.TestFailure(f"{where}: {kind} after samples of {name}")
            if kind == "HELP":
                if f["help"] is not None:
                    raise h.TestFailure(f"{where}: second HELP for {name}")
                if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                    raise h.TestFailure(f"{where}: bad escape in HELP")
                f["help"] = rest
            else:
                if f["type"] is not None:
                    raise h.TestFailure(f"{where}: second TYPE for {name}")
                if rest not in _TYPES:
                    raise h.TestFailure(f"{where}: unknown type {rest!r}")
                f["type"] = rest
            continue
        m = re.fullmatch(rf"({_NAME})(\{{(.*)\}})? (\S+)( -?\d+)?", line)
        if not m:
            raise h.TestFailure(f"{where}: malformed sample")
        name, _, labels, value = m.group(1), m.group(2), m.group(3), m.group(4)
        labels = _parse_labels(labels, where) if labels else ()
        fam = name
        if name not in fams:
            for suf in ("_bucket", "_sum", "_count"):
                if name.endswith(suf) and name[:-len(suf)] in fams:
                    fam = name[:-len(suf)]
        if fam not in fams or fams[fam]["type"] is None:
            raise h.TestFailure(f"{where}: sample of {name} without a TYPE")
        if fam != current:
            if fam in done:
                raise h.TestFailure(f"{where}: samples of {fam} are not contiguous")
            if current is not None:
                done.add(current)
            current = fam
        key = (name, tuple(sorted(labels)))
        if key in series:
            raise h.TestFailure(f"{where}: duplicate series")
        series.add(key)
        v = _parse_value(value, where)
        if fams[fam]["type"] == "counter" and not (v >= 0):
            raise h.TestFailure(f"{where}: negative counter")
        fams[fam]["samples"][key] = v
    return fams


def value(fams, name, **labels):
    return fams[name]["samples"].get((name, tuple(sorted(labels.items()))))


def raw_metrics(env):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(env.relay_info["admin_socket"])
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    resp = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        resp += b
    s.close()
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, body.decode()


# ---- helpers -------------------------------------------------------------------------------

def conn_by_name(env):
    return {c["name"]: c for c in env.ctl_json("connectors", "list")["connectors"]}


def echo(env, seed):
    c = h.UserClient(env.user_port, "web.contoso.test", env.pki.path("users-ca.crt"))
    h.echo_roundtrip(c, h.pattern(8 * 1024, seed=seed), half_close=True, timeout=20)
    c.close()


def body(env):
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}")],
                        connectors=(), workers=2, with_fabrikam=False)
    topo.connector_settings["inactive_purge_s"] = 2
    info = env.start_relay(topo)
    workers = info["workers"]
    procs = {}
    for cid in ("c1", "c2"):  # enrolled and started at once: an idle one is purged after 2 s
        env.enroll(cid)
        procs[cid] = env.start_connector(cid)
    env.wait_tunnels(workers, connector="c1")
    env.wait_tunnels(workers, connector="c2")

    cs = conn_by_name(env)
    for cid in ("c1", "c2"):
        c = cs[cid]
        h.check(c["status"] == "active" and c["tunnels"] == workers and c["version"] == "0.1.0",
                f"{cid}: active, {c['tunnels']} tunnels, version {c['version']}")
    st = env.ctl_json("status")
    h.check(st["connectors"] == {"active": 2, "inactive": 0} and st["tunnels_up"] == 2 * workers,
            f"status: connectors {st['connectors']}, tunnels_up {st['tunnels_up']}")

    # ---- metrics ---------------------------------------------------------------------------
    fams = parse_prometheus(env.ctl("metrics")[1])
    h.check(len(fams) >= 20, f"apprelayctl metrics parses strictly: {len(fams)} families")
    opened0 = value(fams, "apprelay_streams_opened_total")
    h.check(opened0 is not None, f"apprelay_streams_opened_total = {opened0}")
    n = 12
    for i in range(n):
        echo(env, i)
    status, hdrs, text = raw_metrics(env)
    h.check(status == 200 and hdrs.get("content-type") == "text/plain; version=0.0.4",
            f"GET /metrics -> {status}, Content-Type {hdrs.get('content-type')!r}")
    fams = parse_prometheus(text)
    h.check(True, f"/metrics body parses strictly: {len(fams)} families")
    opened1 = value(fams, "apprelay_streams_opened_total")
    h.check(opened1 - opened0 == n, f"apprelay_streams_opened_total {opened0} -> {opened1} "
                                    f"(+{n} streams)")
    for fam, f in fams.items():
        if f["type"] == "counter":
            per = [v for (nm, lb), v in f["samples"].items() if lb and lb[0][0] == "worker"]
            tot = f["samples"].get((fam, ()))
            if len(per) != workers or tot != sum(per):
                raise h.TestFailure(f"{fam}: {len(per)} worker samples summing to {sum(per)}, "
                                    f"total {tot}")
    h.check(True, f"every counter has {workers} worker samples that sum to its total")
    h.check(fams["apprelay_streams_opened_total"]["type"] == "counter" and
            fams["apprelay_tunnels_up"]["type"] == "gauge",
            "streams_opened is a counter, tunnels_up a gauge")
    h.check(value(fams, "apprelay_tunnels_up") == 2 * workers,
            f"apprelay_tunnels_up {value(fams, 'apprelay_tunnels_up')} == {2 * workers}")
    act = value(fams, "apprelay_connectors", tenant="contoso", group="Default", status="active")
    h.check(act == 2, f'apprelay_connectors{{tenant="contoso",group="Default",status="active"}} '
                      f'== {act} (2)')
    cv = env.ctl_json("status")["config_version"]
    h.check(value(fams, "apprelay_config_version") == cv,
            f"apprelay_config_version {value(fams, 'apprelay_config_version')} == status {cv}")
    # the strict parser does refuse what it should
    for bad in ("x 1", "# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",
                "# TYPE x counter\nx{a=1} 1\n", "# TYPE x counter\nx 1\n# TYPE x counter\n",
                "# TYPE x gauge\nx one\n"):
        try:
            parse_prometheus(bad)
        except h.TestFailure:
            continue
        raise h.TestFailure(f"strict parser accepted {bad!r}")
    h.check(True, "the parser rejects malformed samples (self-check)")

    # ---- SIGKILL -> inactive -> purged ------------------------------------------------------
    c1id = env.connector_ids["c1"]
    t_kill = time.monotonic()
    procs["c1"].stop(sig=9)
    h.wait_until(lambda: conn_by_name(env)["c1"]["status"] == "inactive", 3,
                 "c1 inactive after SIGKILL")
    secs = time.monotonic() - t_kill
    c = conn_by_name(env)["c1"]
    h.check(c["tunnels"] == 0, f"c1 inactive {secs:.2f} s after SIGKILL, tunnels {c['tunnels']}")
    st = env.ctl_json("status")
    h.check(st["connectors"] == {"active": 1, "inactive": 1},
            f"status connectors {st['connectors']} == active 1, inactive 1")
    h.wait_until(lambda: "c1" not in conn_by_name(env), 6, "c1 purged from connectors list")
    secs = time.monotonic() - t_kill
    h.check(secs <= 5.0, f"c1 gone from connectors list {secs:.2f} s after SIGKILL (<= 5 s)")
    h.check(f"event=connector_purged connector={c1id} inactive_s=2" in env.relay.log_text(),
            "relay log: connector_purged names c1 and inactive_s=2")
    time.sleep(2.5)
    cs = conn_by_name(env)
    h.check(list(cs) == ["c2"] and cs["c2"]["status"] == "active",
            f"active c2 is never purged: {list(cs)}")
    st = env.ctl_json("status")
    h.check(st["connectors"] == {"active": 1, "inactive": 0}, f"status {st['connectors']}")
    rej0 = env.counter("tunnel_unknown_connector") + env.counter("tunnel_cert_rejected")
    env.start_connector("c1", name="connector-c1-again")
    h.wait_until(lambda: env.counter("tunnel_unknown_connector") +
                 env.counter("tunnel_cert_rejected") > rej0, 6,
                 "the purged c1's identity is refused on the tunnel listener")
    h.check(env.stats()["connectors"].get("c1", {}).get("tunnels", 0) == 0,
            "purged c1 holds no tunnel")

    # ---- phase 2: version gating ------------------------------------------------------------
    tunnel_port = info["tunnel_port"]
    rc = env.relay.stop()
    h.check(rc == 0, f"relay exits 0 after SIGTERM ({rc})")
    os.unlink(env.stats_path)
    topo.connector_settings = {"min_version": "9.0.0", "latest_version": "9.1.0"}
    orig = topo.to_toml
    topo.to_toml = lambda sd: orig(sd).replace(
        'tunnel_listen = "127.0.0.1:0"', f'tunnel_listen = "127.0.0.1:{tunnel_port}"')
    env.start_relay(topo, provision=False, name="relay2")
    st = env.ctl_json("status")
    h.check(st["latest_connector_version"] == "9.1.0" and st["min_connector_version"] == "9.0.0",
            f"status --json: latest {st['latest_connector_version']}, "
            f"min {st['min_connector_version']}")
    text = env.ctl("status")[1]
    h.check("connector version  latest 9.1.0, minimum 9.0.0" in text,
            "status text: 'connector version  latest 9.1.0, minimum 9.0.0'")
    # c2 (still running, version 0.1.0) reconnects to the restarted relay and is refused.
    c2 = procs["c2"]
    h.wait_until(lambda: not c2.alive(), 40, "c2 exits after its version is refused")
    rc = c2.p.returncode
    h.check(rc == 4, f"c2 exit code {rc} == 4")
    want = "connector version 0.1.0 is older than the minimum 9.0.0"
    h.check(want in c2.log_text(), f"c2 log names both versions: {want!r}")
    # The purge revoked c1's certificate for good: still refused by the restarted relay.
    rej = env.counter("tunnel_unknown_connector") + env.counter("tunnel_cert_rejected")
    env.start_connector("c1", name="connector-c1-third")
    h.wait_until(lambda: env.counter("tunnel_unknown_connector") +
                 env.counter("tunnel_cert_rejected") > rej, 6,
                 "the purged c1 is still refused after the restart")
    h.check(True, "purged c1 still refused after the restart (revocation persisted)")
    env.enroll("c3")
    c3 = env.start_connector("c3")
    h.wait_until(lambda: not c3.alive(), 15, "c3 exits after its version is refused")
    h.check(c3.p.returncode == 4, f"fresh c3 exit code {c3.p.returncode} == 4")
    line = next((ln for ln in c3.log_text().splitlines() if "connector_refused" in ln), "")
    h.check(want in line, f"c3 log: {line!r}")
    env.wait_counter("tunnel_version_refused", 2, timeout=3)  # stats file: every 200 ms
    h.check(env.counter("tunnel_version_refused") >= 2,
            f"tunnel_version_refused = {env.counter('tunnel_version_refused')} (>= 2)")
    h.check(env.stats().get("tunnels_up", 0) == 0, "no tunnel up on the gated relay")
    cs = conn_by_name(env)
    h.check(all(c["status"] == "inactive" for c in cs.values()) and set(cs) == {"c2", "c3"},
            f"refused connectors stay inactive: {[(k, v['status']) for k, v in cs.items()]}")


if __name__ == "__main__":
    sys.exit(h.run_test("cp_status", body))
