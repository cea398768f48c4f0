"""The installed systemd units, run by a real systemd (the host's /lib/systemd/systemd, Debian
12's 252) as PID 1 of private namespaces; test_package.py only verifies them with
systemd-analyze.

What it shows, as an operator would see it:
  - the units come from `meson install --destdir` of the build; only the paths that must point
    into the build are rewritten (the programs -> the build's, sysconfdir/apprelay -> a
    directory inside the namespace); every hardening directive is kept, and systemd reports
    them loaded (`systemctl show`). A drop-in per service sends its output to a file.
  - apprelay.service (Type=notify): `systemctl start` returns once READY=1 arrived, the user
    port (443) already accepting; StatusText is the relay's status line; the relay runs as a
    dynamic, non-root uid with CAP_NET_BIND_SERVICE alone (CapEff/CapPrm/CapBnd/CapAmb),
    NoNewPrivs and seccomp; its StateDirectory is the DynamicUser's private one.
  - provisioning with apprelayctl on /run/apprelay/admin.sock; `apprelay-connector register`
    into /var/lib/apprelay-connector/site-a as root (README "Install"); apprelay-connector@site-a
    starts, systemd moves that directory under /var/lib/private for its dynamic user, the tunnel
    comes up, and a user's TLS connection to port 443 echoes byte-exact through it to an echo
    backend.
  - `systemctl reload apprelay`: --check-config, then SIGHUP (settings_reloaded in the log); a
    broken file makes the reload fail and the relay keeps running (same pid, echo still works).
  - `systemctl stop apprelay-connector@site-a` drains (the relay sees its GOAWAY) and exits 0;
    `systemctl stop apprelay` drains (STOPPING) and exits 0.
  - apprelay-connector-update@site-a.timer loads, is enabled and listed by list-timers.
  - negative controls (the checks can fail): a unit whose ExecStart binary is missing fails to
    start (203/EXEC); the relay's unit run without NOTIFY_SOCKET never becomes ready and
    `systemctl start` fails on its start timeout.

Containment (systemd and the units must not touch the host):
  - `unshare --pid --fork --mount --mount-proc --net --uts --ipc --cgroup`, in a cgroup of our
    own (removed at the end). Inside, before systemd: every mount private; tmpfs over /run,
    /tmp, /var/tmp, /var/log, /var/lib, /var/cache, /etc/systemd; the test's dir bound at
    /run/t before /tmp is covered; the host's / remounted read-only in this namespace; a
    private /dev (a few device nodes, its own devpts; /dev/console is a pty the test reads: the
    manager's log); a fresh read-only sysfs with cgroup2 (this namespace's subtree) on
    /sys/fs/cgroup; /proc/sys read-only; `lo` up.
  - SYSTEMD_UNIT_PATH is /etc/systemd/system (the tmpfs) and the test's unit dir, no trailing
    ':', so no host unit is found; generators point at an empty dir; container=apprelay-test,
    so systemd and systemd-shutdown skip the host-wide steps (kmsg, loop/DM detach...). Empty
    targets stand in for sysinit.target, basic.target and the others the units need.
  - `systemctl list-units --all` must show nothing outside the test's units, systemd's own
    slices/scope and the mount units mirroring the namespace's mount table; journald, udevd,
    tmpfiles, sysctl and modules-load are never loaded (a reference to one shows not-found).
    No process in the namespace but ours; a sentinel file in the host's /tmp survives.
  - every wait is bounded; the end is `systemctl poweroff`, then PID 1 is killed by its host
    pid if still there.

Skips (exit 77) only where the machine cannot do this: not root, no CAP_SYS_ADMIN, no unshare
or nsenter, no /lib/systemd/systemd, no cgroup2 hierarchy to make a cgroup in, or the kernel
refusing the namespaces.
"""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import harness as h

SKIP = 77
SYSTEMD = "/lib/systemd/systemd"
SNI = "web.contoso.test"
SITE = "site-a"
INNER = "/run/t"  # the test's dir inside the namespace
ETC = INNER + "/etc/apprelay"  # sysconfdir/apprelay of the installed units, inside
BACKEND_PORT = 9000
CAP_NET_BIND_SERVICE = 10
CAP_SYS_RESOURCE = 24
# The connector's update units and its template: instances the test makes of them.
RELAY_UNITS = ["apprelay.service", "apprelay-connector@.service",
               "apprelay-connector-update@.service", "apprelay-connector-update@.timer"]
# Units systemd must never load here: the host's early-boot services.
FORBIDDEN = re.compile(r"^systemd-(tmpfiles|udevd|journald|sysctl|modules-load)")
# Stand-ins for the targets the units and their default dependencies name.
STUB_TARGETS = ["sysinit", "basic", "sockets", "timers", "paths", "slices", "network",
                "network-pre", "network-online", "multi-user", "local-fs", "local-fs-pre",
                "remote-fs", "swap", "umount", "final", "time-set", "time-sync", "nss-lookup",
                "nss-user-lookup"]

# PID 1 of the namespace starts as this script: mounts, then exec systemd. `set -e`: any step
# that fails stops the boot before systemd runs.
BOOT_SH = r"""set -eu
mount --make-rprivate /
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/t /run/apprelay-test/no-generators
mount --bind "$T_HOST" /run/t
touch /run/apprelay-test/console
mount --bind "$CONSOLE_HOST" /run/apprelay-test/console
mount -o remount,bind,ro /
for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$d"; done
for d in /var/log /var/lib /var/cache /etc/systemd; do
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$d"
done
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
mkdir /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
for i in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${i%%:*}" "/dev/${i#*:}"; done
touch /dev/console
mount --bind /run/apprelay-test/console /dev/console
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
for p in /proc/sys /proc/sysrq-trigger; do
    [ -e "$p" ] || continue
    mount --bind "$p" "$p"; mount -o remount,bind,ro "$p"
done
ip link set lo up
cp -R /run/t/etc-systemd/. /etc/systemd/
export SYSTEMD_UNIT_PATH=/etc/systemd/system:/run/t/units
export SYSTEMD_GENERATOR_PATH=/run/apprelay-test/no-generators
export SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/apprelay-test/no-generators
export container=apprelay-test
exec /lib/systemd/systemd --unit=apprelay-test.target --log-target=console --log-level=info \
    --show-status=no
"""

