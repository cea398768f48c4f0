#!/usr/bin/env python3
"""A stand-in for systemd's Restart=always, for test_update.py's supervised case (there is no
systemd PID 1 in the test): starts COMMAND, starts it again --restart-sec after every exit (clean
or not, as Restart=always does), and on SIGUSR1 restarts it the way `systemctl restart` does:
SIGTERM, wait for the exit (SIGKILL after --stop-timeout-s, TimeoutStopSec), start at once.
SIGTERM or SIGINT: stop the child the same way and exit 0. Bounded: at most --max-starts starts
and --max-seconds in all (then the child is stopped and it exits 1).

  restart_always.py --status FILE [--versions FILE] [--restart-sec S] [--max-starts N]
                    [--max-seconds T] [--stop-timeout-s T] -- COMMAND...

--versions: a JSON object {sha256: version}, read at every start: when the file COMMAND[0] has
  one of those SHA-256s, the child gets APPRELAY_CONNECTOR_VERSION_OVERRIDE=version; otherwise
  the variable is removed (test_update.py's "newer" binaries are the same program with other
  bytes, so the version they report has to come from their bytes).
--status: JSON rewritten after every start and every exit: {"pid": this process, "starts":
  [{"pid", "sha256", "version", "exit"}...]} ("exit": null while it runs, negative for a signal).
Children inherit stdout and stderr; each gets PR_SET_PDEATHSIG=SIGKILL so none outlives this
process if it is killed.
"""
import argparse
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

OVERRIDE = "APPRELAY_CONNECTOR_VERSION_OVERRIDE"
PR_SET_PDEATHSIG = 1
POLL_S = 0.05


def log(msg):
    print(f"restart_always[{os.getpid()}]: {msg}", flush=True)


def die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def file_sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def read_versions(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Supervisor:
    def __init__(self, args):
        self.args = args
        self.starts = []
        self.child = None
        self.want_restart = False
        self.want_stop = False

    def write_status(self):
        tmp = self.args.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "starts": self.starts}, f)
        os.rename(tmp, self.args.status)

    def start(self):
        cmd = self.args.command
        digest = file_sha256(cmd[0])
        env = dict(os.environ)
        env.pop(OVERRIDE, None)
        version = read_versions(self.args.versions).get(digest) if self.args.versions else None
        if version:
            env[OVERRIDE] = version
        entry = {"pid": None, "sha256": digest, "version": version or "", "exit": None}
        self.starts.append(entry)
        try:
            self.child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                          preexec_fn=die_with_parent)
            entry["pid"] = self.child.pid
            log(f"start {len(self.starts)}: pid {self.child.pid} {cmd[0]} "
                f"(sha256 {digest[:12]}, version override {version or '-'})")
        except OSError as e:
            self.child = None
            entry["exit"] = 127
            log(f"start {len(self.starts)}: {cmd[0]} failed: {e}")
        self.write_status()

    def reaped(self):
        self.starts[-1]["exit"] = self.child.returncode
        log(f"pid {self.child.pid} exited {self.child.returncode}")
        self.child = None
        self.write_status()

    def stop_child(self):
        if self.child is None:
            return
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(self.args.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log(f"pid {self.child.pid} still runs {self.args.stop_timeout_s} s after "
                    f"SIGTERM: SIGKILL")
                self.child.kill()
                self.child.wait()
        self.reaped()

    def run(self):
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "want_restart", True))
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda *_: setattr(self, "want_stop", True))
        end = time.monotonic() + self.args.max_seconds
        next_start = time.monotonic()
        while True:
            now = time.monotonic()
            if self.want_stop or now > end:
                log("stopping" if self.want_stop else f"{self.args.max_seconds} s are up: stopping")
                self.stop_child()
                return 0 if self.want_stop else 1
            if self.child is not None and self.child.poll() is not None:
                self.reaped()
                next_start = now + self.args.restart_sec
            if self.want_restart:
                self.want_restart = False
                log("restart requested (SIGUSR1)")
                self.stop_child()
                next_start = now
            if self.child is None and now >= next_start:
                if len(self.starts) >= self.args.max_starts:
                    log(f"{self.args.max_starts} starts: not starting again")
                    next_start = end + 1
                else:
                    self.start()
                    if self.child is None:
                        next_start = now + self.args.restart_sec
            time.sleep(POLL_S)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--status", required=True)
    ap.add_argument("--versions")
    ap.add_argument("--restart-sec", type=float, default=1.0)
    ap.add_argument("--max-starts", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=110.0)
    ap.add_argument("--stop-timeout-s", type=float, default=45.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        ap.error("no COMMAND after --")
    return Supervisor(args).run()


if __name__ == "__main__":
    sys.exit(main())
