#!/usr/bin/env python3
"""The Grafana dashboard (contrib/grafana/apprelay.json) against a live relay's /metrics.

World: 2 relay workers, echo backend, app web, connector c1 (tenant contoso, group Default); a
few echo streams, one unknown-SNI and one plaintext user connection so that counters move.

Checks:
- the dashboard is valid JSON in Grafana's import format: an "__inputs" entry DS_PROMETHEUS
  (a prometheus datasource), schemaVersion >= 36; every panel (rows and nested ones too) has a
  title and an id no other panel has, no two panels overlap on the 24-column grid;
  every panel with queries, every target and every templating query uses the datasource
  {"type": "prometheus", "uid": "${DS_PROMETHEUS}"};
- every PromQL expression (targets[].expr, templating queries) goes through a small tokenizer:
  string literals, label matchers {...}, ranges and subqueries [...], by/without/on/ignoring/
  group_left/group_right clauses and keywords are set apart; identifiers followed by "(" (or
  aggregations followed by by/without) are functions and must be known PromQL functions; the
  remaining identifiers are metric names, which must all be in the live /metrics body
  (histogram/summary _bucket/_sum/_count allowed when the base family exists);
- each selector's label matchers name labels the metric carries (or instance/job, which the
  scrape adds) and at least one live series satisfies them (so worker="" or status="active"
  select something); by/without labels and legend {{labels}} exist on the metrics used; the
  argument of rate/irate/increase is a counter; $variables are defined ones or Grafana's own;
- the checker can fail: synthetic expressions with a bogus metric, a bogus label, a rate of a
  gauge, an unknown function, a bogus __name__, and a broken copy of the dashboard (duplicate
  id, untitled panel, a concrete datasource) are all flagged, and correct ones are not."""
import copy
import json
import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DASHBOARD = os.path.join(h.REPO, "contrib", "grafana", "apprelay.json")
DS_UID = "${DS_PROMETHEUS}"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus at scrape time
GRAFANA_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                "__range_ms", "__from", "__to", "__dashboard", "__name"}

# ---- Prometheus text format (only what this test needs: names, types, labels) ---------------
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def parse_exposition(text):
    """{"families": {name: type}, "series": {sample name: [labels dict, ...]}}. Strict enough
    for this use: every sample line must parse, label values are unescaped."""
    fams, series = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("#"):
            m = re.fullmatch(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)", line)
            if m:
                fams[m.group(1)] = m.group(2)
            continue
        m = re.fullmatch(rf"({_NAME})(?:\{{(.*)\}})? (\S+)(?: -?\d+)?", line)
        if not m:
            raise h.TestFailure(f"metrics line {n}: malformed sample {line!r}")
        labels = {}
        for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
            labels[lm.group(1)] = re.sub(r"\\(.)", lambda x: "\n" if x.group(1) == "n"
                                         else x.group(1), lm.group(2))
        float(m.group(3).replace("Inf", "inf"))
        series.setdefault(m.group(1), []).append(labels)
    return {"families": fams, "series": series}


def metrics_body(env):
    """GET /metrics on the admin listener (the relay's admin unix socket)."""
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
    status = int(head.split(b"\r\n")[0].split()[1])
    if status != 200:
        raise h.TestFailure(f"GET /metrics -> {status}")
    return body.decode()


# ---- PromQL tokenizer and checker ------------------------------------------------------------
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time",
    "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh",
    "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
    "start", "end"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
CLAUSES = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
COUNTER_FUNCS = {"rate", "irate", "increase", "resets"}

_TOKEN = re.compile(r"""
   (?P<ws>\s+)
  |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  |(?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  |(?P<num>0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@])
  |(?P<punct>[{}\[\](),:])
""", re.X)


