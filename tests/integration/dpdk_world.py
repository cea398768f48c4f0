"""The relay on its dpdk backend, with kernel-side users, connectors and backends in a network
namespace: shared by tests/integration/test_dpdk.py and bench/run's `apprelay-dpdk` system.

Two ports:

  tap   DPDK's net_tap; the PMD makes the tap, which moves into the namespace once the port runs
  veth  DPDK's net_af_packet on one end of a veth pair; the other end is in the namespace

Addresses are in 198.18.0.0/15 (RFC 2544, for benchmarking): traffic stays on the tap or veth.
"""
import json
import os
import shutil
import subprocess

import harness as h

SKIP = 77
WWW = "www.contoso.test"  # the nginx app; /etc/netns/<ns>/hosts points it at the relay
USER_PORT, TUNNEL_PORT = 8443, 8444  # the stack's listeners: fixed, the port has no kernel


def sh(*argv, check=True):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise h.TestFailure(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def can_run():
    """None, or why this machine cannot make the world."""
    if os.geteuid() != 0:
        return "not root: cannot create a tap, a veth or a network namespace"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "no `ip netns`"
    return None


class World:
    """The namespace, the link into it, and the relay's [dpdk] settings for that link.
    names: hostnames the namespace's /etc/hosts maps to the relay's address."""

    def __init__(self, kind, tag, names=(WWW,)):
        self.kind = kind
        self.ns = f"arl{tag}"
        self.dev = f"ar{kind[0]}{tag}"      # tap name, or the relay's end of the veth
        self.peer = f"arp{tag}"              # the namespace's end of the veth
        self.net = f"198.{18 + (tag >> 8) % 2}.{tag % 256}"  # a /24 per run
        self.relay_ip, self.peer_ip = f"{self.net}.1", f"{self.net}.2"
        self.made = []
        try:
            self._make(names)
        except BaseException:
            self.close()
            raise

    def _make(self, names):
        sh("ip", "netns", "add", self.ns)
        self.made.append(("netns", self.ns))
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        # `ip netns exec` bind-mounts this over /etc/hosts: stock clients (wrk takes no
        # --resolve) find the relay by the app's name, and send it as SNI.
        self.etc = f"/etc/netns/{self.ns}"
        os.makedirs(self.etc, exist_ok=True)
        self.made.append(("dir", self.etc))
        with open(os.path.join(self.etc, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{self.relay_ip} {n}\n" for n in names))
        if self.kind == "veth":
            sh("ip", "link", "add", self.dev, "type", "veth", "peer", "name", self.peer)
            self.made.append(("link", self.dev))
            sh("ip", "link", "set", self.peer, "netns", self.ns)
            # The relay's end carries no address: the user-space stack owns it. No IPv6 either,
            # so the kernel sends nothing of its own on it.
            sh("sysctl", "-qw", f"net.ipv6.conf.{self.dev}.disable_ipv6=1", check=False)
            sh("ip", "link", "set", self.dev, "up")
            # veth hands the kernel's TCP segments over with the checksum still to be filled
            # in (offload); af_packet passes them on as they are, and our stack rightly drops
            # them. A NIC on a wire would carry the computed checksum: so must the veth.
            sh("ip", "netns", "exec", self.ns, "ethtool", "-K", self.peer, "tx", "off")
            self.address_peer(self.peer)

    def vdev(self, queues=2):
        """queues: af_packet's queue pairs, one per relay worker (its fanout spreads frames over
        all of them: a queue no worker polls would swallow its share)."""
        if self.kind == "tap":
            return f"net_tap0,iface={self.dev}"
        return f"net_af_packet0,iface={self.dev},qpairs={queues}"

    def port_name(self):
        return "net_tap0" if self.kind == "tap" else "net_af_packet0"

    def ns_dev(self):
        """The namespace's end of the link: the tap itself, or the veth's peer."""
        return self.dev if self.kind == "tap" else self.peer

    def kernel_counters(self):
        """What the kernel side saw: the namespace's link counters (a frame dropped at the tap's
        queue towards the port is a tx drop here), the namespace's TCP retransmissions, and the
        machine's backlog drops (/proc/net/softnet_stat, frames the port wrote that the kernel
        had no room for). Counters; subtract two readings."""
        out = {}
        r = sh("ip", "-n", self.ns, "-s", "-j", "link", "show", "dev", self.ns_dev(), check=False)
        try:
            st = json.loads(r.stdout)[0]["stats64"]
            for d in ("rx", "tx"):
                for k in ("packets", "dropped", "errors"):
                    out[f"link_{d}_{k}"] = int(st[d][k])
        except (ValueError, IndexError, KeyError):
            pass
        r = sh("ip", "netns", "exec", self.ns, "cat", "/proc/net/snmp", check=False)
        rows = [line.split() for line in r.stdout.splitlines() if line.startswith("Tcp:")]
        if len(rows) == 2 and "RetransSegs" in rows[0]:
            out["ns_tcp_retrans_segs"] = int(rows[1][rows[0].index("RetransSegs")])
        try:
            with open("/proc/net/softnet_stat") as f:
                out["softnet_dropped"] = sum(int(line.split()[1], 16) for line in f)
        except (OSError, ValueError, IndexError):
            pass
        return out

    def address_peer(self, dev):
        sh("ip", "-n", self.ns, "addr", "add", f"{self.peer_ip}/24", "dev", dev)
        sh("ip", "-n", self.ns, "link", "set", dev, "up")

    def relay_started(self):
        if self.kind == "tap":
            # The PMD made the tap in our namespace when the port started; it moves only now
            # (PLATFORM.md: moving it earlier makes the PMD create a second one).
            sh("ip", "link", "set", self.dev, "netns", self.ns)
            self.address_peer(self.dev)

    def configure(self, topo, file_prefix):
        """Turns topo into a relay on this world's port: io = "dpdk", fixed listener ports."""
        topo.io = "dpdk"
        topo.listen_host = "0.0.0.0"
        topo.user_port, topo.tunnel_port = USER_PORT, TUNNEL_PORT
        topo.dpdk = {"vdev": [self.vdev(topo.workers)], "no_huge": True, "memory_mb": 256, "no_pci": True,
                     "file_prefix": file_prefix, "address": f"{self.relay_ip}/24"}

    def point_connector(self, env, cid, tunnel_port=TUNNEL_PORT):
        """An enrolled connector (management path: kernel loopback) dials the relay's port."""
        path = os.path.join(env.dir, f"conn-{cid}", "relay.json")
        with open(path) as f:
            rj = json.load(f)
        rj["relay"] = f"{self.relay_ip}:{tunnel_port}"
        with open(path, "w") as f:
            json.dump(rj, f)

    def close(self):
        for kind, name in reversed(self.made):
            if kind == "netns":
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            elif kind == "dir":
                shutil.rmtree(name, ignore_errors=True)
            else:
                subprocess.run(["ip", "link", "del", name], capture_output=True)
        self.made = []


def start_relay(env, w, topo, log_level="info"):
    """Starts the relay on w's port; None, or why it cannot run here (a skip, not a failure):
    EAL cannot start for lack of memory. Any other failure raises."""
    try:
        env.start_relay(topo, provision=False, log_level=log_level)
    except h.TestFailure:
        text = env.relay.log_text() if env.relay else ""
        if "dpdk_failed" in text and ("no_memory" in text or "Cannot allocate" in text):
            return f"EAL cannot start here: {text[-500:]}"
        raise
    w.relay_started()
    return None


def worker_stats(env):
    """The stats file's dpdk object: {"port": {...}, "workers": [{busy_cycles, ..., net}]}."""
    return env.stats().get("dpdk", {})
