#!/usr/bin/env python3
"""The connector's own view: --metrics-listen serves Prometheus text and a JSON status, and
`apprelay-connector status` prints tunnels up, relay, tenant, group, version and config version.
A group change made with apprelayctl shows up there (CONFIG frames)."""
import os
import re
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def body(env):
    _, port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{port}")], workers=2,
                        with_fabrikam=False)
    topo.groups.append(dict(tenant="contoso", name="site-a"))
    env.start_relay(topo)
    c1 = env.start_connector("c1", extra=["--metrics-listen", "127.0.0.1:0"])
    env.wait_tunnels(2, connector="c1")
    m = h.wait_until(lambda: re.search(r"event=metrics_listening port=(\d+)", c1.log_text()), 5,
                     "connector metrics port in its log")
    addr = f"127.0.0.1:{m.group(1)}"

    def status():
        r = subprocess.run([h.CONNECTOR_BIN, "status", "--metrics", addr], capture_output=True,
                           text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return dict(line.split(None, 1) for line in r.stdout.strip().splitlines())

    s = h.wait_until(lambda: (lambda d: d if d.get("tunnels_up") == "2" else None)(status()), 5,
                     "status shows 2 tunnels")
    h.check(s["group"] == "Default" and s["tenant"] == "contoso" and s["version"] == "0.1.0",
            f"apprelay-connector status: {s}")
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    h.check("apprelay_connector_tunnels_up 2" in text and
            "# TYPE apprelay_connector_streams_opened_total counter" in text,
            "GET /metrics: Prometheus text with tunnels_up 2")

    v0 = int(s["config_version"])
    env.ctl("connectors", "move", env.connector_ids["c1"], "site-a")
    s = h.wait_until(lambda: (lambda d: d if d.get("group") == "site-a" else None)(status()), 10,
                     "status shows the new group")
    h.check(int(s["config_version"]) > v0,
            f"after `connectors move`: group site-a, config version {v0} -> {s['config_version']}")
    r = subprocess.run([h.CONNECTOR_BIN, "status", "--metrics", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=10)
    h.check(r.returncode == 3 and "cannot reach the connector" in r.stderr,
            "status against nothing: exit 3 with a clear message")


if __name__ == "__main__":
    sys.exit(h.run_test("connector_status", body))