def tokenize(expr):
    out, i = [], 0
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if not m:
            raise h.TestFailure(f"cannot tokenize {expr!r} at {expr[i:]!r}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group(0)))
        i = m.end()
    return out


def _unquote(s):
    return s[1:-1] if s[0] == "`" else re.sub(r"\\(.)", r"\1", s[1:-1])


def analyze(expr):
    """Splits a PromQL expression into what it names. Returns a dict:
    metrics   [(name, in_counter_func)] identifiers that are metric names
    selectors [(name or None, [(label, op, value)])] each {...} with the metric before it
    name_res  [regex] __name__=~ matchers
    functions [name]  identifiers used as functions or aggregations
    clauses   [label] labels of by/without/on/ignoring/group_left/group_right
    vars      [name]  Grafana $variables"""
    toks = tokenize(expr)
    r = {"metrics": [], "selectors": [], "name_res": [], "functions": [], "clauses": [],
         "vars": []}
    stack = []        # one entry per open "(": the function it calls, or None
    pending = None    # a function/aggregation whose "(" comes next (after a by/without clause)
    last_metric = None
    i = 0

    def var_name(text):
        return text[2:-1].split(":")[0] if text.startswith("${") else text[1:]

    def in_counter_func():
        return any(f in COUNTER_FUNCS for f in stack if f)

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "var":
            r["vars"].append(var_name(text))
            i += 1
        elif kind == "str":
            r["vars"] += [var_name(v) for v in re.findall(r"\$\{[^}]*\}|\$[A-Za-z_]\w*", text)]
            i += 1
        elif text == "{":
            matchers = []
            i += 1
            while toks[i][1] != "}":
                if toks[i][1] == ",":
                    i += 1
                    continue
                lk, lab = toks[i]
                op_k, op = toks[i + 1] if i + 1 < len(toks) else (None, None)
                vk, val = toks[i + 2] if i + 2 < len(toks) else (None, None)
                if lk != "ident" or op not in ("=", "!=", "=~", "!~") or vk != "str":
                    raise h.TestFailure(f"bad label matcher in {expr!r} near {lab!r}")
                val = _unquote(val)
                r["vars"] += [var_name(v) for v in re.findall(r"\$\{[^}]*\}|\$[A-Za-z_]\w*",
                                                              val)]
                matchers.append((lab, op, val))
                i += 3
            i += 1
            name = last_metric
            for lab, op, val in matchers:
                if lab == "__name__" and op == "=":
                    name = val
                    r["metrics"].append((val, in_counter_func()))
                elif lab == "__name__" and op == "=~":
                    r["name_res"].append(val)
            r["selectors"].append((name, [m for m in matchers if m[0] != "__name__"]))
            last_metric = None
        elif text == "[":
            depth = 0
            while True:  # a range or subquery: skip, but keep its $variables
                k2, t2 = toks[i]
                depth += t2 == "["
                depth -= t2 == "]"
                if k2 == "var":
                    r["vars"].append(var_name(t2))
                i += 1
                if depth == 0:
                    break
            last_metric = None
        elif text == "(":
            stack.append(pending)
            pending = None
            last_metric = None
            i += 1
        elif text == ")":
            if not stack:
                raise h.TestFailure(f"unbalanced ) in {expr!r}")
            stack.pop()
            i += 1
        elif kind == "ident" and text in CLAUSES:
            i += 1
            if i < len(toks) and toks[i][1] == "(":
                i += 1
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        r["clauses"].append(toks[i][1])
                    elif toks[i][1] != ",":
                        raise h.TestFailure(f"bad {text} clause in {expr!r}")
                    i += 1
                i += 1
            elif text not in ("group_left", "group_right"):
                raise h.TestFailure(f"{text} without a label list in {expr!r}")
        elif kind == "ident" and (nxt == "(" or (text in AGGREGATIONS and nxt in CLAUSES)):
            r["functions"].append(text)
            pending = text
            last_metric = None
            i += 1
        elif kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            if text.lower() == "offset":  # offset [-]duration
                if i < len(toks) and toks[i][1] == "-":
                    i += 1
                i += 1
        elif kind == "ident":
            r["metrics"].append((text, in_counter_func()))
            last_metric = text
            i += 1
        else:
            last_metric = None
            i += 1
    if stack:
        raise h.TestFailure(f"unbalanced ( in {expr!r}")
    return r


def _series_of(live, name):
    """The live series of a metric name (a histogram/summary suffix falls back to its base
    family: the base's labels, plus le for _bucket). None if the name is not exported."""
    if name in live["series"]:
        return live["series"][name]
    for suf in ("_bucket", "_sum", "_count"):
        base = name[:-len(suf)]
        if name.endswith(suf) and live["families"].get(base) in ("histogram", "summary"):
            got = live["series"].get(name) or [dict(s, le="+Inf") if suf == "_bucket" else s
                                                for s in live["series"].get(base, [])]
            return got or [{}]
    return None


def _matches(labels, lab, op, val):
    v = labels.get(lab, "")
    if op == "=":
        return v == val
    if op == "!=":
        return v != val
    ok = re.fullmatch(val, v) is not None
    return ok if op == "=~" else not ok


def check_expr(expr, live, variables, legend=None, templating_label=None):
    """Returns (problems, metric names) for one expression against the live metrics."""
    problems = []
    try:
        a = analyze(expr)
    except h.TestFailure as e:
        return [str(e)], set()
    names = {n for n, _ in a["metrics"]}
    for fn in a["functions"]:
        if fn not in FUNCTIONS and fn not in AGGREGATIONS:
            problems.append(f"unknown function {fn}()")
    for v in a["vars"]:
        if v not in variables and v not in GRAFANA_VARS:
            problems.append(f"undefined variable ${v}")
    for rx in a["name_res"]:
        hit = [n for n in live["series"] if re.fullmatch(rx, n)]
        if not hit:
            problems.append(f"__name__=~{rx!r} matches no exported metric")
        names |= set(hit)
    known_labels = set(TARGET_LABELS)
    for name, in_counter in a["metrics"]:
        series = _series_of(live, name)
        if series is None:
            problems.append(f"metric {name} is not exported")
            continue
        for s in series:
            known_labels |= set(s)
        fam_type = live["families"].get(name) or live["families"].get(
            re.sub(r"_(bucket|sum|count)$", "", name))
        if in_counter and fam_type not in ("counter", "histogram", "summary"):
            problems.append(f"rate/increase of {name}, a {fam_type}")
    for name, matchers in a["selectors"]:
        series = _series_of(live, name) if name else None
        if name and series is None:
            continue  # reported above
        pool = series if series is not None else [
            s for n in names for s in (_series_of(live, n) or [])]
        for lab, op, val in matchers:
            if lab not in TARGET_LABELS and not any(lab in s for s in pool):
                problems.append(f"label {lab} is not on {name or sorted(names)}")
        concrete = [(lab, op, val) for lab, op, val in matchers
                    if lab not in TARGET_LABELS and "$" not in val]
        if pool and not any(all(_matches(s, *m) for m in concrete) for s in pool):
            problems.append(f"no live series of {name} matches {concrete}")
    for lab in a["clauses"] + ([templating_label] if templating_label else []):
        if lab not in known_labels:
            problems.append(f"label {lab} (by/without/on or label_values) is on none of "
                            f"{sorted(names)}")
    for lab in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend or ""):
        if lab not in known_labels:
            problems.append(f"legend label {{{{{lab}}}}} is on none of {sorted(names)}")
    if not names:
        problems.append("names no metric")
    return problems, names