# A user's TLS connection from inside the namespace's network: harness.UserClient + echo.
CLIENT_PY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import harness as h
n, seed, port = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sni, ca = sys.argv[5], sys.argv[6]
t0 = time.monotonic()
c = h.UserClient(port, sni, ca)
secs, mbps = h.echo_roundtrip(c, h.pattern(n, seed=seed), half_close=True, timeout=60)
c.close()
print(json.dumps({"bytes": n, "secs": time.monotonic() - t0, "mbps": mbps}))
"""


# A user stream held open across `systemctl stop` of the connector: 64 KiB echoed, "open",
# then on a line from the test 1 MiB more echoed byte-exact while the connector drains, "echoed",
# then close_notify, and the relay's close_notify back: the stream ends cleanly while the
# connector stops (the connector flushes its last stream's final frames before it exits; it used
# not to, and the user saw a reset).
HELD_PY = r"""
import sys
sys.path.insert(0, sys.argv[1])
import harness as h
c = h.UserClient(int(sys.argv[2]), sys.argv[3], sys.argv[4])
def echo(data):
    got = bytearray()
    c.transfer(data, expect=len(data), timeout=60, verify=lambda off, b: got.extend(b))
    if bytes(got) != data:
        raise SystemExit(f"echo differs ({len(got)} of {len(data)} bytes)")
echo(h.pattern(64 * 1024, seed=7))
print("open", flush=True)
sys.stdin.readline()
echo(h.pattern(1024 * 1024, seed=8))
print("echoed", flush=True)
c.transfer(b"", expect=0, timeout=20, half_close=True, until_close=True)
print("closed" if c.closed_notify else "no close_notify", flush=True)
c.close()
"""


def run(argv, timeout=60, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       **kw)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def cap_set(status_text, field):
    m = re.search(rf"^{field}:\s*([0-9a-f]+)$", status_text, re.M)
    return int(m.group(1), 16) if m else None


def cgroup2_parent():
    """Where to make the namespace's cgroup: our own cgroup in the cgroup2 hierarchy."""
    mnt = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] == "cgroup2":
                mnt = left.split()[4]
                break
    if mnt is None:
        return None
    with open("/proc/self/cgroup") as f:
        rel = next((ln.strip()[3:] for ln in f if ln.startswith("0::")), None)
    if rel is None:
        return None
    return os.path.join(mnt, rel.lstrip("/"))


def preflight():
    """None when this machine can boot systemd in namespaces, else why not."""
    if os.geteuid() != 0:
        return "not root"
    with open("/proc/self/status") as f:
        eff = cap_set(f.read(), "CapEff")
    if not eff or not eff & (1 << 21):
        return "no CAP_SYS_ADMIN"
    for tool in ("unshare", "nsenter", "mknod", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing (scripts/setup installs the systemd package)"
    parent = cgroup2_parent()
    if parent is None or not os.path.isdir(parent):
        return "no cgroup2 hierarchy"
    rc, out, err = run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net",
                        "--uts", "--ipc", "--cgroup", "--propagation", "private", "true"],
                       timeout=30)
    if rc != 0:
        return f"the kernel refuses the namespaces: {err.strip()}"
    return None


def rmdir_tree(path):
    """A cgroup directory: its children first (rmdir, never unlink: cgroupfs has no files)."""
    for d, _, _ in sorted(os.walk(path), key=lambda x: -len(x[0])):
        try:
            os.rmdir(d)
        except OSError as e:
            h.log(f"rmdir {d}: {e}")


