#!/usr/bin/env python3
"""tether init beside tini, dumb-init, supervisord and s6-svscan, in one run.

Measures, for each supervisor that can do the job:
  memory    resident memory of the supervisor (and its helper processes) with 10 `sleep` daemons
  stop      time from SIGTERM to the supervisor's exit, with 10 daemons that exit at once
  restart   time from a daemon's crash to its next start, with zero backoff where configurable
  logs      throughput of daemon output through the supervisor, against a plain pipe (`cat`)
  size      size of the binary

tether-init, the init-only binary (crates/init-bin), is measured beside them for memory, stop
and size: with the same 10 daemons, and with one command (`tether-init -- sleep`) as tini and
dumb-init run it.

Run it through bench/init, which installs the peers and builds what this needs.
Usage: init.py TETHER CRASHLOOP TETHER_INIT [--json]
"""

import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

TETHER, CRASHLOOP, TETHER_INIT = sys.argv[1], sys.argv[2], sys.argv[3]
AS_JSON = "--json" in sys.argv
N = 10
STOP_ROUNDS = 7
LOG_ROUNDS = 5
LOG_BYTES = 256 * 1024 * 1024
WORK = tempfile.mkdtemp(prefix="tether-bench-")


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == pid:
            out.append(int(p))
    return out


