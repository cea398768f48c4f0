"""HAProxy as the peer apprelay is judged against, built to do the same work per user stream.

Two TLS hops, as apprelay does:
  user --TLS 1.3--> front haproxy (the "relay": pinned to the relay's worker cpus)
       --TLS 1.3, mutual--> hop haproxy x2 (the "connectors": pinned with everything else)
       --plain TCP--> echo backend
The user-facing side uses the apprelay world's certificates (harness.make_world): the front
presents the app's ECDSA P-256 certificate for the app's SNI, verified against the users' CA.
The hop side has its own small PKI made here (ECDSA P-256, like apprelay's enrollment): a relay
CA and server certificate the hops present, and a tenant CA whose client certificate the front
presents and the hops require. Same TLS policy as apprelay's tls/context.cc: TLS 1.3 only,
AES-128-GCM first, X25519 then P-256.

HAProxy in TCP mode opens one hop connection per user stream (it cannot multiplex streams over
one TLS connection as apprelay's tunnels do); it resumes the hop's TLS session when it can, which
is its default and the fairest setting for it.

Stdlib only; processes are started through harness.Env so they are stopped by pid.
"""
import os
import socket
import subprocess
import time

TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
CURVES = "X25519:P-256"
HAPROXY_BIN = "/usr/sbin/haproxy"
# Above the largest idle-stream count the benchmark holds (2 fds per stream on the front).
MAX_CONN = 9000


def free_port():
    """HAProxy needs a port number in its config; ask the kernel for one that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.strip()))


class HopPKI:
    """ECDSA P-256 CAs and leaves for the hop side, in `directory`; paths are absolute."""

    def __init__(self, directory, server_name):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._ca("relay-ca")
        self._leaf("relay", "relay-ca", server_name, "serverAuth", dns=server_name)
        self._ca("tenant-ca")
        self._leaf("c1", "tenant-ca", "c1", "clientAuth")

    def path(self, name):
        return os.path.join(self.dir, name)

    def pem(self, name):
        """cert + key in one file, as HAProxy's `crt` wants it."""
        path = self.path(f"{name}.pem")
        with open(path, "w") as out:
            for part in (f"{name}.crt", f"{name}.key"):
                with open(self.path(part)) as f:
                    out.write(f.read())
        return path

    def _ca(self, name):
        _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3",
                  "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], self.dir)

    def _leaf(self, name, ca, cn, usage, dns=None):
        _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}"],
                 self.dir)
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
               f"extendedKeyUsage={usage}"] + ([f"subjectAltName=DNS:{dns}"] if dns else [])
        with open(self.path(f"{name}.ext"), "w") as f:
            f.write("\n".join(ext) + "\n")
        _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                  "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{name}.ext",
                  "-out", f"{name}.crt"], self.dir)


def _pem(cert, key, out_path):
    with open(out_path, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    return out_path


def _global(nbthread, cpus):
    cpu_list = ",".join(str(c) for c in cpus)
    return [
        "global",
        f"    nbthread {nbthread}",
        f"    cpu-map auto:1/1-{nbthread} {cpu_list}",
        f"    maxconn {MAX_CONN}",
        f"    ssl-default-bind-ciphersuites {TLS13_SUITES}",
        "    ssl-default-bind-options ssl-min-ver TLSv1.3",
        f"    ssl-default-server-ciphersuites {TLS13_SUITES}",
        "    ssl-default-server-options ssl-min-ver TLSv1.3",
        "    ssl-server-verify required",
        # Only abnormal sessions are logged (dontlog-normal), so a failed scenario says why
        # without logging costing HAProxy anything on the normal path.
        "    log stderr format raw local0",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    option dontlog-normal",
        # Like apprelay's 20 s first-OPEN timeout: with 1,024 users arriving at once the hops
        # (one thread each, on the shared cpu) queue connects for many seconds; 5 s dropped them.
        "    timeout connect 20s",
        "    timeout client 1h",
        "    timeout server 1h",
        f"    maxconn {MAX_CONN}",
        "",
    ]


def front_config(hop_pki, app_pem, port, hops, workers_cpus, relay_server_name):
    lines = _global(len(workers_cpus), workers_cpus)
    lines += [
        "frontend users",
        f"    bind 127.0.0.1:{port} ssl crt {app_pem} curves {CURVES}",
        "    default_backend connectors",
        "",
        "backend connectors",
        "    balance roundrobin",
        # A refused hop connection is retried on the other hop (apprelay retries a refused OPEN
        # on another connector of the group).
        "    retries 2",
        "    option redispatch 1",
        # Liveness: a check is a TLS handshake, bounded by min(timeout connect, inter), so a hop
        # busy with a burst of 1024 user handshakes misses 1 s checks and HAProxy would mark
        # every hop down and close users' streams. 3 s x 3 keeps a slow hop up; a killed hop
        # refuses connections, which fails the stream's connect at once and redispatches it.
        "    timeout check 3s",
    ]
    c1 = hop_pki.pem("c1")
    for i, hop_port in enumerate(hops):
        lines.append(
            f"    server hop{i + 1} 127.0.0.1:{hop_port} ssl crt {c1} "
            f"ca-file {hop_pki.path('relay-ca.crt')} verify required "
            f"sni str({relay_server_name}) verifyhost {relay_server_name} "
            "check inter 3s fall 3 rise 1")
    return "\n".join(lines) + "\n"


def hop_config(hop_pki, port, backend_port):
    lines = _global(1, [0])
    lines += [
        "frontend tunnel",
        f"    bind 127.0.0.1:{port} ssl crt {hop_pki.pem('relay')} "
        f"ca-file {hop_pki.path('tenant-ca.crt')} verify required curves {CURVES}",
        "    default_backend app",
        "",
        "backend app",
        f"    server backend 127.0.0.1:{backend_port}",
    ]
    return "\n".join(lines) + "\n"


def _wait_listening(proc, port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode} (log {proc.log_path})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not listening on {port} after {timeout}s")


class Peer:
    """A started HAProxy two-hop peer: .port (users connect here), .front (the relay-side
    process whose cpu and memory are measured), .hops (the connector-side processes)."""

    def __init__(self, env, backend_port, app_cert, app_key, worker_cpus, relay_server_name,
                 hops=2, start_front=None):
        """app_cert/app_key: the user-facing certificate (absolute paths)."""
        hop_pki = HopPKI(os.path.join(env.dir, "peer-pki"), relay_server_name)
        app_pem = _pem(app_cert, app_key, hop_pki.path("app.pem"))
        self.hops = []
        hop_ports = []
        for i in range(hops):
            hp = free_port()
            cfg = os.path.join(env.dir, f"haproxy-hop{i + 1}.cfg")
            with open(cfg, "w") as f:
                f.write(hop_config(hop_pki, hp, backend_port))
            p = env.start(f"haproxy-hop{i + 1}", [HAPROXY_BIN, "-db", "-f", cfg])
            _wait_listening(p, hp)
            self.hops.append(p)
            hop_ports.append(hp)
        self.port = free_port()
        cfg = os.path.join(env.dir, "haproxy-front.cfg")
        with open(cfg, "w") as f:
            f.write(front_config(hop_pki, app_pem, self.port, hop_ports, worker_cpus,
                                 relay_server_name))
        argv = [HAPROXY_BIN, "-db", "-f", cfg]
        # The caller decides the cpus the front process starts on (its cpu-map then pins threads).
        self.front = start_front(argv) if start_front else env.start("haproxy-front", argv)
        _wait_listening(self.front, self.port)
