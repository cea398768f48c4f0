#!/usr/bin/env python3
"""Connector groups: load balancing inside one group (issue 4, scenario "balance").

World: 2 relay workers, one group `Web` with 3 connectors (w1, w2, w3), app web -> echo backend on
127.0.0.2 (a site address). 3,000 short streams (1 KiB echo, 32 at a time) through apprelay-loadgen.
Checks: every stream echoed byte-exact; each connector's own streams_opened (its stats file) adds
up to exactly 3,000 with no retry and no refusal; no connector got more than 40% (and each got at
least 20%: a dead-even split is 33.3%)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import groups_helpers as g  # noqa: E402

STREAMS = 3000
CIDS = ("w1", "w2", "w3")


def body(env):
    _, port = g.start_site_backend(env, "127.0.0.2", "backend-site")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.2:{port}")],
                        connectors=CIDS, workers=2, with_fabrikam=False)
    topo.groups.append(dict(tenant="contoso", name="Web"))
    for c in topo.connectors:
        c["group"] = "Web"
    topo.apps[0]["group"] = "Web"
    env.start_relay(topo)
    for cid in CIDS:
        env.start_connector(cid)
    env.wait_tunnels(2 * len(CIDS))
    for cid in CIDS:
        env.wait_tunnels(2, connector=cid)

    rc, result = h.run_loadgen(env, "web.contoso.test", STREAMS, 32, 1024, threads=1, timeout=60)
    h.check(rc == 0 and result is not None and result.get("ok") == STREAMS,
            f"loadgen: {result and result.get('ok')} of {STREAMS} streams x 1 KiB echoed "
            f"byte-exact (rc {rc})")
    per = g.wait_opened_total(env, CIDS, STREAMS)
    total = sum(per.values())
    shares = {c: per[c] / total for c in CIDS}
    h.log("streams per connector: " + ", ".join(f"{c}={per[c]} ({shares[c]:.1%})" for c in CIDS))
    h.check(total == STREAMS, f"connectors opened exactly {STREAMS} backend streams ({per})")
    refused = {c: g.conn_counter(env, c, "streams_refused") for c in CIDS}
    h.check(sum(refused.values()) == 0, f"no connector refused an OPEN ({refused})")
    h.check(env.counter("streams_opened") == STREAMS and env.counter("streams_retried") == 0,
            f"relay: streams_opened={env.counter('streams_opened')} (== {STREAMS}), "
            f"streams_retried={env.counter('streams_retried')} (== 0)")
    worst = max(shares.values())
    h.check(worst <= 0.40, f"no connector above 40% of the streams (max {worst:.1%})")
    least = min(shares.values())
    h.check(least >= 0.20, f"every connector carries at least 20% (min {least:.1%})")


if __name__ == "__main__":
    sys.exit(h.run_test("groups_balance", body))