def descendants(pid):
    found, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            found.append(c)
            todo.append(c)
    return found


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def become_subreaper():
    """Orphans left by a supervisor come to us, so leftovers are seen and reaped."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def leftovers():
    """Kills what a stopped supervisor left running; returns how many there were."""
    reap()
    left = [c for c in children(os.getpid()) if comm(c) == "sleep"]
    for c in left:
        os.kill(c, signal.SIGKILL)
    wait_until("leftovers to go", lambda: (reap(), not any(comm(c) == "sleep" for c in children(os.getpid())))[1])
    return len(left)


def wait_until(what, cond, limit=30.0):
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"bench: gave up waiting for {what}")
        time.sleep(0.01)


# ----- how each supervisor runs N daemons -----------------------------------------------


def tether_bundle(daemons, extra="", init=None):
    path = os.path.join(WORK, f"tether-{time.monotonic_ns()}.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nproject: bench\ninit:\n  daemons:\n")
        for name, argv, more in daemons:
            f.write(f"    {name}:\n      command: {json.dumps(argv)}\n{more}")
        f.write(extra)
    return (init or [TETHER, "init"]) + ["-f", path]


def supervisord_conf(programs, stdout="/dev/null"):
    path = os.path.join(WORK, f"supervisord-{time.monotonic_ns()}.conf")
    with open(path, "w") as f:
        f.write(
            "[supervisord]\nnodaemon=true\nlogfile=/dev/null\nlogfile_maxbytes=0\n"
            f"pidfile={path}.pid\nloglevel=error\n"
        )
        for name, command, more in programs:
            f.write(
                f"[program:{name}]\ncommand={command}\nstartsecs=0\nstopwaitsecs=10\n"
                f"stdout_logfile={stdout}\nstdout_logfile_maxbytes=0\nredirect_stderr=true\n{more}"
            )
    return ["supervisord", "-c", path]


def s6_scandir(services):
    scan = os.path.join(WORK, f"s6-{time.monotonic_ns()}")
    for name, run in services:
        d = os.path.join(scan, name)
        os.makedirs(d)
        with open(os.path.join(d, "run"), "w") as f:
            f.write(f"#!/bin/sh\n{run}\n")
        os.chmod(os.path.join(d, "run"), 0o755)
    return ["s6-svscan", scan]


def sleepers():
    return {
        "tether init": tether_bundle([(f"d{i}", ["sleep", "1000"], "") for i in range(N)]),
        "tether-init": tether_bundle([(f"d{i}", ["sleep", "1000"], "") for i in range(N)], init=[TETHER_INIT]),
        "supervisord": supervisord_conf([(f"d{i}", "sleep 1000", "") for i in range(N)]),
        "s6-svscan": s6_scandir([(f"d{i}", "exec sleep 1000") for i in range(N)]),
        # One child each: neither can supervise more.
        "tini": ["tini", "-s", "--", "sleep", "1000"],
        "dumb-init": ["dumb-init", "sleep", "1000"],
        "tether-init --": [TETHER_INIT, "--", "sleep", "1000"],
    }

ONE_CHILD = ("tini", "dumb-init", "tether-init --")


def start_sleepers(argv, expect):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(
        f"{argv[0]} to start {expect} sleeps",
        lambda: sum(1 for d in descendants(p.pid) if comm(d) == "sleep") >= expect,
    )
    return p


def memory_and_stop():
    memory, stop, left = {}, {}, {}
    for name, argv in sleepers().items():
        expect = 1 if name in ONE_CHILD else N
        times = []
        left[name] = 0
        for round_ in range(STOP_ROUNDS):
            p = start_sleepers(argv, expect)
            if round_ == 0:
                helpers = [d for d in descendants(p.pid) if comm(d) != "sleep"]
                memory[name] = (rss_kib(p.pid) + sum(rss_kib(h) for h in helpers), len(helpers))
            t0 = time.perf_counter()
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
            times.append(time.perf_counter() - t0)
            left[name] += leftovers()
        stop[name] = statistics.median(times)
    return memory, stop, left


def restart_gaps(argv, log, want):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CRASHLOG": log})

    def runs():
        try:
            with open(log) as f:
                return [tuple(map(int, l.split())) for l in f if l.strip()]
        except OSError:
            return []

    wait_until(f"{want} restarts", lambda: len(runs()) > want, limit=60)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    r = runs()
    return statistics.median((r[i + 1][0] - r[i][1]) / 1e9 for i in range(len(r) - 1))


def restart():
    out = {}
    crash = os.path.join(WORK, "crash")
    out["tether init"] = restart_gaps(
        tether_bundle(
            [("crasher", [CRASHLOOP], "      restart: { policy: always, backoff: { initial: 0s, max: 0s } }\n")]
        ),
        crash + ".tether",
        50,
    )
    out["supervisord"] = restart_gaps(
        supervisord_conf([("crasher", CRASHLOOP, "autorestart=true\nstartretries=1000\n")]), crash + ".supervisord", 4
    )
    out["s6-svscan"] = restart_gaps(s6_scandir([("crasher", f"exec {CRASHLOOP}")]), crash + ".s6", 4)
    return out


def throughput():
    data = os.path.join(WORK, "lines")
    line = b"2026-11-22T02:31:52.123Z INFO request served path=/api/items status=200 bytes=5123 ms=3.2\n"
    with open(data, "wb") as f:
        block = line * (1024 * 1024 // len(line))
        written = 0
        while written < LOG_BYTES:
            f.write(block)
            written += len(block)
        f.write(b"END-OF-DATA\n")
    size = os.path.getsize(data)

    def through(argv, shell=False):
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, shell=shell)
        fd = p.stdout.fileno()
        tail = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            tail = (tail + chunk[-64:])[-64:]
            if b"END-OF-DATA\n" in tail:
                break
        took = time.perf_counter() - t0
        p.terminate()
        p.wait(timeout=60)
        return size / took

    runs = {
        "plain pipe (cat)": (f"cat {data} | cat", True),
        "tether init": (tether_bundle([("app", ["cat", data], "      restart: { policy: never }\n")]), False),
        "tether-init": (
            tether_bundle([("app", ["cat", data], "      restart: { policy: never }\n")], init=[TETHER_INIT]),
            False,
        ),
        "supervisord": (
            supervisord_conf([("app", f"cat {data}", "autorestart=false\n")], stdout="/dev/stdout"),
            False,
        ),
    }
    # Interleaved rounds, best of each: the machine's noise hits every contender alike.
    out = {name: 0.0 for name in runs}
    for _ in range(LOG_ROUNDS):
        for name, (argv, shell) in runs.items():
            out[name] = max(out[name], through(argv, shell))
    return out


def sizes():
    out = {"tether init": os.path.getsize(TETHER), "tether-init": os.path.getsize(TETHER_INIT)}
    for name, paths in {
        "tini": ["/usr/bin/tini-static"],
        "dumb-init": ["/usr/bin/dumb-init"],
        "s6-svscan": ["/usr/bin/s6-svscan", "/usr/bin/s6-supervise"],
    }.items():
        out[name] = sum(os.path.getsize(p) for p in paths)
    return out


def main():
    try:
        become_subreaper()
        memory, stop, left = memory_and_stop()
        restarts = restart()
        logs = throughput()
        size = sizes()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    if AS_JSON:
        print(json.dumps({"memory_kib": memory, "stop_s": stop, "left_running": left, "restart_s": restarts, "logs_bytes_per_s": logs, "size_bytes": size}, indent=2))
        return
    t = "tether init"
    print(f"tether init beside its peers, {N} daemons ({os.cpu_count()} cores)\n")
    print("resident memory of the supervisor with 10 sleep daemons (tini, dumb-init, tether-init --: 1 child)")
    for name, (kib, helpers) in memory.items():
        extra = f" (+{helpers} helper processes)" if helpers else ""
        print(f"  {name:<14} {kib / 1024:7.1f} MiB  {kib / memory[t][0]:6.1f}x tether{extra}")
    print("\nSIGTERM to exit, median of", STOP_ROUNDS)
    for name, s in stop.items():
        note = f"  (left {left[name]} daemons running)" if left[name] else ""
        print(f"  {name:<14} {s * 1000:9.1f} ms  {s / stop[t]:6.1f}x tether{note}")
    print("\ncrash to restart, median (tini and dumb-init do not restart)")
    for name, s in restarts.items():
        print(f"  {name:<14} {s * 1000:9.2f} ms  {s / restarts[t]:6.0f}x tether")
    print(f"\nlog throughput through the supervisor, best of {LOG_ROUNDS}, 256 MiB of 90-byte lines")
    plain = logs["plain pipe (cat)"]
    for name, bps in logs.items():
        print(f"  {name:<16} {bps / 2**20:7.0f} MiB/s  {bps / plain:5.2f}x the plain pipe")
    print("\nbinary size (tether, tether-init: static, stripped; supervisord is Python)")
    for name, b in size.items():
        print(f"  {name:<14} {b / 1024:9.0f} KiB")
    print("\ntargets: memory < 4 MiB, SIGTERM to exit < 10 ms, crash to restart < 5 ms, logs >= 0.8x;")
    print("tether-init: size < 1.5 MB (1,500,000 bytes), memory with 10 daemons < 3 MiB")
    ok = [
        memory[t][0] < 4096,
        stop[t] < 0.010,
        restarts[t] < 0.005,
        logs[t] >= 0.8 * plain,
    ]
    ok += [size["tether-init"] < 1_500_000, memory["tether-init"][0] < 3 * 1024]
    names = ["memory", "stop", "restart", "logs", "tether-init size", "tether-init memory"]
    print("  " + "  ".join(f"{n}: {'met' if o else 'MISSED'}" for n, o in zip(names, ok)))


if __name__ == "__main__":
    main()