class Machine:
    """systemd as PID 1 of private namespaces (see the module comment). Host side: the unshare
    process we start, the namespace's PID 1 (its child; killed by this pid only), a cgroup of
    our own, and a pty whose slave is the namespace's /dev/console."""

    def __init__(self, env):
        self.env = env
        self.dir = env.dir
        self.unshare = None
        self.init_pid = None
        self.cgroup = None
        self.console_log = os.path.join(self.dir, "systemd-console.log")
        self._master = self._slave = None
        self._stop = threading.Event()
        self._reader = None

    def path(self, inner):
        """A path inside the namespace, seen from the host through PID 1's root."""
        return f"/proc/{self.init_pid}/root{inner}"

    def boot(self, timeout=60):
        with open(os.path.join(self.dir, "boot.sh"), "w") as f:
            f.write(BOOT_SH)
        self._master, self._slave = os.openpty()
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        self.cgroup = os.path.join(cgroup2_parent(), f"apprelay-systemd-test-{os.getpid()}")
        os.mkdir(self.cgroup)
        procs = os.path.join(self.cgroup, "cgroup.procs")

        def enter_cgroup():
            with open(procs, "w") as f:
                f.write("0")

        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "T_HOST": self.dir,
               "CONSOLE_HOST": os.ttyname(self._slave)}
        self._boot_log = open(os.path.join(self.dir, "boot.log"), "wb")
        t0 = time.monotonic()
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--mount-proc",
             "--net", "--uts", "--ipc", "--cgroup", "--propagation", "private",
             "/bin/sh", os.path.join(self.dir, "boot.sh")],
            env=env, preexec_fn=enter_cgroup, stdin=subprocess.DEVNULL, stdout=self._boot_log,
            stderr=subprocess.STDOUT)
        h.log(f"started unshare pid={self.unshare.pid}")

        def child():
            if self.unshare.poll() is not None:
                raise h.TestFailure(f"unshare exited with {self.unshare.returncode} before "
                                    f"systemd ran: {self.boot_text()}")
            with open(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children") as f:
                kids = f.read().split()
            return int(kids[0]) if kids else None
        self.init_pid = h.wait_until(child, 10, "the namespace's PID 1")
        h.log(f"namespace PID 1 is host pid {self.init_pid}")

        def manager_up():
            if self.unshare.poll() is not None:
                raise h.TestFailure(f"the namespace ended during boot (exit "
                                    f"{self.unshare.returncode}): {self.boot_text()}")
            try:
                with open(f"/proc/{self.init_pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                return False
            return comm == "systemd" and os.path.exists(self.path("/run/systemd/private"))
        h.wait_until(manager_up, timeout, "systemd's private bus socket in the namespace")
        rc, out, err = self.run(["systemctl", "is-system-running", "--wait"], timeout=timeout)
        secs = time.monotonic() - t0
        h.check(out.strip() == "running", f"systemd booted apprelay-test.target: "
                                          f"is-system-running={out.strip()!r} ({secs:.2f}s)")
        return secs

    def _read_console(self):
        with open(self.console_log, "wb") as out:
            while not self._stop.is_set():
                r, _, _ = select.select([self._master], [], [], 0.2)
                if not r:
                    continue
                try:
                    data = os.read(self._master, 65536)
                except OSError:
                    time.sleep(0.1)
                    continue
                out.write(data)
                out.flush()

    def boot_text(self):
        try:
            with open(os.path.join(self.dir, "boot.log"), "rb") as f:
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def run(self, argv, timeout=60, net_only=False, expect_rc=None):
        """argv inside the namespace (mount, net, uts, ipc, pid), as root."""
        ns = ["--net"] if net_only else ["--mount", "--net", "--uts", "--ipc", "--pid",
                                         "--wd=/"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
               "SYSTEMD_COLORS": "0"}
        rc, out, err = run(["nsenter", "--target", str(self.init_pid)] + ns + ["--"] + argv,
                           timeout=timeout, env=env)
        if expect_rc is not None and rc != expect_rc:
            raise h.TestFailure(f"{' '.join(argv)}: exit {rc} (expected {expect_rc})\n{out}"
                                f"\n{err}")
        return rc, out, err

    def popen(self, argv):
        """argv in the namespace's network only, with pipes (a client held open)."""
        return subprocess.Popen(["nsenter", "--target", str(self.init_pid), "--net", "--"] + argv,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def systemctl(self, *args, timeout=60, expect_rc=0):
        return self.run(["systemctl", "--no-pager"] + list(args), timeout=timeout,
                        expect_rc=expect_rc)

    def show(self, unit, *props):
        _, out, _ = self.systemctl("show", unit, "-p", ",".join(props))
        kv = {}
        for line in out.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                kv[k] = kv[k] + "\n" + v if k in kv else v  # ExecReload= twice: both
        return kv

    def units(self):
        _, out, _ = self.systemctl("list-units", "--all", "--plain", "--no-legend", "--full")
        rows = []
        for line in out.splitlines():
            f = line.split(None, 4)
            if len(f) >= 4:
                rows.append((f[0], f[1], f[2], f[3]))
        return rows

    def alive(self):
        return self.unshare is not None and self.unshare.poll() is None

    def poweroff(self, timeout=60):
        t0 = time.monotonic()
        rc, out, err = self.systemctl("poweroff", expect_rc=None)
        try:
            code = self.unshare.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise h.TestFailure(f"the namespace did not end {timeout}s after systemctl poweroff")
        secs = time.monotonic() - t0
        # reboot(POWER_OFF) by a pid namespace's init ends it with SIGINT; unshare re-raises it.
        h.check(rc == 0 and code in (0, -signal.SIGINT),
                f"systemctl poweroff: the namespace ended (unshare {code}, {secs:.2f}s)")
        return secs

    def close(self):
        """Bounded; kills only what we started, by pid."""
        if self.unshare is not None and self.unshare.poll() is None:
            if self.init_pid is not None:
                h.log(f"killing the namespace's PID 1 (host pid {self.init_pid})")
                try:
                    os.kill(self.init_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.unshare.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.unshare.pid, signal.SIGKILL)
                self.unshare.wait(timeout=15)
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        if self.cgroup is not None and os.path.isdir(self.cgroup):
            # The namespace's processes are gone once its PID 1 is; the cgroup empties.
            try:
                h.wait_until(lambda: not open(os.path.join(self.cgroup, "cgroup.procs")).read()
                             .strip(), 10, "the namespace's cgroup to empty")
            except h.TestFailure as e:
                h.log(str(e))
            rmdir_tree(self.cgroup)


# ---------------------------------------------------------------------------------------------
# The installed units
# ---------------------------------------------------------------------------------------------

def build_options():
    rc, out, err = run(["meson", "introspect", h.BUILD, "--buildoptions"], timeout=60)
    if rc != 0:
        raise h.TestFailure(f"meson introspect {h.BUILD}: {err.strip()}")
    return {o["name"]: o["value"] for o in json.loads(out)}


def stage_install(env):
    """`meson install --destdir`; returns (stage dir, prefix, bindir, sysconfdir) as
    contrib/meson.build computes them."""
    stage = os.path.join(env.dir, "stage")
    rc, out, err = run(["meson", "install", "-C", h.BUILD, "--destdir", stage, "--no-rebuild",
                        "--quiet"], timeout=300)
    h.check(rc == 0, f"meson install --destdir {stage}: exit {rc} {err.strip()[-400:]}")
    o = build_options()
    bindir = os.path.join(o["prefix"], o["bindir"])
    sysconfdir = os.path.join(o["prefix"], o["sysconfdir"])
    return stage, o["prefix"], bindir, sysconfdir


def unit_values(text, key):
    return [ln.split("=", 1)[1].strip() for ln in text.splitlines()
            if ln.startswith(key + "=")]


def rewrite_unit(text, bindir, sysconfdir):
    """The programs -> the build's; sysconfdir/apprelay -> ETC. Nothing else changes."""
    programs = {"apprelay": h.RELAY_BIN, "apprelay-connector": h.CONNECTOR_BIN}
    out = re.sub(re.escape(bindir) + r"/(apprelay-connector|apprelay)(?![\w.-])",
                 lambda m: programs[m.group(1)], text)
    return out.replace(sysconfdir.rstrip("/") + "/apprelay/", ETC + "/")


def check_rewrite(name, before, after):
    """Every changed line only had its paths rewritten; the hardening is the installed one."""
    a, b = before.splitlines(), after.splitlines()
    h.check(len(a) == len(b), f"{name}: the rewrite keeps every line")
    changed = [(x, y) for x, y in zip(a, b) if x != y]
    for x, y in changed:
        key = x.split("=", 1)[0] if "=" in x else ""
        h.check(key in ("ExecStartPre", "ExecStart", "ExecReload", "EnvironmentFile") or
                x.startswith("#") or x.lstrip().startswith("--"),
                f"{name}: only paths change: {x!r} -> {y!r}")
    print(f"  {name}: {len(changed)} line(s) rewritten")


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def make_units(env, stage, prefix, bindir, sysconfdir):
    """The unit dir (installed units, rewritten; stub targets; the test's own units) and
    /etc/systemd (system.conf, drop-ins). Returns the installed units' text, rewritten."""
    units = os.path.join(env.dir, "units")
    etc_sd = os.path.join(env.dir, "etc-systemd")
    # contrib/meson.build: prefix/lib/systemd/system.
    installed = os.path.join(stage, prefix.lstrip("/"), "lib/systemd/system")
    texts = {}
    for u in RELAY_UNITS:
        before = open(os.path.join(installed, u)).read()
        after = rewrite_unit(before, bindir, sysconfdir)
        check_rewrite(u, before, after)
        write(os.path.join(units, u), after)
        texts[u] = after
    for t in STUB_TARGETS:
        write(os.path.join(units, f"{t}.target"),
              f"[Unit]\nDescription=apprelay test stand-in for {t}.target\n"
              "DefaultDependencies=no\n")
    write(os.path.join(units, "shutdown.target"),
          "[Unit]\nDescription=apprelay test stand-in for shutdown.target\n"
          "DefaultDependencies=no\nRefuseManualStart=yes\n")
    write(os.path.join(units, "apprelay-test.target"),
          "[Unit]\nDescription=apprelay test: what the namespace boots into\n"
          "Requires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n")
    # `systemctl poweroff` starts poweroff.target; a oneshot's SuccessAction ends the manager
    # (what systemd-poweroff.service does, under our own name).
    write(os.path.join(units, "poweroff.target"),
          "[Unit]\nDescription=apprelay test: power off the namespace\nDefaultDependencies=no\n"
          "Requires=apprelay-test-poweroff.service\nAfter=apprelay-test-poweroff.service\n"
          "AllowIsolate=yes\n")
    write(os.path.join(units, "apprelay-test-poweroff.service"),
          "[Unit]\nDescription=apprelay test: power off the namespace\nDefaultDependencies=no\n"
          "Requires=shutdown.target umount.target final.target\n"
          "After=shutdown.target umount.target final.target\nSuccessAction=poweroff-force\n")
    write(os.path.join(units, "apprelay-test-backend.service"),
          "[Unit]\nDescription=apprelay test: echo backend (bench/loadgen)\n\n[Service]\n"
          f"ExecStart={h.BACKEND_BIN} --listen 127.0.0.1:{BACKEND_PORT} --mode echo "
          "--ready-file /run/apprelay-test-backend.ready --threads 1\n"
          f"StandardOutput=append:{INNER}/apprelay-test-backend.service.log\n")
    # Negative controls: the relay's unit with a missing program; the relay's unit run without
    # NOTIFY_SOCKET (a drop-in's UnsetEnvironment=; NotifyAccess=none would be forced back to
    # main for Type=notify), so READY=1 never arrives, with a short start timeout.
    relay = texts["apprelay.service"]
    missing = h.RELAY_BIN + ".missing"
    write(os.path.join(units, "apprelay-missing.service"), relay.replace(h.RELAY_BIN, missing))
    write(os.path.join(units, "apprelay-noready.service"), relay)
    write(os.path.join(etc_sd, "system/apprelay-noready.service.d/test.conf"),
          "[Service]\nUnsetEnvironment=NOTIFY_SOCKET\nTimeoutStartSec=5s\nRestart=no\n"
          f"StandardOutput=append:{INNER}/apprelay-noready.service.log\n")
    # Output to files (no journald here); everything else as installed. ExecStopPost= records
    # how the main process ended: a stopped unit is unloaded at once, after which `systemctl
    # show` reports a fresh unit's ExecMainStatus=0 whatever the exit was.
    for unit in ("apprelay.service", f"apprelay-connector@{SITE}.service",
                 f"apprelay-connector-update@{SITE}.service", "apprelay-missing.service"):
        write(os.path.join(etc_sd, f"system/{unit}.d/test.conf"),
              f"[Service]\nStandardOutput=append:{INNER}/{unit}.log\n"
              "ExecStopPost=/bin/sh -c 'echo \"event=unit_exit result=$SERVICE_RESULT "
              "code=$EXIT_CODE status=$EXIT_STATUS\"'\n")
    # Units without a drop-in (and mount units) write to the console, never to journald.
    write(os.path.join(etc_sd, "system.conf"), "[Manager]\nDefaultStandardOutput=tty\n")
    own = set(os.listdir(units))
    return texts, own


def relay_toml(stage, sysconfdir, limits=""):
    """The installed sample, as shipped ([relay] on 0.0.0.0:443/8444/8445, state_dir
    /var/lib/apprelay, admin socket /run/apprelay/admin.sock); `limits` is added to [limits]."""
    text = open(os.path.join(stage, sysconfdir.lstrip("/"), "apprelay/relay.toml")).read()
    return text.replace("[limits]\n", "[limits]\n" + limits, 1)


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------

def proc_status(m, pid):
    return open(m.path(f"/proc/{pid}/status")).read()


def nofile_limit(m, pid):
    for line in open(m.path(f"/proc/{pid}/limits")):
        if line.startswith("Max open files"):
            return int(line.split()[3]), int(line.split()[4])
    return None


def read_line(proc, timeout):
    """One line of proc's stdout within timeout ("" at EOF: its stderr is in the failure)."""
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise h.TestFailure(f"no line from the client within {timeout}s")
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(timeout=10)
        raise h.TestFailure(f"the client ended (exit {proc.returncode}): {proc.stderr.read()}")
    return line


def ctl(m, *args, tenant="contoso", json_out=False):
    argv = [h.CTL_BIN, "--tenant", tenant] + (["--json"] if json_out else []) + list(args)
    _, out, _ = m.run(argv, expect_rc=0)
    return json.loads(out) if json_out else out


def echo(m, env, n, seed):
    rc, out, err = m.run([sys.executable, "-c", CLIENT_PY, os.path.dirname(__file__), str(n),
                          str(seed), "443", SNI, env.pki.path("users-ca.crt")],
                         timeout=90, net_only=True)
    if rc != 0:
        raise h.TestFailure(f"user echo of {n} bytes through port 443 failed: {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


def log_lines(env, unit, event):
    try:
        text = open(os.path.join(env.dir, f"{unit}.log"), errors="replace").read()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if f"event={event}" in ln]


def check_only_our_units(m, own, when):
    """Nothing but the test's units, systemd's own slices/scope and mount units mirroring the
    namespace's mount table; host services never loaded."""
    builtin = {"-.slice", "system.slice", "init.scope"}
    foreign, refs = [], []
    for unit, load, active, sub in m.units():
        if FORBIDDEN.match(unit):
            h.check(load != "loaded" and active == "inactive",
                    f"{when}: {unit} is never loaded or started ({load} {active})")
        if unit in own or unit in builtin:
            continue
        base = unit.split("@")[0] + "@"
        suffix = unit.rsplit(".", 1)[-1]
        if "@" in unit and base + "." + suffix in own:
            continue
        if unit.startswith("system-") and unit.endswith(".slice"):
            continue  # the slice systemd makes for a template's instances
        if unit.endswith(".mount") and load == "loaded":
            continue  # mirrors of the mount table; systemd starts nothing for them
        if load != "loaded" and active == "inactive":
            refs.append(unit)  # named by a dependency, no such unit: nothing can start
            continue
        foreign.append((unit, load, active, sub))
    h.check(not foreign, f"{when}: no unit outside the test's is loaded or active {foreign}")
    if refs:
        print(f"  {when}: referenced but absent (not-found, inactive): {' '.join(refs)}")


def check_only_our_processes(m, when):
    names = {}
    root = m.path("/proc")
    for p in os.listdir(root):
        if p.isdigit():
            try:
                names[int(p)] = open(f"{root}/{p}/comm").read().strip()
            except OSError:
                pass
    allowed = {"systemd", "apprelay", "apprelay-connec", "apprelay-testba", "nsenter",
               "systemctl", "sh"}
    # "(sd-...)": systemd's own short-lived helpers (forked before an exec).
    odd = {p: n for p, n in names.items() if n not in allowed and not n.startswith("(sd-")}
    h.check(names.get(1) == "systemd" and not odd,
            f"{when}: the namespace runs only systemd and the test's programs "
            f"{sorted(set(names.values()))}")


def systemd_body(env):
    h.require_binaries(h.RELAY_BIN, h.CONNECTOR_BIN, h.CTL_BIN, h.BACKEND_BIN)
    for b in (h.RELAY_BIN, h.CONNECTOR_BIN):
        h.check(not re.match(r"^/(home|root|run/user)(/|$)", b),
                f"{b} is outside ProtectHome's paths (the dynamic users must reach it)")
    timings = {}
    os.chmod(env.dir, 0o711)  # the dynamic users read ETC; everything else stays root's
    sentinel = tempfile.NamedTemporaryFile(prefix="apprelay-systemd-sentinel-", dir="/tmp",
                                           delete=False)
    sentinel.close()
    try:
        systemd_checks(env, timings, sentinel.name)
    finally:
        if os.path.exists(sentinel.name):
            os.unlink(sentinel.name)


def systemd_checks(env, timings, sentinel):
    with open("/proc/self/mountinfo") as f:
        host_mounts = sorted(ln.split()[4] for ln in f)

    stage, prefix, bindir, sysconfdir = stage_install(env)
    texts, own = make_units(env, stage, prefix, bindir, sysconfdir)
    for d in (INNER + "/etc", ETC):
        os.makedirs(env.dir + d[len(INNER):], mode=0o755, exist_ok=True)
        os.chmod(env.dir + d[len(INNER):], 0o755)
    cfg_host = env.dir + ETC[len(INNER):] + "/relay.toml"
    write(cfg_host, relay_toml(stage, sysconfdir))
    h.make_world(env.pki, [("web", SNI, f"127.0.0.1:{BACKEND_PORT}")], connectors=(),
                 workers=1, with_fabrikam=False)

    m = Machine(env)
    try:
        timings["boot"] = m.boot()
        check_only_our_units(m, own, "after boot")

        # -- what systemd loaded --------------------------------------------------------------
        p = m.show("apprelay.service", "Type", "NotifyAccess", "DynamicUser", "ProtectSystem",
                   "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                   "CapabilityBoundingSet", "AmbientCapabilities", "LimitNOFILE",
                   "StateDirectory", "RuntimeDirectory", "SystemCallFilter",
                   "SystemCallArchitectures", "RestrictAddressFamilies", "ExecStart",
                   "ExecStartPre", "ExecReload", "FragmentPath", "DropInPaths")
        h.check(p["FragmentPath"] == os.path.join(INNER, "units/apprelay.service") and
                p["DropInPaths"] == "/etc/systemd/system/apprelay.service.d/test.conf",
                f"apprelay.service is the installed unit plus the output drop-in "
                f"({p['FragmentPath']}, {p['DropInPaths']})")
        hardening = ("DynamicUser", "ProtectSystem", "CapabilityBoundingSet", "LimitNOFILE",
                     "StateDirectory", "RuntimeDirectory", "RestrictAddressFamilies")
        h.check(p["Type"] == "notify" and p["NotifyAccess"] == "main" and
                p["DynamicUser"] == "yes" and p["ProtectSystem"] == "strict" and
                p["ProtectHome"] == "yes" and p["PrivateTmp"] == "yes" and
                p["PrivateDevices"] == "yes" and p["NoNewPrivileges"] == "yes" and
                p["CapabilityBoundingSet"] == "cap_net_bind_service" and
                p["AmbientCapabilities"] == "cap_net_bind_service" and
                p["LimitNOFILE"] == "1048576" and p["StateDirectory"] == "apprelay" and
                p["RuntimeDirectory"] == "apprelay" and p["SystemCallArchitectures"] ==
                "native" and "io_uring_setup" in p["SystemCallFilter"] and
                set(p["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"},
                f"systemd loaded the relay's hardening as installed "
                f"{ {k: v for k, v in p.items() if k in hardening} }")
        h.check(h.RELAY_BIN in p["ExecStart"] and ETC + "/relay.toml" in p["ExecStart"] and
                "--check-config" in p["ExecStartPre"] and "kill -HUP" in p["ExecReload"] and
                "--check-config" in p["ExecReload"],
                "ExecStart/ExecStartPre/ExecReload: the build's relay, the namespace's config")
        p = m.show(f"apprelay-connector@{SITE}.service", "DynamicUser", "CapabilityBoundingSet",
                   "AmbientCapabilities", "StateDirectory", "ProtectSystem", "Restart",
                   "LimitNOFILE")
        h.check(p == {"DynamicUser": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities":
                      "", "StateDirectory": f"apprelay-connector/{SITE}", "ProtectSystem":
                      "strict", "Restart": "always", "LimitNOFILE": "1048576"},
                f"the connector's hardening as installed {p}")

        # -- the echo backend ---------------------------------------------------------------------
        m.systemctl("start", "apprelay-test-backend.service")
        h.wait_until(lambda: os.path.exists(m.path("/run/apprelay-test-backend.ready")), 15,
                     "the echo backend's ready file")

        # -- the relay: Type=notify ----------------------------------------------------------------
        t0 = time.monotonic()
        m.systemctl("start", "apprelay.service", timeout=90)
        timings["start relay"] = time.monotonic() - t0
        rc, out, err = m.run(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/443"], timeout=10)
        h.check(rc == 0, f"when `systemctl start apprelay` returns the user port 443 accepts "
                         f"({timings['start relay']:.2f}s) {err.strip()}")
        p = m.show("apprelay.service", "ActiveState", "SubState", "StatusText", "MainPID",
                   "ExecMainStatus")
        pid = int(p["MainPID"])
        h.check(p["ActiveState"] == "active" and p["SubState"] == "running" and pid > 0,
                f"apprelay.service active/running, MainPID {pid}")
        h.check(p["StatusText"].startswith("running: user port 443, tunnel port 8444, "
                                           "enroll port 8445"),
                f"StatusText is the relay's status line: {p['StatusText']!r}")
        st = proc_status(m, pid)
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", st, re.M).groups()
        h.check(len(set(uids)) == 1 and 61184 <= int(uids[0]) <= 65519,
                f"the relay runs as a dynamic uid {uids[0]} (61184..65519), real = effective "
                f"= saved = fs")
        want = 1 << CAP_NET_BIND_SERVICE
        caps = {k: cap_set(st, k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        # Ambient capabilities are kept in the inheritable set too (capabilities(7)).
        h.check(caps == {"CapInh": want, "CapPrm": want, "CapEff": want, "CapBnd": want,
                         "CapAmb": want},
                f"the relay holds CAP_NET_BIND_SERVICE alone: "
                f"{({k: hex(v) for k, v in caps.items()})}")
        h.check(re.search(r"^NoNewPrivs:\s+1$", st, re.M) and
                re.search(r"^Seccomp:\s+2$", st, re.M),
                "the relay: NoNewPrivs 1, Seccomp 2 (filter)")
        # LimitNOFILE=1048576 needs CAP_SYS_RESOURCE above the manager's hard limit; systemd
        # clamps to that limit where the machine lacks the capability (this VM: 20000).
        with open("/proc/self/status") as f:
            has_resource = bool(cap_set(f.read(), "CapBnd") & (1 << CAP_SYS_RESOURCE))
        hard = nofile_limit(m, 1)[1]
        expect_nofile = 1048576 if has_resource else min(1048576, hard)
        got = nofile_limit(m, pid)
        h.check(got == (expect_nofile, expect_nofile),
                f"LimitNOFILE applied to the relay: {got} (1048576"
                f"{'' if has_resource else f', clamped to the hard limit {hard}: '}"
                f"{'' if has_resource else 'no CAP_SYS_RESOURCE here'})")
        budget = log_lines(env, "apprelay.service", "user_connection_budget")
        h.check(budget and f"fd_limit={expect_nofile}" in budget[-1],
                f"the relay derives its connection budget from it: "
                f"{budget[-1] if budget else None}")
        _, out, _ = m.run(["stat", "-c", "%N %U", "/var/lib/apprelay"])
        h.check("-> 'private/apprelay'" in out, f"StateDirectory under /var/lib/private: "
                                                f"{out.strip()}")
        _, out, _ = m.run(["stat", "-L", "-c", "%a %u", "/var/lib/apprelay",
                           "/run/apprelay/admin.sock", "/run/apprelay"])
        modes = out.split("\n")
        h.check(modes[0] == f"700 {uids[0]}" and modes[1].startswith("600 ") and
                modes[2] == f"755 {uids[0]}",
                f"state 0700, admin socket 0600, runtime dir 0755, owned by the dynamic uid "
                f"{modes[:3]}")

        # -- provisioning, as README "Install" -----------------------------------------------------
        pki = INNER + "/pki"  # env.pki.dir, seen inside
        ctl(m, "apps", "create", "web", "--backend", f"127.0.0.1:{BACKEND_PORT}", "--hostname",
            SNI, "--group", "Default", "--cert", f"{pki}/app-web.crt", "--key",
            f"{pki}/app-web.key")
        state = f"/var/lib/apprelay-connector/{SITE}"

        def register():
            token = ctl(m, "tokens", "create", "--group", "Default").strip()
            return m.run([h.CONNECTOR_BIN, "register", "--relay", "127.0.0.1:8445", "--token",
                          token, "--state-dir", state, "--name", SITE])
        # README "Install": into /var/lib/apprelay-connector/NAME on a host where no connector
        # ran yet (register makes the missing parents; it used to fail here).
        rc, out, err = register()
        h.check(rc == 0, f"apprelay-connector register: exit {rc} {err.strip()}")
        h.check("registered connector" in out, f"apprelay-connector register: {out.strip()}")
        t0 = time.monotonic()
        m.systemctl("start", f"apprelay-connector@{SITE}.service")
        _, out, _ = m.run(["stat", "-c", "%N", state])
        h.check(f"-> '../private/apprelay-connector/{SITE}'" in out,
                f"systemd moved the registered state dir under /var/lib/private: {out.strip()}")

        def tunnel_up():
            s = ctl(m, "status", json_out=True)
            return s if s.get("tunnels_up", 0) >= 1 else None
        h.wait_until(tunnel_up, 30, "the connector's tunnel (apprelayctl status)")
        timings["connector tunnel"] = time.monotonic() - t0
        h.check(True, f"apprelay-connector@{SITE} brought its tunnel up "
                      f"({timings['connector tunnel']:.2f}s)")
        cp = m.show(f"apprelay-connector@{SITE}.service", "MainPID", "ActiveState")
        cpid = int(cp["MainPID"])
        st = proc_status(m, cpid)
        cuid = re.search(r"^Uid:\s+(\d+)", st, re.M).group(1)
        h.check(cuid != uids[0] and 61184 <= int(cuid) <= 65519,
                f"the connector runs as its own dynamic uid {cuid}")
        ccaps = {k: cap_set(st, k) for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")}
        h.check(set(ccaps.values()) == {0}, f"the connector holds no capability {ccaps}")
        _, out, _ = m.run(["stat", "-L", "-c", "%a %u", state])
        h.check(out.strip() == f"700 {cuid}", f"its state dir: 0700, its uid ({out.strip()})")

        # -- a user's TLS connection through the relay and the connector ---------------------------
        r = echo(m, env, 4 * h.MiB, seed=1)
        timings["echo 4 MiB"] = r["secs"]
        h.check(True, f"a user's TLS connection to port 443 echoes 4 MiB byte-exact through "
                      f"the tunnel ({r['secs']:.2f}s)")

        # -- reload --------------------------------------------------------------------------------
        write(cfg_host, relay_toml(stage, sysconfdir, "idle_timeout_ms = 600000\n"))
        t0 = time.monotonic()
        m.systemctl("reload", "apprelay.service", timeout=60)
        timings["reload"] = time.monotonic() - t0
        h.wait_until(lambda: log_lines(env, "apprelay.service", "settings_reloaded"), 10,
                     "settings_reloaded in the relay's log")
        line = log_lines(env, "apprelay.service", "settings_reloaded")[-1]
        h.check("limits.idle_timeout_ms=3600000->600000" in line,
                f"systemctl reload: --check-config, SIGHUP, the change applied "
                f"({timings['reload']:.2f}s): {line}")
        p = m.show("apprelay.service", "StatusText", "MainPID", "ActiveState")
        h.check(p["MainPID"] == str(pid) and p["ActiveState"] == "active" and
                "reloaded" in p["StatusText"], f"same pid, StatusText {p['StatusText']!r}")
        write(cfg_host, relay_toml(stage, sysconfdir, "idle_timeout_ms = 5\n"))
        rc, out, err = m.systemctl("reload", "apprelay.service", timeout=60, expect_rc=None)
        h.check(rc != 0, f"systemctl reload with a broken file fails (exit {rc})")
        text = open(os.path.join(env.dir, "apprelay.service.log"), errors="replace").read()
        h.check("limits.idle_timeout_ms: expected an integer in 100..86400000" in text,
                "ExecReload's --check-config named the bad key in the unit's output")
        h.check(not log_lines(env, "apprelay.service", "settings_reload_failed"),
                "the relay never got the SIGHUP (the check stopped the reload first)")
        p = m.show("apprelay.service", "StatusText", "MainPID", "ActiveState", "SubState")
        h.check(p["MainPID"] == str(pid) and p["ActiveState"] == "active" and
                p["SubState"] == "running", f"the relay keeps running (pid {p['MainPID']}, "
                                            f"{p['ActiveState']}/{p['SubState']})")
        echo(m, env, 64 * 1024, seed=2)
        h.check(True, "an echo still works after the failed reload")
        write(cfg_host, relay_toml(stage, sysconfdir, "idle_timeout_ms = 600000\n"))

        # -- the update timer ----------------------------------------------------------------------
        timer = f"apprelay-connector-update@{SITE}.timer"
        m.systemctl("enable", "--now", timer)
        _, out, _ = m.systemctl("list-timers", "--all", "--no-legend", "--full")
        row = next((ln for ln in out.splitlines() if timer in ln), None)
        h.check(row is not None and f"apprelay-connector-update@{SITE}.service" in row,
                f"list-timers shows the enabled timer: {row!r}")
        p = m.show(timer, "ActiveState", "UnitFileState", "NextElapseUSecRealtime")
        h.check(p["ActiveState"] == "active" and p["UnitFileState"] == "enabled" and
                p["NextElapseUSecRealtime"] not in ("", "0", "n/a"),
                f"the timer is enabled and waiting for its next run ({p})")
        m.systemctl("disable", "--now", timer)

        # -- stop: the connector drains a stream in flight, then the relay -------------------------
        held = m.popen([sys.executable, "-c", HELD_PY, os.path.dirname(__file__), "443", SNI,
                        env.pki.path("users-ca.crt")])
        try:
            line = read_line(held, 30)
            h.check(line == "open", f"a user stream is open through the connector ({line!r})")
            t0 = time.monotonic()
            m.systemctl("stop", "--no-block", f"apprelay-connector@{SITE}.service")
            h.wait_until(lambda: any("connector stopping" in ln for ln in
                                     log_lines(env, "apprelay.service", "tunnel_draining")), 15,
                         "the relay to log the connector's GOAWAY")
            p = m.show(f"apprelay-connector@{SITE}.service", "ActiveState")
            h.check(p["ActiveState"] == "deactivating",
                    f"systemctl stop: the connector sent GOAWAY (the relay logs tunnel_draining: "
                    f"connector stopping) and is still {p['ActiveState']} while a stream is open")
            held.stdin.write("go\n")
            held.stdin.flush()
            line = read_line(held, 60)
            h.check(line == "echoed", f"the open stream still carries traffic during the drain: "
                                      f"1 MiB more echoed byte-exact ({line!r})")
            line = read_line(held, 30)
            h.check(line == "closed", f"the user's close ends the stream cleanly during the "
                                      f"drain (close_notify back: {line!r})")
            h.wait_until(lambda: m.show(f"apprelay-connector@{SITE}.service",
                                        "ActiveState")["ActiveState"] == "inactive", 45,
                         "the connector to stop")
            timings["drain connector"] = time.monotonic() - t0
        finally:
            if held.poll() is None:
                held.kill()
            held.wait(timeout=10)
        ends = log_lines(env, f"apprelay-connector@{SITE}.service", "unit_exit")
        h.check(ends and ends[-1] == "event=unit_exit result=success code=exited status=0",
                f"the connector exited 0 after the drain ({timings['drain connector']:.2f}s): "
                f"{ends[-1] if ends else None}")
        h.check(any("streams=1" in ln for ln in
                    log_lines(env, f"apprelay-connector@{SITE}.service", "draining")) and
                any("streams_cut=0" in ln and "tunnels_unflushed=0" in ln for ln in
                    log_lines(env, f"apprelay-connector@{SITE}.service", "stopped")),
                "the connector's log: draining streams=1, then stopped streams_cut=0 "
                "tunnels_unflushed=0")
        t0 = time.monotonic()
        m.systemctl("stop", "apprelay.service", timeout=90)
        timings["stop relay"] = time.monotonic() - t0
        ends = log_lines(env, "apprelay.service", "unit_exit")
        h.check(ends and ends[-1] == "event=unit_exit result=success code=exited status=0",
                f"systemctl stop apprelay: the relay exited 0 ({timings['stop relay']:.2f}s): "
                f"{ends[-1] if ends else None}")
        h.check(log_lines(env, "apprelay.service", "stopping"),
                "the relay drained on SIGTERM (stopping)")

        # -- negative controls ---------------------------------------------------------------------
        rc, _, _ = m.systemctl("start", "apprelay-missing.service", expect_rc=None)
        p = m.show("apprelay-missing.service", "ActiveState", "Result", "ExecMainStatus")
        _, st_out, _ = m.systemctl("status", "apprelay-missing.service", expect_rc=None)
        ends = log_lines(env, "apprelay-missing.service", "unit_exit")
        # Restart=on-failure: the unit waits to try again (activating/auto-restart) or failed.
        h.check(rc != 0 and p["Result"] == "exit-code" and "203/EXEC" in st_out and ends and
                "result=exit-code" in ends[-1],
                f"negative control: ExecStart/ExecStartPre missing -> start fails, 203/EXEC "
                f"(exit {rc}, {p}, {ends[-1] if ends else None})")
        m.systemctl("stop", "apprelay-missing.service")
        t0 = time.monotonic()
        rc, _, _ = m.systemctl("start", "apprelay-noready.service", timeout=60, expect_rc=None)
        secs = time.monotonic() - t0
        p = m.show("apprelay-noready.service", "ActiveState", "Result")
        h.check(rc != 0 and p["Result"] == "timeout" and secs >= 4.5,
                f"negative control: the relay without NOTIFY_SOCKET (no READY=1) -> start "
                f"fails on its 5 s timeout (exit {rc}, {secs:.2f}s, {p})")
        m.systemctl("reset-failed", expect_rc=None)

        check_only_our_units(m, own, "at the end")
        check_only_our_processes(m, "at the end")
        timings["poweroff"] = m.poweroff()
    finally:
        m.close()

    with open("/proc/self/mountinfo") as f:
        after_mounts = sorted(ln.split()[4] for ln in f)
    # Other tests may add or remove mounts meanwhile (ip netns); ours must not appear.
    ours = {"/run", "/run/t", "/run/apprelay-test/console", "/tmp", "/var/tmp", "/var/log",
            "/var/lib", "/var/cache", "/etc/systemd", "/dev/console", "/dev/pts", "/proc/sys"}
    added = sorted(set(after_mounts) - set(host_mounts))
    h.check(not ours & set(added), f"no mount of the namespace reached the host's mount table "
                                   f"(added meanwhile: {added})")
    h.check(os.path.exists(sentinel), f"the host's /tmp was not touched ({sentinel} survives)")
    h.check(not os.path.exists(m.cgroup), f"the namespace's cgroup is removed ({m.cgroup})")
    print("RESULT systemd: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


def main():
    why = preflight()
    if why:
        print(f"SKIP: {why}")
        return SKIP

    def on_term(signum, frame):
        raise SystemExit(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    return h.run_test("systemd", systemd_body)


if __name__ == "__main__":
    sys.exit(main())
