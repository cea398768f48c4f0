"""Install layout, Debian packages and the systemd contract (issue 15).

package:  scripts/package into a temp dir; each .deb checked with dpkg-deb (files, Depends that
          the host satisfies and that name every library the programs need, conffiles, amd64;
          apprelayctl(1) gzip -9n compressed as Debian policy wants, the page of the packaged
          apprelayctl, readable with zcat and man -l);
          both installed into a scratch root with dpkg --root; the installed units (the relay's,
          the connector's and its one-shot update unit, which runs `update --supervised`) pass
          `systemd-analyze verify`; the installed relay checks the installed relay.toml (ok) and a
          broken file (exit 1, the key named); remove keeps only the conffile, purge removes it.
notify:   the built relay under a NOTIFY_SOCKET the test binds (what systemd does for Type=notify):
          READY=1 once the ready file exists; SIGHUP with a changed [limits] key -> RELOADING=1,
          READY=1, settings_reloaded, and the new idle limit cuts a new idle stream; SIGHUP with a
          changed listener -> settings_need_restart; a broken file + SIGHUP -> the error is
          logged, the relay keeps its settings and an echo still works; SIGTERM -> STOPPING=1.

Why dpkg --root and not dpkg-deb -x: dpkg 1.21 installs into a root that holds only an empty
database (var/lib/dpkg/{status,available,info,updates}) when its maintainer scripts run
outside the root (--force-script-chrootless, which sets DPKG_ROOT for them); it then tracks
conffiles and does remove and purge for real, which dpkg-deb -x cannot show. The scratch root has
no libc, so --force-depends is needed there; the Depends are checked against the host instead.

The package build dir: $APPRELAY_PKG_BUILD_DIR, else $APPRELAY_BUILD_DIR when it is configured
with --prefix=/usr, else scripts/package's own build-pkg (set up and built on first use).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import harness as h

PACKAGE = os.path.join(h.REPO, "scripts", "package")
SNI = "web.contoso.test"


def run(argv, timeout=120, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       **kw)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def must(argv, timeout=120, what=None, **kw):
    rc, out, err = run(argv, timeout=timeout, **kw)
    if rc != 0:
        raise h.TestFailure(f"{what or ' '.join(argv)}: exit {rc}\n{out}\n{err}")
    return out


def build_option(build, name):
    rc, out, _ = run(["meson", "introspect", build, "--buildoptions"], timeout=60)
    if rc != 0:
        return None
    return {o["name"]: o["value"] for o in json.loads(out)}.get(name)


def package_build_dir():
    explicit = os.environ.get("APPRELAY_PKG_BUILD_DIR")
    if explicit:
        return explicit
    if build_option(h.BUILD, "prefix") == "/usr":
        return h.BUILD
    return None  # scripts/package's default


def deb_field(deb, name):
    return must(["dpkg-deb", "--field", deb, name]).strip()


def parse_depends(text):
    """'a (>= 1), b' -> [(a, '>=', '1'), (b, None, None)]; alternatives are not used."""
    deps = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([a-z0-9][a-z0-9+.-]*)(?::\w+)?\s*(?:\((<<|<=|=|>=|>>)\s*([^)]+)\))?\s*",
                         part)
        if not m or "|" in part:
            raise h.TestFailure(f"unexpected Depends entry {part!r}")
        deps.append((m.group(1), m.group(2), m.group(3) and m.group(3).strip()))
    return deps


def host_version(pkg):
    rc, out, _ = run(["dpkg-query", "-W", "-f=${Status}|${Version}", pkg])
    if rc != 0 or "|" not in out:
        return None
    status, version = out.split("|", 1)
    return version if status.endswith(" installed") else None


def packages_of_needed(binary):
    """The Debian packages holding the shared libraries `binary` needs (NEEDED in its dynamic
    section, resolved by ldd), found with dpkg -S independently of dpkg-shlibdeps."""
    needed = re.findall(r"^\s*NEEDED\s+(\S+)", must(["objdump", "-p", binary]), re.M)
    ldd = must(["ldd", binary])
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    # The dynamic loader is listed by its path alone: "/lib64/ld-linux-x86-64.so.2 (0x...)".
    resolved.update({os.path.basename(p): p for p in re.findall(r"^\s*(/\S+) \(0x", ldd, re.M)})
    pkgs = {}
    for soname in needed:
        path = resolved.get(soname)
        h.check(path is not None and os.path.exists(path),
                f"{os.path.basename(binary)} NEEDED {soname} resolves ({path})")
        real = os.path.realpath(path)
        owner = None
        for cand in (path, real, path.replace("/usr/lib/", "/lib/", 1),
                     real.replace("/usr/lib/", "/lib/", 1)):
            rc, out, _ = run(["dpkg", "-S", cand])
            if rc == 0:
                owner = out.split(":", 1)[0].strip()
                break
        h.check(owner is not None, f"dpkg -S finds the package of {soname}")
        pkgs[soname] = owner
    return pkgs


def installed_files(root):
    files = []
    for d, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), root)
            if not rel.startswith("var/lib/dpkg/") and rel != "dpkg.log":
                files.append(rel)
    return sorted(files)


def dpkg_root(root, *args, timeout=120):
    return run(["dpkg", f"--root={root}", "--force-not-root", "--force-script-chrootless",
                f"--log={root}/dpkg.log", *args], timeout=timeout)


def status_of(root, pkg):
    rc, out, _ = run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Status}", pkg])
    return out.strip() if rc == 0 else "not-installed"


def verify_units(root, units):
    """systemd-analyze verify with --root: the root needs the host's targets (sysinit.target...)
    and the commands the units name (ExecStart in usr/bin, /bin/kill), so a copy of the installed
    tree plus those is verified; the scratch root itself stays as dpkg left it."""
    vroot = tempfile.mkdtemp(prefix="apprelay-verify-")
    try:
        unitdir = os.path.join(vroot, "usr/lib/systemd/system")
        host_units = next(d for d in ("/usr/lib/systemd/system", "/lib/systemd/system")
                          if os.path.exists(os.path.join(d, "sysinit.target")))
        shutil.copytree(host_units, unitdir, symlinks=True)
        shutil.copytree(os.path.join(root, "usr/bin"), os.path.join(vroot, "usr/bin"))
        shutil.copy2(shutil.which("kill") or "/usr/bin/kill", os.path.join(vroot, "usr/bin/kill"))
        os.symlink("usr/bin", os.path.join(vroot, "bin"))
        shutil.copytree(os.path.join(root, "etc"), os.path.join(vroot, "etc"))
        for u in ("apprelay.service", "apprelay-connector@.service",
                  "apprelay-connector-update@.service", "apprelay-connector-update@.timer"):
            shutil.copy2(os.path.join(root, "usr/lib/systemd/system", u), unitdir)
        for unit in units:
            rc, out, err = run(["systemd-analyze", "verify", f"--root={vroot}", unit], timeout=60)
            h.check(rc == 0 and not (out + err).strip(),
                    f"systemd-analyze verify {unit}: exit {rc}, no warnings {(out + err).strip()!r}")
        # The negative control: the same verify notices a missing ExecStart binary.
        os.unlink(os.path.join(vroot, "usr/bin/apprelay"))
        rc, out, err = run(["systemd-analyze", "verify", f"--root={vroot}", "apprelay.service"],
                           timeout=60)
        h.check(rc != 0 and "/usr/bin/apprelay" in err,
                "verify fails when the unit's ExecStart is missing (the check can fail)")
    finally:
        shutil.rmtree(vroot, ignore_errors=True)


def unit_settings(text):
    kv = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            kv.setdefault(k.strip(), []).append(v.strip())
    return kv


def check_hardening(text, name, caps):
    kv = unit_settings(text)
    want = {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
            "NoNewPrivileges": "yes", "SystemCallArchitectures": "native", "DynamicUser": "yes",
            "LimitNOFILE": "1048576", "CapabilityBoundingSet": caps, "AmbientCapabilities": caps}
    for k, v in want.items():
        h.check(kv.get(k) == [v], f"{name}: {k}={v}")
    h.check("StateDirectory" in kv and "RestrictAddressFamilies" in kv,
            f"{name}: StateDirectory and RestrictAddressFamilies set")


def check_man_page(extract):
    """apprelayctl(1) in the extracted apprelay package: gzip -9n (Debian policy 12.3, lintian
    uncompressed-manual-page: no name or time stamp in the header, maximum compression), the
    page the packaged apprelayctl prints, readable with zcat and man -l."""
    page = os.path.join(extract, "usr/share/man/man1/apprelayctl.1.gz")
    with open(page, "rb") as f:
        head = f.read(10)
    # RFC 1952 2.3: ID1 ID2 CM FLG MTIME(4) XFL OS. FLG bit 3 = FNAME; XFL 2 = slowest, best.
    h.check(head[:3] == b"\x1f\x8b\x08", f"apprelayctl.1.gz is gzip (deflate): {head[:3]!r}")
    h.check(head[3] & 0x08 == 0 and head[4:8] == b"\0\0\0\0",
            f"gzip -n: no file name, no time stamp (FLG {head[3]:#x}, MTIME {head[4:8].hex()})")
    h.check(head[8] == 2, f"gzip -9: XFL {head[8]} (2 = maximum compression)")
    text = must(["zcat", page])
    printed = must([os.path.join(extract, "usr/bin/apprelayctl"), "man"])
    h.check(text == printed and ".TH APPRELAYCTL 1 " in text,
            "zcat gives the page the packaged apprelayctl prints (apprelayctl man)")
    if shutil.which("man") is None:
        h.log("man is not installed: man -l not tried (zcat checked the page)")
        return
    rc, out, err = run(["man", "-l", page], env=dict(os.environ, MANPAGER="cat", PAGER="cat",
                                                     MANWIDTH="100", LC_ALL="C"))
    h.check(rc == 0 and "apprelayctl - manage an apprelay relay" in out and
            "groups delete" in out and "EXIT STATUS" in out,
            f"man -l renders it: exit {rc}, {len(out)} bytes {err.strip()[-200:]!r}")


def package_body(env):
    out_dir = os.path.join(env.dir, "pkg")
    argv = [PACKAGE, "--out", out_dir]
    build = package_build_dir()
    if build:
        argv += ["--build-dir", build]
    h.log(f"running {' '.join(argv)}")
    rc, out, err = run(argv, timeout=1500)
    h.check(rc == 0, f"scripts/package exit 0 ({err.strip()[-600:]})")
    version = must(["meson", "introspect", "--projectinfo", os.path.join(h.REPO, "meson.build")])
    version = json.loads(version)["version"]
    relay_deb = os.path.join(out_dir, f"apprelay_{version}_amd64.deb")
    conn_deb = os.path.join(out_dir, f"apprelay-connector_{version}_amd64.deb")
    h.check(sorted(os.listdir(out_dir)) == sorted(map(os.path.basename, [relay_deb, conn_deb])),
            f"--out holds exactly the two packages: {sorted(os.listdir(out_dir))}")

    # -- the packages as dpkg-deb sees them ----------------------------------------------------
    expect = {
        relay_deb: ("apprelay", ["etc/apprelay/relay.toml", "usr/bin/apprelay",
                                 "usr/bin/apprelayctl", "usr/lib/systemd/system/apprelay.service",
                                 "usr/share/bash-completion/completions/apprelayctl",
                                 "usr/share/man/man1/apprelayctl.1.gz"],
                    ["usr/bin/apprelay", "usr/bin/apprelayctl"], "/etc/apprelay/relay.toml"),
        conn_deb: ("apprelay-connector",
                   ["usr/bin/apprelay-connector",
                    "usr/lib/systemd/system/apprelay-connector@.service",
                    "usr/lib/systemd/system/apprelay-connector-update@.service",
                    "usr/lib/systemd/system/apprelay-connector-update@.timer"],
                   ["usr/bin/apprelay-connector"], None),
    }
    for deb, (name, files, bins, conffile) in expect.items():
        info = must(["dpkg-deb", "--info", deb])
        h.check(deb_field(deb, "Package") == name and deb_field(deb, "Version") == version,
                f"{name}: Package/Version {version}")
        h.check(deb_field(deb, "Architecture") == "amd64", f"{name}: Architecture amd64")
        listing = must(["dpkg-deb", "--contents", deb])
        got = sorted(ln.split()[-1][2:] for ln in listing.splitlines()
                     if not ln.split()[-1].endswith("/"))
        h.check(got == sorted(files), f"{name}: files {got}")
        h.check(all(ln.split()[1] == "root/root" for ln in listing.splitlines()),
                f"{name}: every entry owned by root/root")
        for ln in listing.splitlines():
            path = ln.split()[-1][2:]
            if path in bins:
                h.check(ln.startswith("-rwxr-xr-x"), f"{name}: {path} mode 0755")
        conff = run(["dpkg-deb", "--info", deb, "conffiles"])[1].split()
        h.check(conff == ([conffile] if conffile else []), f"{name}: conffiles {conff}")
        for script in ("postinst", "prerm", "postrm"):
            h.check(re.search(rf"\b{script}\b", info) is not None, f"{name}: has {script}")
        depends = parse_depends(deb_field(deb, "Depends"))
        dep_names = {d[0] for d in depends}
        for dep, op, ver in depends:
            inst = host_version(dep)
            h.check(inst is not None, f"{name}: Depends {dep} is installed on this host ({inst})")
            if op:
                ok = run(["dpkg", "--compare-versions", inst, {">=": "ge", ">>": "gt", "=": "eq",
                                                             "<=": "le", "<<": "lt"}[op], ver])[0]
                h.check(ok == 0, f"{name}: host {dep} {inst} satisfies {op} {ver}")
        # Independent of dpkg-shlibdeps: every library the built program needs has its package
        # in Depends.
        extract = os.path.join(env.dir, f"x-{name}")
        must(["dpkg-deb", "-x", deb, extract])
        for b in bins:
            for soname, owner in packages_of_needed(os.path.join(extract, b)).items():
                h.check(owner in dep_names, f"{name}: {soname} -> {owner} is in Depends")
        if name == "apprelay":
            check_man_page(extract)
        must(["dpkg-deb", "-e", deb, os.path.join(extract, "DEBIAN")])
        for script in ("postinst", "prerm", "postrm"):
            text = open(os.path.join(extract, "DEBIAN", script)).read()
            h.check("systemctl" not in text or
                    '[ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]' in text,
                    f"{name}: {script} calls systemctl only under a running systemd, not for "
                    f"another root")
    relay_deps = {d[0] for d in parse_depends(deb_field(relay_deb, "Depends"))}
    conn_deps = {d[0] for d in parse_depends(deb_field(conn_deb, "Depends"))}
    h.check({"libssl3", "liburing2", "libsystemd0", "libc6"} <= relay_deps,
            "apprelay Depends on libssl3, liburing2, libsystemd0, libc6")
    h.check({"libssl3", "liburing2", "libc6"} <= conn_deps and "libsystemd0" not in conn_deps,
            "apprelay-connector Depends on libssl3, liburing2, libc6 (not libsystemd0)")

    # -- install into a scratch root -------------------------------------------------------------
    root = os.path.join(env.dir, "root")
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
        os.makedirs(os.path.join(root, d))
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        open(os.path.join(root, f), "w").close()
    rc, out, err = dpkg_root(root, "--force-depends", "--install", relay_deb, conn_deb)
    h.check(rc == 0, f"dpkg --root --install both: exit {rc} {err[-300:] if rc else ''}")
    for pkg in ("apprelay", "apprelay-connector"):
        h.check(status_of(root, pkg) == "install ok installed", f"{pkg}: install ok installed")
    all_files = sorted(f for _, fs, _, _ in expect.values() for f in fs)
    h.check(installed_files(root) == all_files, f"installed files: {installed_files(root)}")
    for b in ("usr/bin/apprelay", "usr/bin/apprelayctl", "usr/bin/apprelay-connector"):
        h.check(os.access(os.path.join(root, b), os.X_OK), f"{b} is executable")
    relay_unit = open(os.path.join(root, "usr/lib/systemd/system/apprelay.service")).read()
    conn_unit = open(os.path.join(root, "usr/lib/systemd/system/apprelay-connector@.service")).read()
    rk = unit_settings(relay_unit)
    h.check(rk.get("Type") == ["notify"], "apprelay.service is Type=notify")
    h.check(rk.get("ExecStart") == ["/usr/bin/apprelay --config /etc/apprelay/relay.toml"],
            f"apprelay.service ExecStart {rk.get('ExecStart')}")
    h.check("/bin/kill -HUP $MAINPID" in rk.get("ExecReload", []), "ExecReload sends SIGHUP")
    h.check(rk.get("RuntimeDirectory") == ["apprelay"] and rk.get("StateDirectory") == ["apprelay"],
            "relay: StateDirectory and RuntimeDirectory apprelay")
    check_hardening(relay_unit, "apprelay.service", "CAP_NET_BIND_SERVICE")
    ck = unit_settings(conn_unit)
    h.check(ck.get("StateDirectory") == ["apprelay-connector/%i"], "connector: one state dir per %i")
    h.check(any(v.startswith("/usr/bin/apprelay-connector run --state-dir "
                             "/var/lib/apprelay-connector/%i") for v in ck.get("ExecStart", [])),
            f"connector ExecStart {ck.get('ExecStart')}")
    check_hardening(conn_unit, "apprelay-connector@.service", "")
    update_unit = open(os.path.join(
        root, "usr/lib/systemd/system/apprelay-connector-update@.service")).read()
    uk = unit_settings(update_unit)
    h.check(uk.get("Type") == ["oneshot"], "apprelay-connector-update@.service is Type=oneshot")
    # ExecStart= with its continuation lines (a trailing backslash), whitespace folded.
    exec_start = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", update_unit, re.M).group(1)
    exec_start = " ".join(exec_start.replace("\\\n", " ").split())
    h.check(exec_start.startswith("/usr/bin/apprelay-connector update --supervised "
                                  "--state-dir /var/lib/apprelay-connector/%i ") and
            "--pubkey /etc/apprelay/update-pub.pem" in exec_start and
            " --from-relay " in exec_start and
            '"systemctl reset-failed apprelay-connector@%i.service; systemctl restart '
            'apprelay-connector@%i.service"' in exec_start,
            f"the update unit runs update --supervised with --restart-cmd systemctl restart "
            f"apprelay-connector@%i ({exec_start})")
    timer = unit_settings(open(os.path.join(
        root, "usr/lib/systemd/system/apprelay-connector-update@.timer")).read())
    h.check(timer.get("OnCalendar") == ["daily"] and timer.get("Persistent") == ["yes"],
            f"the update timer runs daily, catching up missed runs ({timer})")
    verify_units(root, ["apprelay.service", "apprelay-connector@site-a.service",
                        "apprelay-connector-update@site-a.service",
                        "apprelay-connector-update@site-a.timer"])

    # -- the installed relay checks the installed settings file ----------------------------------
    relay = os.path.join(root, "usr/bin/apprelay")
    conf = os.path.join(root, "etc/apprelay/relay.toml")
    rc, out, err = run([relay, "--check-config", conf], timeout=30)
    h.check(rc == 0 and out.strip() == f"{conf}: ok", f"--check-config on the sample: {rc} {out}{err}")
    broken = os.path.join(env.dir, "broken.toml")
    with open(conf) as f:
        text = f.read()
    with open(broken, "w") as f:
        f.write(text.replace("[limits]\n", "[limits]\nidle_timeout_ms = 5\n"))
    rc, out, err = run([relay, "--check-config", broken], timeout=30)
    h.check(rc == 1 and (out + err).strip() ==
            f"{broken}: limits.idle_timeout_ms: expected an integer in 100..86400000",
            f"--check-config on a bad value: exit {rc}, {(out + err).strip()!r}")
    with open(broken, "w") as f:
        f.write(text.replace("[relay]\n", "[relay]\nuser_listn = \"0.0.0.0:443\"\n"))
    rc, out, err = run([relay, "--check-config", broken], timeout=30)
    h.check(rc == 1 and "relay.user_listn: unknown key" in err, f"a typo: exit {rc}, {err.strip()!r}")
    rc, out, err = run([relay, "--check-config", os.path.join(env.dir, "missing.toml")], timeout=30)
    h.check(rc == 2 and "cannot read" in err, f"an unreadable file: exit {rc}, {err.strip()!r}")

    # -- remove, then purge ----------------------------------------------------------------------
    rc, out, err = dpkg_root(root, "--remove", "apprelay", "apprelay-connector")
    h.check(rc == 0, f"dpkg --remove: exit {rc} {err[-300:] if rc else ''}")
    h.check(installed_files(root) == ["etc/apprelay/relay.toml"],
            f"after remove only the conffile is left: {installed_files(root)}")
    h.check(status_of(root, "apprelay") == "deinstall ok config-files",
            f"apprelay: {status_of(root, 'apprelay')}")
    rc, out, err = dpkg_root(root, "--purge", "apprelay", "apprelay-connector")
    h.check(rc == 0, f"dpkg --purge: exit {rc} {err[-300:] if rc else ''}")
    h.check(installed_files(root) == [], f"after purge nothing is left: {installed_files(root)}")
    h.check(not os.path.exists(os.path.join(root, "etc/apprelay")), "/etc/apprelay is gone")
    leftovers = [d for d, _, _ in os.walk(root) if not d.startswith(os.path.join(root, "var"))
                 and d != root]
    h.check(leftovers == [], f"no directories left outside var/: {leftovers}")
    print(f"RESULT package: apprelay and apprelay-connector {version} build, verify, install, "
          "check their config, remove and purge cleanly")


# ---------------------------------------------------------------------------------------------
# Type=notify
# ---------------------------------------------------------------------------------------------

class NotifySocket:
    """The service manager's side: a unix datagram socket; each message is recorded with
    whether the relay's ready file existed when it arrived."""

    def __init__(self, path, ready_path):
        self.path = path
        self.ready_path = ready_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []  # (fields dict, ready file existed)
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            exists = os.path.exists(self.ready_path)
            fields = dict(ln.split("=", 1) for ln in data.decode().splitlines() if "=" in ln)
            with self.lock:
                self.messages.append((fields, exists))

    def wait_for(self, key, start, timeout=15.0):
        """Index of the first message at or after `start` carrying `key`."""
        def found():
            with self.lock:
                for i in range(start, len(self.messages)):
                    if key in self.messages[i][0]:
                        return i + 1
            return None
        return h.wait_until(found, timeout, f"{key} on NOTIFY_SOCKET") - 1

    def count(self):
        with self.lock:
            return len(self.messages)

    def close(self):
        self.done = True
        self.thread.join(timeout=2)
        self.sock.close()


