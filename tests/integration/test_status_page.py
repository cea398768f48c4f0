#!/usr/bin/env python3
"""The admin listener's status page (GET /, control/admin/status_page.html) in headless Chromium.

World: relay with the admin TCP listener and a bearer token; tenant contoso with group Default
(connector d1, app hr) and group Site (connectors s1, s2, app web) whose region is the HTML
`<img src=x onerror=alert(1)>` (names are [A-Za-z0-9._-]; a region is any 64 printable
characters, so it is the field that can carry markup).

Checks:
- GET / over TCP without a token: 200 text/html with the Content-Security-Policy, nosniff and
  no-store headers; GET /v1/overview without the token is 401, with it 200; over the UNIX
  socket /v1/overview needs no token.
- The page opened as /?refresh=1#token=T (Chromium --dump-dom) lists both groups and their
  three connectors as active with version 0.1.0 and the group's region, the apps with their
  groups, the refresh period, and the alert for group Default (1 active connector).
- The region is text: the dumped DOM holds `&lt;img src=x onerror=alert(1)&gt;` and no <img>
  element at all.
- SIGKILL s1 (by pid): the page shows s1 inactive, and a new alert for Site, within the
  relay's liveness window (1 s) plus one refresh period plus a Chromium start-up.
- A wrong token and no token: the page says "Access denied" and shows no tenant, connector or
  alert.
- A screenshot (1280x900) stays in the temp dir, and in $APPRELAY_ARTIFACT_DIR when set.
Skips (exit 77) only when Chromium is not installed or cannot start headless at all."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SKIP = 77
TOKEN = "status-page-token-7f3a9c2e41"
INJECTED = "<img src=x onerror=alert(1)>"
CHROMIUM_TIMEOUT_S = 40  # one headless run (start, load, a few refreshes, dump)


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium, one process per look at the page, each with a fresh profile."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.runs = 0

    def run(self, url, extra, budget_ms):
        self.runs += 1
        profile = tempfile.mkdtemp(prefix=f"chromium-{self.runs}-", dir=self.workdir)
        env = dict(os.environ, HOME=profile)
        argv = [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        argv += list(extra) + [url]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            out, err = p.communicate(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # our own Chromium and its helpers only
            p.communicate()
            raise h.TestFailure(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {url}")
        shutil.rmtree(profile, ignore_errors=True)
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def dump_dom(self, url, budget_ms=3000):
        rc, out, err = self.run(url, ["--dump-dom"], budget_ms)
        if rc != 0 or "<html" not in out:
            raise h.TestFailure(f"chromium --dump-dom exit {rc}: {err.strip()[-2000:]}")
        return out

    def screenshot(self, url, path, budget_ms=3000):
        rc, _, err = self.run(url, [f"--screenshot={path}", "--window-size=1280,900",
                                    "--hide-scrollbars"], budget_ms)
        if rc != 0 or not os.path.exists(path):
            raise h.TestFailure(f"chromium --screenshot exit {rc}: {err.strip()[-2000:]}")


def chromium_works(browser):
    """True, or the reason Chromium cannot render a page here."""
    try:
        rc, out, err = browser.run("data:text/html,<p id=x>ok</p>", ["--dump-dom"], 500)
    except (OSError, h.TestFailure) as e:
        return str(e)
    if rc != 0 or 'id="x"' not in out:
        return f"chromium --headless=new exit {rc}: {err.strip()[-1000:]}"
    return True


def http_get(port, path, token=None, unix_path=None):
    """One HTTP/1.1 GET on loopback TCP (or the admin UNIX socket): (status, headers, body)."""
    if unix_path:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(unix_path)
    else:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
              .encode())
    resp = b""
    for _ in range(10000):
        b = s.recv(65536)
        if not b:
            break
        resp += b
    s.close()
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, body.decode()


def rows(dom):
    """{connector id: (status, version, region cell text)} from the dumped DOM."""
    out = {}
    for m in re.finditer(r'<tr data-connector="([0-9a-f]+)" data-status="(\w+)">(.*?)</tr>', dom,
                         re.S):
        version = re.search(r'<td class="version[^"]*">([^<]*)</td>', m.group(3))
        region = re.search(r'<td class="region">([^<]*)</td>', m.group(3))
        out[m.group(1)] = (m.group(2), version and version.group(1),
                           region and region.group(1))
    return out


def alerts(dom):
    return re.findall(r'<li class="alert" data-kind="(\w+)">([^<]*)</li>', dom)


def body(env, binary):
    browser = Browser(binary, env.dir)
    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}"),
                                  ("hr", "hr.contoso.test", f"127.0.0.1:{echo_port}")],
                        connectors=(), workers=2, with_fabrikam=False)
    orig = topo.to_toml
    topo.to_toml = lambda sd: orig(sd) + (f'\n[admin]\nlisten = "127.0.0.1:0"\n'
                                         f'token = "{TOKEN}"\n')
    topo.apps[0]["group"] = "Site"
    for cid, group in (("s1", "Site"), ("s2", "Site"), ("d1", "Default")):
        topo.connectors.append(dict(tenant="contoso", id=cid, group=group))
    info = env.start_relay(topo, provision=False)
    port = info["admin_port"]
    h.check(port > 0, f"admin TCP listener on 127.0.0.1:{port}")
    env.ctl("groups", "create", "Site", "--region", INJECTED)  # before provision: its apps
    env.provision(topo)
    ids = dict(env.connector_ids)
    procs = {cid: env.start_connector(cid) for cid in ids}
    for cid in ids:
        env.wait_tunnels(topo.workers, connector=cid)

    # ---- the page itself and who may read what -----------------------------------------------
    status, hdrs, page = http_get(port, "/")
    h.check(status == 200 and hdrs.get("content-type") == "text/html; charset=utf-8",
            f"GET / without a token -> {status} {hdrs.get('content-type')}")
    csp = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
           "connect-src 'self'; img-src data:")
    h.check(hdrs.get("content-security-policy") == csp,
            f"Content-Security-Policy: {hdrs.get('content-security-policy')}")
    h.check(hdrs.get("x-content-type-options") == "nosniff" and
            hdrs.get("cache-control") == "no-store",
            f"X-Content-Type-Options {hdrs.get('x-content-type-options')}, Cache-Control "
            f"{hdrs.get('cache-control')}")
    h.check("contoso" not in page and ids["s1"] not in page, "the page itself carries no data")
    status, _, _ = http_get(port, "/v1/overview")
    h.check(status == 401, f"GET /v1/overview without the token -> {status}")
    status, _, text = http_get(port, "/v1/overview", token=TOKEN)
    ov = json.loads(text)
    h.check(status == 200 and [t["name"] for t in ov["tenants"]] == ["contoso"],
            f"GET /v1/overview with the token -> {status}, tenants "
            f"{[t['name'] for t in ov['tenants']]}")
    status, _, _ = http_get(0, "/v1/overview", unix_path=info["admin_socket"])
    h.check(status == 200, f"GET /v1/overview on the UNIX socket, no token -> {status}")

    # ---- the rendered page ------------------------------------------------------------------
    base = f"http://127.0.0.1:{port}/"
    url = f"{base}?refresh=1#token={TOKEN}"
    dom = browser.dump_dom(url)
    got = rows(dom)
    want = {ids["s1"]: ("active", "0.1.0", INJECTED), ids["s2"]: ("active", "0.1.0", INJECTED),
            ids["d1"]: ("active", "0.1.0", "-")}
    # The DOM serializer escapes text: compare the region cells in their escaped form.
    esc = INJECTED.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    want = {k: (s, v, esc if r == INJECTED else r) for k, (s, v, r) in want.items()}
    h.check(got == want, f"connectors on the page: {got}")
    for cid in ids:
        h.check(f'title="{ids[cid]}">{cid}</td>' in dom, f"connector {cid} listed by name")
    h.check(re.search(r'data-tenant="contoso"', dom) is not None, "tenant contoso shown")
    for app, group in (("web", "Site"), ("hr", "Default")):
        h.check(re.search(rf'<tr data-app="{app}">.*?<td class="group">{group}</td>', dom)
                is not None, f"app {app} shown in group {group}")
    al = alerts(dom)
    h.check([k for k, _ in al] == ["group_not_redundant"] and "group Default" in al[0][1],
            f"alerts: {al}")
    h.check("every 1 s" in dom, "?refresh=1 sets the refresh period to 1 s")
    h.check(f"region {esc}" in dom, f"the region is text: {esc!r} in the DOM")
    h.check(re.search(r"<img\b", dom, re.I) is None, "no <img> element in the DOM")
    shot = os.path.join(env.dir, "status_page.png")
    browser.screenshot(url, shot)
    h.check(os.path.getsize(shot) > 10000, f"screenshot {shot} ({os.path.getsize(shot)} bytes)")
    art = os.environ.get("APPRELAY_ARTIFACT_DIR")
    if art:
        os.makedirs(art, exist_ok=True)
        shutil.copy(shot, os.path.join(art, "status_page.png"))
        h.log(f"screenshot copied to {art}/status_page.png")

    # ---- a connector dies -------------------------------------------------------------------
    t_kill = time.monotonic()
    os.kill(procs["s1"].p.pid, signal.SIGKILL)
    procs["s1"].p.wait(timeout=10)
    seen = {}

    def s1_inactive():
        d = browser.dump_dom(url, budget_ms=1500)
        seen["dom"] = d
        return rows(d).get(ids["s1"], ("?",))[0] == "inactive"
    # Liveness (1 s) + one refresh (1 s) + one Chromium run (a few s on a busy machine).
    h.wait_until(s1_inactive, 12, "the page shows s1 inactive", interval=0.2)
    secs = time.monotonic() - t_kill
    dom = seen["dom"]
    got = rows(dom)
    h.check(got[ids["s2"]][0] == "active" and got[ids["d1"]][0] == "active",
            f"s1 inactive on the page {secs:.1f} s after SIGKILL; others active: {got}")
    kinds = sorted((k, "group Site" in m) for k, m in alerts(dom))
    h.check(kinds == [("group_not_redundant", False), ("group_not_redundant", True)],
            f"alerts now name both groups: {alerts(dom)}")

    # ---- wrong or no token --------------------------------------------------------------------
    for label, u in (("wrong token", f"{base}#token=not-the-token"), ("no token", base)):
        d = browser.dump_dom(u)
        err = re.search(r'<div id="error" role="alert">([^<]*)</div>', d)
        h.check(err is not None and "Access denied" in err.group(1) and "401" in err.group(1),
                f"{label}: the page says {err.group(1) if err else None!r}")
        h.check(not rows(d) and not alerts(d) and '<section class="tenant"' not in d,
                f"{label}: no tenant, connector or alert shown")


def main():
    binary = find_chromium()
    if binary is None:
        print("SKIP: chromium is not installed (scripts/setup installs it)")
        return SKIP
    probe_dir = tempfile.mkdtemp(prefix="apprelay-chromium-probe-")
    try:
        why = chromium_works(Browser(binary, probe_dir))
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    if why is not True:
        print(f"SKIP: chromium cannot run headless here: {why}")
        return SKIP
    return h.run_test("status_page", lambda env: body(env, binary))


if __name__ == "__main__":
    sys.exit(main())
