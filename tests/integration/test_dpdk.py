"""The relay on its dpdk backend (issue 12): apprelay's own per-core TCP/IP on a DPDK port, with
kernel-side users, connectors and backends in a network namespace this test creates. Two ports:

  tap   DPDK's net_tap; the PMD makes the tap, which moves into the namespace once the port runs
  veth  DPDK's net_af_packet on one end of a veth pair; the other end is in the namespace

Addresses are in 198.18.0.0/15 (RFC 2544, for benchmarking): traffic stays on the tap or veth.

1. ARP and ICMP: the namespace's kernel resolves the relay's address and `ping` is answered.
2. A connector in the namespace dials the relay's user-space TCP: one tunnel per relay worker.
3. 1,000 concurrent echo streams of 16 KiB, byte-exact (the load generator checks every byte).
4. 100 MiB byte-exact both ways in one stream (echo: 100 MiB up, the same 100 MiB back).
5. Aborts: 200 streams reset mid-response by the user; no tunnel closes; the relay counts them.
6. Stock clients against nginx: 4 parallel curl downloads of 32 MiB (sha256), a curl upload of
   16 MiB, wrk with `Connection: close` for 3 s (0 socket errors), openssl s_client verifying the
   app's certificate; then a clean close: the side whose FIN goes first holds TIME-WAIT (Linux
   or the relay's stack), the relay's stacks keep no TCB but the tunnels' (and TIME-WAITs), and
   a curl killed mid-download leaves nothing behind on the relay.
7. /metrics shows the port's xstats and each worker's stack and busy-cycle counters.
8. Loss: the relay restarts with the port's loss mode (every 100th frame dropped each way); the
   connector comes back, and 1 MiB x 16 echo streams plus 2 curl downloads of 8 MiB stay
   byte-exact while the stack retransmits.

Skips (exit 77, never a failure) only where the machine cannot make a tap, a veth or a
namespace, or EAL cannot start for lack of memory.
"""
import hashlib
import json
import os
import subprocess
import sys
import time

import dpdk_world
import harness as h
import stock
from dpdk_world import SKIP, WWW, World, can_run, sh

DL_SIZE = 32 << 20


def start_relay(env, w, topo):
    why = dpdk_world.start_relay(env, w, topo)
    if why:
        print(f"SKIP: {why}")
    return why is None


def curl(env, w, path, out, extra=()):
    return h.in_netns(w.ns, [
        "curl", "-sS", "--max-time", "60", "--cacert", env.pki.path("users-ca.crt"), "-o", out]
        + list(extra) + [f"https://{WWW}:{env.user_port}/{path}"])


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def downloads(env, w, n, want, tag, path="big"):
    outs = [os.path.join(env.dir, f"{tag}{i}.bin") for i in range(n)]
    procs = [subprocess.Popen(curl(env, w, path, o), stderr=subprocess.PIPE) for o in outs]
    errs = []
    for p in procs:
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.returncode != 0:
            errs.append(p.stderr.read().decode()[-200:])
    ok = sum(1 for o in outs if os.path.exists(o) and sha(o) == want)
    for o in outs:
        if os.path.exists(o):
            os.unlink(o)
    return ok, errs


def tcp_states(w, port):
    """Linux's view in the namespace: {state: count} of TCP sockets to the relay's user port."""
    out = sh("ip", "netns", "exec", w.ns, "ss", "-tanH", "dst", f"{w.relay_ip}:{port}").stdout
    states = {}
    for line in out.splitlines():
        if line.strip():
            st = line.split()[0]
            states[st] = states.get(st, 0) + 1
    return states


# One HTTP/1.1 request for /1k through the relay from the namespace, in Python's ssl: the
# response is read whole, then the client closes first (close_notify, the relay's close_notify,
# FIN). Prints the client's local port.
ONE_REQUEST = r"""
import socket, ssl, sys
ca, host, ip, port = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(socket.create_connection((ip, int(port)), timeout=10), server_hostname=host)
t.sendall(f"GET /1k HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
got = b""
while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 1024:
    b = t.recv(65536)
    if not b:
        sys.exit("short response")
    got += b
print(t.getsockname()[1], flush=True)
t.unwrap()
t.close()
"""


def one_request(env, w):
    r = sh("ip", "netns", "exec", w.ns, sys.executable, "-c", ONE_REQUEST,
           env.pki.path("users-ca.crt"), WWW, w.relay_ip, str(env.user_port))
    return int(r.stdout.split()[0])