def echo(env, n=16 * 1024, seed=1):
    c = h.UserClient(env.user_port, SNI, env.pki.path("users-ca.crt"))
    h.echo_roundtrip(c, h.pattern(n, seed=seed), half_close=True, timeout=20)
    c.close()


def log_lines(env, event):
    return [ln for ln in env.relay.log_text().splitlines() if f"event={event}" in ln]


def reload(env, ns, what):
    """SIGHUP; returns the (RELOADING, READY) messages in order."""
    start = ns.count()
    os.kill(env.relay.pid, signal.SIGHUP)
    i = ns.wait_for("RELOADING", start)
    j = ns.wait_for("READY", i + 1)
    h.check(ns.messages[i][0].get("RELOADING") == "1" and "MONOTONIC_USEC" in ns.messages[i][0],
            f"{what}: RELOADING=1 with MONOTONIC_USEC")
    h.check(ns.messages[j][0].get("READY") == "1", f"{what}: then READY=1 "
                                                  f"(STATUS={ns.messages[j][0].get('STATUS')})")
    return ns.messages[i][0], ns.messages[j][0]


def notify_body(env):
    _, port = env.start_backend("echo")
    topo = h.make_world(env.pki, [("web", SNI, f"127.0.0.1:{port}")], connectors=("c1",),
                        workers=1, with_fabrikam=False)
    ready = os.path.join(env.dir, "relay.ready")
    ns = NotifySocket(os.path.join(env.dir, "notify.sock"), ready)
    # Only the relay gets NOTIFY_SOCKET (Popen copies the environment at spawn).
    os.environ["NOTIFY_SOCKET"] = ns.path
    try:
        env.start_relay(topo, provision=False)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    i = ns.wait_for("READY", 0)
    fields, existed = ns.messages[i]
    h.check(fields.get("READY") == "1" and existed,
            f"READY=1 arrives after the ready file exists (STATUS={fields.get('STATUS')})")
    h.check(i == 0, f"READY=1 is the first message ({ns.messages[:i + 1]})")
    env.provision(topo)
    env.start_connector("c1")
    env.wait_tunnels(1)
    echo(env, seed=1)
    h.check(env.counter("streams_idle_timeout") == 0, "no idle cut yet")

    # -- a live [limits] key -----------------------------------------------------------------------
    cfg = os.path.join(env.pki.dir, "relay.toml")
    topo.limits["idle_timeout_ms"] = 400
    with open(cfg, "w") as f:
        f.write(topo.to_toml(env.state_dir))
    _, ready_msg = reload(env, ns, "reload of limits.idle_timeout_ms")
    h.wait_until(lambda: log_lines(env, "settings_reloaded"), 10, "settings_reloaded logged")
    line = log_lines(env, "settings_reloaded")[-1]
    h.check("limits.idle_timeout_ms=3600000->400" in line and 'restart_needed=""' in line,
            f"settings_reloaded names the applied change: {line}")
    h.check(not log_lines(env, "settings_need_restart"), "nothing needs a restart")
    c = h.UserClient(env.user_port, SNI, env.pki.path("users-ca.crt"))
    data = h.pattern(1000, seed=2)
    got = c.transfer(data, expect=len(data), timeout=20)
    h.check(got == len(data), "a new stream echoes")
    env.wait_counter("streams_idle_timeout", 1, timeout=10)
    h.check(True, "the new stream, idle, is cut by the reloaded 400 ms limit")
    c.abort()

    # -- a key bound at start ----------------------------------------------------------------------
    topo.limits["idle_timeout_ms"] = 60000
    old_listen = 'user_listen = "127.0.0.1:0"'
    base = topo.to_toml(env.state_dir)
    h.check(old_listen in base, "the test's relay.toml has user_listen 127.0.0.1:0")
    with open(cfg, "w") as f:
        f.write(base.replace(old_listen, 'user_listen = "127.0.0.1:1"'))
    _, ready_msg = reload(env, ns, "reload with a changed listener")
    h.wait_until(lambda: log_lines(env, "settings_need_restart"), 10, "settings_need_restart")
    line = log_lines(env, "settings_need_restart")[-1]
    h.check("relay.user_listen=127.0.0.1:0->127.0.0.1:1" in line,
            f"the listener change is logged as needing a restart: {line}")
    line = log_lines(env, "settings_reloaded")[-1]
    h.check("limits.idle_timeout_ms=400->60000" in line, f"the live key still applies: {line}")
    h.check("need a restart" in ready_msg.get("STATUS", ""),
            f"STATUS says so: {ready_msg.get('STATUS')}")
    echo(env, seed=3)

    # -- a broken file -------------------------------------------------------------------------------
    with open(cfg, "w") as f:
        f.write(base.replace("[limits]\n", "[limits]\nidle_timeout_ms = 5\n", 1)
                .replace("idle_timeout_ms = 60000\n", ""))
    _, ready_msg = reload(env, ns, "reload of a broken file")
    h.wait_until(lambda: log_lines(env, "settings_reload_failed"), 10, "settings_reload_failed")
    line = log_lines(env, "settings_reload_failed")[-1]
    h.check("level=error" in line, f"logged as an error: {line}")
    h.check("limits.idle_timeout_ms: expected an integer in 100..86400000" in line,
            f"the reason names the key and its bounds: {line}")
    h.check("reload failed" in ready_msg.get("STATUS", ""), f"STATUS: {ready_msg.get('STATUS')}")
    h.check(env.relay.alive(), "the relay keeps running")
    echo(env, seed=4)
    h.check(True, "an echo through the relay still works on the previous settings")

    # -- stop --------------------------------------------------------------------------------------
    start = ns.count()
    rc = env.relay.stop()
    h.check(rc == 0, f"relay exits 0 on SIGTERM ({rc})")
    i = ns.wait_for("STOPPING", start, timeout=5)
    h.check(ns.messages[i][0].get("STOPPING") == "1",
            f"STOPPING=1 on SIGTERM (STATUS={ns.messages[i][0].get('STATUS')})")
    ns.close()
    print("RESULT notify: READY=1 after the ready file, RELOADING=1/READY=1 around SIGHUP, live "
          "[limits] applied, restart-only keys logged, a broken file kept out, STOPPING=1")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "package"
    body = {"package": package_body, "notify": notify_body}[mode]
    sys.exit(h.run_test(f"package_{mode}", body))
