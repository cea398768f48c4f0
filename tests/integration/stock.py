"""Stock clients and a stock backend for the integration tests: nginx (nginx-light, one worker,
our own config and pid, on loopback) and wrk / h2load / curl runs with their output parsed.

Users reach apps with the tools they have, and those tools close connections the way real
clients do (close_notify then close with unread bytes, RST on abort, a new connection per
request); our own load generator is too polite to find what they find."""
import os
import re
import shutil
import socket
import subprocess

import harness as h

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"

# The app hostname wrk can reach: wrk takes the SNI from the URL and has no --connect-to, so the
# name must resolve to loopback. Every Debian /etc/hosts maps localhost; wrk tries each address
# getaddrinfo returns until one connects (::1 first on some hosts, then 127.0.0.1).
LOCAL_HOST = "localhost"


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_file(path, n):
    """n bytes of the backend source pattern (period 256), so a download can be checked."""
    block = h.pattern(1 << 20)
    with open(path, "wb") as f:
        left = n
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)


def start_nginx(env, files, host="127.0.0.1", name="nginx", netns=None):
    """nginx with one worker serving env.dir/www: files is {url_name: size}. POST /upload reads
    the whole body, discards it and answers 200. Returns (proc, port). netns: run it inside that
    network namespace (its loopback)."""
    h.require_binaries(NGINX_BIN)
    root = os.path.join(env.dir, f"{name}-www")
    tmp = os.path.join(env.dir, f"{name}-tmp")
    os.makedirs(root, exist_ok=True)
    os.makedirs(tmp, exist_ok=True)
    for fname, size in files.items():
        write_file(os.path.join(root, fname), size)
    port = free_port(host) if netns is None else 18080  # a namespace of the test's own
    conf = os.path.join(env.dir, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(root, tmp, host, port, os.path.join(env.dir, f"{name}-error.log")))
    p = env.start(name, h.in_netns(netns, [NGINX_BIN, "-c", conf, "-p", tmp, "-g",
                                           "daemon off;"]))

    def listening():
        if not p.alive():
            raise h.TestFailure(f"nginx exited {p.p.returncode}: {p.log_text()[-2000:]}")
        if netns is not None:
            probe = ["ip", "netns", "exec", netns, "bash", "-c", f"</dev/tcp/{host}/{port}"]
            return subprocess.run(probe, capture_output=True).returncode == 0
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False
    h.wait_until(listening, 10, f"nginx listening on {host}:{port}")
    return p, port


def nginx_conf(root, tmp, host, port, error_log, worker_cpu=None):
    affinity = f"worker_cpu_affinity {worker_cpu};\n" if worker_cpu else ""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
{affinity}pid {tmp}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port} backlog=4096 reuseport;
        root {root};
        # The whole body is read before the answer (proxy_pass buffers the request body, in
        # memory up to 80 MiB): `return` alone would answer first and discard the body behind
        # it, so an upload's requests/s would not measure the bytes moved.
        location /upload {{
            client_max_body_size 0;
            client_body_buffer_size 80m;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;  # read here, then only the headers go on
            proxy_set_header Content-Length "";
            proxy_pass http://unix:{tmp}/sink.sock:/;
        }}
    }}
    server {{
        listen unix:{tmp}/sink.sock;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


WRK_BIN = shutil.which("wrk") or "/usr/bin/wrk"
H2LOAD_BIN = shutil.which("h2load") or "/usr/bin/h2load"


def parse_size(text):
    m = re.match(r"([\d.]+)([KMGT]?)B?", text)
    if not m:
        return 0.0
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)]
    return float(m.group(1)) * mult


def parse_wrk(out):
    """wrk's text report -> dict(requests, seconds, rps, bytes, bytes_per_s, errors{...},
    non2xx, socket_errors, latency_us)."""
    r = {"requests": 0, "seconds": 0.0, "rps": 0.0, "bytes": 0.0, "bytes_per_s": 0.0,
         "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}, "non2xx": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s|m), ([\d.]+[KMGT]?B) read", out)
    if m:
        r["requests"] = int(m.group(1))
        secs = float(m.group(2))
        unit = m.group(3)
        r["seconds"] = secs / 1000 if unit == "ms" else secs * 60 if unit == "m" else secs
        r["bytes"] = parse_size(m.group(4))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+[KMGT]?B)", out)
    if m:
        r["bytes_per_s"] = parse_size(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = dict(zip(("connect", "read", "write", "timeout"),
                               (int(x) for x in m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    r["socket_errors"] = sum(r["errors"].values())
    # --latency percentiles, in us: {50: .., 75: .., 90: .., 99: ..} (empty without it)
    unit = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 6e7}
    r["latency_us"] = {int(p): float(v) * unit[u] for p, v, u in re.findall(
        r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    return r


def run_wrk(url, connections, seconds, threads=1, headers=(), script=None, timeout_s=10,
            taskset=None, latency=False, netns=None):
    """Runs wrk, bounded in time; returns (rc, parsed, text). latency: --latency percentiles.
    netns: inside that network namespace."""
    h.require_binaries(WRK_BIN)
    argv = ([] if netns is None else ["ip", "netns", "exec", netns]) + (
        [] if taskset is None else ["taskset", "-c", taskset]) + [
        WRK_BIN, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout",
        f"{timeout_s}s"] + (["--latency"] if latency else [])
    for hd in headers:
        argv += ["-H", hd]
    if script:
        argv += ["-s", script]
    argv.append(url)
    h.log("run: " + " ".join(argv))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    out = p.stdout + p.stderr
    print(out, end="")
    return p.returncode, parse_wrk(out), out