def templating_expr(q):
    """A Prometheus variable query: (PromQL expression, label or None)."""
    q = q.strip()
    m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", q, re.S)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return m.group(1), None
    raise h.TestFailure(f"unsupported variable query {q!r}")


# ---- dashboard structure --------------------------------------------------------------------
def all_panels(dash):
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out += p.get("panels", []) if p.get("type") == "row" else []
    return out


def _is_input_ds(ds):
    return isinstance(ds, dict) and ds.get("uid") == DS_UID and ds.get("type") == "prometheus"


def check_dashboard(dash, live):
    """All problems of the dashboard; (problems, {metric: [panel titles]}, n expressions)."""
    problems = []
    ins = [i for i in dash.get("__inputs", []) if i.get("name") == "DS_PROMETHEUS"]
    if not (ins and ins[0].get("type") == "datasource" and ins[0].get("pluginId") == "prometheus"):
        problems.append("__inputs has no prometheus datasource DS_PROMETHEUS")
    if not (isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36):
        problems.append(f"schemaVersion {dash.get('schemaVersion')!r}")
    variables = set()
    used = {}
    n_expr = 0
    for v in dash.get("templating", {}).get("list", []):
        variables.add(v.get("name"))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        where = f"variable ${v.get('name')}"
        if not _is_input_ds(v.get("datasource")):
            problems.append(f"{where}: datasource {v.get('datasource')!r}")
        q = v.get("query")
        queries = [q.get("query") if isinstance(q, dict) else q, v.get("definition")]
        for q in [x for x in queries if x]:
            expr, lab = templating_expr(q)
            n_expr += 1
            p, names = check_expr(expr, live, variables - {v.get("name")}, templating_label=lab)
            problems += [f"{where}: {x}" for x in p]
            for n in names:
                used.setdefault(n, []).append(where)
    ids = {}
    boxes = []
    for p in all_panels(dash):
        title = p.get("title")
        where = f"panel {p.get('id')} {title!r}"
        if not isinstance(title, str) or not title.strip():
            problems.append(f"{where}: no title")
        if not isinstance(p.get("id"), int):
            problems.append(f"{where}: id is not an integer")
        elif p["id"] in ids:
            problems.append(f"{where}: id {p['id']} also used by {ids[p['id']]!r}")
        else:
            ids[p["id"]] = title
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos {g}")
        else:
            for other, og in boxes:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and
                        g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    problems.append(f"{where}: overlaps {other!r}")
            boxes.append((title, g))
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        if not _is_input_ds(p.get("datasource")):
            problems.append(f"{where}: datasource {p.get('datasource')!r}")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: refIds {refs}")
        for t in targets:
            if not _is_input_ds(t.get("datasource")):
                problems.append(f"{where} target {t.get('refId')}: datasource "
                                f"{t.get('datasource')!r}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where} target {t.get('refId')}: no expr")
                continue
            n_expr += 1
            pr, names = check_expr(expr, live, variables, legend=t.get("legendFormat"))
            problems += [f"{where} {expr!r}: {x}" for x in pr]
            for n in names:
                used.setdefault(n, []).append(title)
    return problems, used, n_expr