def time_wait_ports(w):
    out = sh("ip", "netns", "exec", w.ns, "ss", "-tanH", "state", "time-wait").stdout
    return {int(line.split()[2].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def relay_net(env, name):
    return sum(x.get("net", {}).get(name, 0) for x in env.stats().get("dpdk", {}).get("workers", []))


def relay_tcp_connections(env):
    return sum(x.get("tcp_connections", 0) for x in env.stats().get("dpdk", {}).get("workers", []))


def body(env, w):
    _, echo_port = env.start_backend("echo", netns=w.ns)
    _, nginx_port = stock.start_nginx(env, {"big": DL_SIZE, "1k": 1024, "8m": 8 << 20},
                                      netns=w.ns)
    want = sha(os.path.join(env.dir, "nginx-www", "big"))
    topo = h.make_world(env.pki, [("web", "web.contoso.test", f"127.0.0.1:{echo_port}"),
                                  ("www", WWW, f"127.0.0.1:{nginx_port}")],
                        connectors=("c1",), workers=2, with_fabrikam=False)
    w.configure(topo, f"apprelay-test-{os.getpid()}")
    if not start_relay(env, w, topo):
        return SKIP

    # 1. ARP + ICMP echo from the kernel side.
    r = sh("ip", "netns", "exec", w.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", w.relay_ip,
           check=False)
    h.check(r.returncode == 0 and " 0% packet loss" in r.stdout,
            f"ping {w.relay_ip} from the namespace: {r.stdout.strip().splitlines()[-2:]}")
    neigh = sh("ip", "-n", w.ns, "neigh", "show", w.relay_ip).stdout
    h.check("lladdr" in neigh, f"the kernel resolved the relay's MAC by ARP: {neigh.strip()}")

    # 2. The connector enrolls over the management path (kernel loopback), then dials the port.
    env.provision(topo)
    w.point_connector(env, "c1", topo.tunnel_port)
    conn = env.start_connector("c1", netns=w.ns)
    env.wait_tunnels(2, timeout=30)

    def loadgen(streams, conc, nbytes, extra=(), timeout=90):
        return h.run_loadgen(env, "web.contoso.test", streams, conc, nbytes, timeout=timeout,
                             host=w.relay_ip, netns=w.ns, extra=extra)

    # 3. 1,000 concurrent streams.
    rc, res = loadgen(1000, 1000, 16 << 10)
    h.check(rc == 0 and res and res["failed"] == 0 and res["ok"] == 1000,
            f"1,000 concurrent streams byte-exact: {res and res['ok']} ok, "
            f"{res and res['failed']} failed")

    # 4. 100 MiB both ways in one stream.
    rc, res = loadgen(1, 1, 100 << 20, timeout=180)
    h.check(rc == 0 and res and res["failed"] == 0,
            f"100 MiB echoed byte-exact through the user-space TCP "
            f"({res and res['seconds']:.1f} s, {res and res['gbit_per_s']:.2f} Gbit/s both ways)")

    # 5. Aborts mid-response never touch the tunnels.
    closed0 = env.counter("tunnels_closed")
    aborted0 = env.counter("streams_user_aborted")
    rc, res = loadgen(200, 32, 256 << 10, extra=["--abort-after", str(16 << 10)], timeout=60)
    h.check(rc == 0 and res and res.get("aborted", 0) >= 180,
            f"{res and res.get('aborted')} of 200 streams aborted mid-response")
    env.wait_counter("streams_user_aborted", aborted0 + 180, timeout=10)
    h.check(env.counter("tunnels_closed") == closed0, "no tunnel closed by user aborts")

    # 6. Stock clients against nginx.
    ok, errs = downloads(env, w, 4, want, "dl")
    h.check(ok == 4 and not errs, f"4 parallel curl downloads of 32 MiB byte-exact ({errs[:1]})")
    up = os.path.join(env.dir, "up.bin")
    stock.write_file(up, 16 << 20)
    r = subprocess.run(curl(env, w, "upload", os.devnull,
                            ["-X", "POST", "--data-binary", f"@{up}", "-w", "%{http_code}"]),
                       capture_output=True, text=True, timeout=90)
    h.check(r.returncode == 0 and r.stdout.strip() == "200",
            f"curl uploads 16 MiB: exit {r.returncode}, HTTP {r.stdout.strip()} {r.stderr[-200:]}")
    rc, wrk, _ = stock.run_wrk(f"https://{WWW}:{env.user_port}/1k", 16, 3,
                               headers=["Connection: close"], netns=w.ns)
    h.check(rc == 0 and wrk["requests"] > 0 and wrk["socket_errors"] == 0 and wrk["non2xx"] == 0,
            f"wrk Connection: close for 3 s: {wrk['requests']} requests, socket errors "
            f"{wrk['socket_errors']}, non-2xx {wrk['non2xx']}")
    # Linux's side once wrk is done: nothing half-open. Nothing may stay ESTABLISHED,
    # FIN-WAIT-2 (a FIN of the relay's missing) or CLOSE-WAIT; TIME-WAIT is fine.
    last = {}

    def settled():
        last.update(states=tcp_states(w, env.user_port))
        return set(last["states"]) <= {"TIME-WAIT"}
    try:
        h.wait_until(settled, 15, "client connections settled")
    except h.TestFailure:
        print(json.dumps(env.stats(), indent=1)[:6000])
        raise h.TestFailure(f"Linux's client sockets after wrk: {last['states']}")
    # openssl s_client: the app's certificate by SNI, verified, TLS 1.3.
    r = subprocess.run(h.in_netns(w.ns, ["openssl", "s_client", "-connect",
                                         f"{w.relay_ip}:{env.user_port}", "-servername", WWW,
                                         "-CAfile", env.pki.path("users-ca.crt"), "-brief"]),
                       input="", capture_output=True, text=True, timeout=30)
    h.check("Verification: OK" in r.stderr and "TLSv1.3" in r.stderr,
            f"openssl s_client verifies {WWW} over TLS 1.3: {r.stderr.strip()[:300]}")
    # A clean close seen from both sides (RFC 9293 3.6): the user sends close_notify, the relay
    # answers with its own once the backend's side has ended, and both close; whichever FIN
    # goes first holds TIME-WAIT: Linux's socket, or a TCB in the relay's stack. Afterwards
    # the relay's stacks hold only the two tunnels' TCBs (and TIME-WAITs).
    tw0 = relay_net(env, "tcp_time_wait")
    port = one_request(env, w)
    h.wait_until(lambda: port in time_wait_ports(w) or relay_net(env, "tcp_time_wait") > tw0, 5,
                 f"TIME-WAIT on the side that closed first (Linux port {port}, or the relay)")
    # 30 s: a FIN lost on the veth under load is retransmitted after 1 + 2 + 4 + 8 s of RFC 6298
    # backoff, so a closing TCB may rightly outlive 10 s (seen once in a CI run); a leaked one
    # never leaves, and the numbers are printed if it does not.
    try:
        h.wait_until(lambda: relay_tcp_connections(env) <= 2 + relay_net(env, "tcp_time_wait"),
                     30, "the relay's stacks hold only the 2 tunnels' TCBs (and TIME-WAITs) "
                     "after every user left")
    except h.TestFailure:
        print(json.dumps(env.stats().get("dpdk", {}), indent=1)[:6000])
        raise
    slow = subprocess.Popen(curl(env, w, "big", os.devnull, ["--limit-rate", "1M"]),
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    slow.kill()
    slow.wait()
    h.wait_until(lambda: env.counter("user_conns_open") == 0, 10,
                 "the killed download's connection is gone from the relay")
    ok, errs = downloads(env, w, 1, want, "after")
    h.check(ok == 1, f"a download after a killed one is byte-exact ({errs[:1]})")

    # 7. Metrics.
    text = env.ctl("metrics", tenant="contoso")[1]
    for needle in (f'apprelay_dpdk_port{{port="{w.port_name()}",stat="q0_rx_frames"}}',
                   'apprelay_dpdk_busy_cycles_total{worker="0"}',
                   'apprelay_net_tcp_accepted_total{worker="1"}'):
        h.check(needle in text, f"/metrics has {needle}")
    stats = env.stats().get("dpdk", {})
    busy = sum(x.get("busy_cycles", 0) for x in stats.get("workers", []))
    frames = sum(x.get("rx_frames", 0) for x in stats.get("workers", []))
    h.check(busy > 0 and frames > 0, f"busy cycles {busy} over {frames} frames")
    print(f"RESULT dpdk_{w.kind}: {frames} frames, {busy / max(frames, 1):.0f} busy cycles per "
          f"frame")

    # 8. Loss: restart with every 100th frame dropped each way.
    env.relay.stop()
    topo.dpdk["loss_every"] = 100
    if not start_relay(env, w, topo):
        return SKIP
    env.wait_tunnels(2, timeout=60)
    rc, res = loadgen(16, 16, 1 << 20, timeout=120)
    h.check(rc == 0 and res and res["failed"] == 0,
            f"16 x 1 MiB echoed byte-exact with every 100th frame lost "
            f"({res and res['ok']} ok, {res and res['failed']} failed)")
    want8 = sha(os.path.join(env.dir, "nginx-www", "8m"))
    ok, errs = downloads(env, w, 2, want8, "lossy", path="8m")
    h.check(ok == 2, f"2 downloads of 8 MiB byte-exact with every 100th frame lost ({errs[:1]})")
    port = env.stats().get("dpdk", {}).get("port", {})
    lost = sum(v for k, v in port.items() if k.endswith("loss_dropped"))
    rexmit = relay_net(env, "tcp_retransmits")
    h.check(lost > 0 and rexmit > 0, f"{lost} frames dropped by the loss mode, "
                                     f"{rexmit} segments retransmitted by the relay")
    h.check(conn.alive(), "the connector ran throughout")
    return 0


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "tap"
    why = can_run()
    if why:
        print(f"SKIP: {why}")
        return SKIP
    tag = os.getpid() % 100000
    try:
        w = World(kind, tag)
    except h.TestFailure as e:
        print(f"SKIP: cannot make the {kind} world: {e}")
        return SKIP
    result = {}
    try:
        def run(env):
            result["rc"] = body(env, w)
        rc = h.run_test(f"dpdk_{kind}", run)
    finally:
        w.close()
    return rc if rc != 0 else result.get("rc", 0)


if __name__ == "__main__":
    sys.exit(main())