# ---- self-check: the checker must be able to fail --------------------------------------------
def self_check(live, dash):
    live2 = {"families": dict(live["families"], apprelay_test_seconds="histogram"),
             "series": dict(live["series"], apprelay_test_seconds_bucket=[{"le": "1"}],
                            apprelay_test_seconds_sum=[{}], apprelay_test_seconds_count=[{}])}
    good = [
        'sum by (instance, worker) (rate(apprelay_streams_opened_total{worker!=""}[5m]))',
        'sum without (worker) (increase(apprelay_bytes_backend_to_user_total[1h:1m])) offset 5m',
        'label_replace(apprelay_config_version, "dst", "$1", "instance", "(.*)") > bool 0',
        'apprelay_connectors{status="active", group=~"Def.*"} and on (tenant) '
        'apprelay_connectors',
        '{__name__="apprelay_uptime_seconds"} * 2 + 1e3',
        'histogram_quantile(0.99, sum by (le) (rate(apprelay_test_seconds_bucket[5m])))',
        'sum(rate(apprelay_streams_opened_total{instance=~"$instance", worker=""}'
        '[$__rate_interval]))',
    ]
    for e in good:
        p, _ = check_expr(e, live2, {"instance"}, legend="{{instance}}")
        if p:
            raise h.TestFailure(f"self-check: correct {e!r} flagged: {p}")
    bad = {
        "rate(apprelay_no_such_metric_total[5m])": "apprelay_no_such_metric_total",
        "sum(rate(apprelay_streams_opened_totl[5m]))": "apprelay_streams_opened_totl",
        "apprelay_tunnels_up + on (worker) apprelay_bogus": "apprelay_bogus",
        'apprelay_config_version{worker="0"}': "label worker",
        'apprelay_connectors{status="activ"}': "no live series",
        "sum by (flavour) (apprelay_tunnels_up)": "label flavour",
        "rate(apprelay_tunnels_up[5m])": "a gauge",
        "ratee(apprelay_streams_opened_total[5m])": "unknown function ratee",
        '{__name__="apprelay_made_up"}': "apprelay_made_up",
        "apprelay_uptime_seconds{instance=~\"$relay\"}": "undefined variable $relay",
        "apprelay_test_seconds_total_sum": "apprelay_test_seconds_total_sum",
        "apprelay_streams_opened_total_bucket": "apprelay_streams_opened_total_bucket",
        "sum(apprelay_streams_opened_total": "unbalanced",
    }
    for e, want in bad.items():
        p, _ = check_expr(e, live2, {"instance"})
        if not any(want in x for x in p):
            raise h.TestFailure(f"self-check: {e!r} not flagged for {want!r}: {p}")
    p, _ = check_expr("sum(apprelay_tunnels_up)", live2, set(), legend="{{color}}")
    if not any("legend label" in x for x in p):
        raise h.TestFailure(f"self-check: legend {{{{color}}}} not flagged: {p}")
    h.check(True, f"self-check: {len(good)} correct expressions pass, {len(bad) + 1} wrong ones "
                  f"are flagged (bogus metric names among them)")
    broken = copy.deepcopy(dash)
    ps = [p for p in all_panels(broken) if p.get("type") != "row"]
    ps[1]["id"] = ps[0]["id"]
    ps[2]["title"] = ""
    ps[3]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prod-prom"}
    ps[4]["targets"][0]["expr"] = "sum(rate(apprelay_bogus_total[5m]))"
    broken["__inputs"] = []
    p, _, _ = check_dashboard(broken, live)
    for want in ("also used by", "no title", "prod-prom", "apprelay_bogus_total", "__inputs"):
        if not any(want in x for x in p):
            raise h.TestFailure(f"self-check: broken dashboard not flagged for {want!r}: {p}")
    h.check(True, "self-check: a broken dashboard copy (duplicate id, untitled panel, concrete "
                  "datasource, bogus metric, no __inputs) is flagged")


# ---- the test -------------------------------------------------------------------------------
def body(env):
    with open(DASHBOARD) as f:
        text = f.read()
    try:
        dash = json.loads(text)
    except ValueError as e:
        raise h.TestFailure(f"{DASHBOARD}: invalid JSON: {e}")
    h.check(isinstance(dash, dict) and dash.get("panels"),
            f"{os.path.relpath(DASHBOARD, h.REPO)} is valid JSON with "
            f"{len(all_panels(dash))} panels")

    _, echo_port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}")],
                        connectors=("c1",), workers=2, with_fabrikam=False)
    info = env.start_relay(topo)
    env.start_connector("c1")
    env.wait_tunnels(info["workers"])
    ca = env.pki.path("users-ca.crt")
    for i in range(4):
        c = h.UserClient(env.user_port, "web.contoso.test", ca)
        h.echo_roundtrip(c, h.pattern(16 * 1024, seed=i), half_close=True, timeout=20)
        c.close()
    h.check(h.tls_handshake_error(env.user_port, "nope.contoso.test", ca) is not None,
            "unknown SNI refused")
    s = socket.create_connection(("127.0.0.1", env.user_port), timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # plaintext on the TLS port
    try:
        s.recv(100)
    except OSError:
        pass
    s.close()
    env.wait_counter("user_tls_failed", 1)
    env.wait_counter("streams_closed", 4)

    live = parse_exposition(metrics_body(env))
    opened = [s for s in live["series"].get("apprelay_streams_opened_total", []) if not s]
    h.check(len(live["families"]) >= 20 and opened,
            f"/metrics: {len(live['families'])} families, {len(live['series'])} metric names")

    self_check(live, dash)

    problems, used, n_expr = check_dashboard(dash, live)
    if problems:
        raise h.TestFailure("dashboard problems:\n  " + "\n  ".join(problems))
    h.check(True, f"{n_expr} expressions name {len(used)} metrics, all exported by the live "
                  f"relay, with labels, functions, variables and datasources as they should be")
    for n in sorted(used):
        print(f"    {n}: {len(used[n])} use(s)")
    unused = sorted(set(live["families"]) - set(used))
    print(f"    exported, not on the dashboard: {', '.join(unused) or '-'}")


if __name__ == "__main__":
    sys.exit(h.run_test("grafana", body))
