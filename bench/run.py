#!/usr/bin/env python3
"""tether run beside a plain `docker run`, a start-and-wait script and docker-compose, in one run.

  overhead  `tether run` of a workload with 5 warm shared sidecars, against a plain
            `docker run` of the same workload (median of ROUNDS)
  cold      5 sidecars that each take about 1 s to become ready: the time until all are
            ready and the workload starts, for tether, for a script that starts and waits for
            them one by one, and for `docker-compose up -d` followed by waiting for each

Run it through bench/run, which builds the image and tether.  Usage: run.py TETHER IMAGE
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TETHER, IMAGE = sys.argv[1], sys.argv[2]
ROUNDS = 11
N = 5
WORK = tempfile.mkdtemp(prefix="tether-bench-run-")


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def timed(argv, **kw):
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def declaration(project, lifecycle, delay):
    path = os.path.join(WORK, f"{project}.yaml")
    with open(path, "w") as f:
        f.write(f"version: 1\nproject: {project}\nsidecars:\n")
        for i in range(N):
            f.write(
                f"  s{i}:\n    image: {IMAGE}\n    lifecycle: {lifecycle}\n"
                f'    command: [sh, -c, "sleep {delay}; exec httpd -f -p 8080 -h /www"]\n'
                "    interface: { kind: port, port: 8080 }\n"
                "    readiness: { mode: http, path: /, timeout: 30s, interval: 100ms }\n"
            )
    return path


def overhead():
    f = declaration("bench-warm", "shared", 0)
    workload = ["docker", "run", "--rm", IMAGE, "true"]
    on_network = ["docker", "run", "--rm", "--network", "tether-bench-warm", IMAGE, "true"]
    subprocess.run([TETHER, "run", "-f", f, "--", *workload], check=True, capture_output=True)
    plain, networked, tether, own = [], [], [], []
    for _ in range(ROUNDS):
        plain.append(timed(workload))
        networked.append(timed(on_network))
        tether.append(timed([TETHER, "run", "-f", f, "--", *workload]))
        # tether's own share: the same run with a host process that does nothing.
        own.append(timed([TETHER, "run", "-f", f, "--", "true"]))
    subprocess.run([TETHER, "down", "--all", "-f", f], capture_output=True)
    m = statistics.median
    return m(plain), m(networked), m(tether), m(own)


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status < 400
    except OSError:
        return False


def wait_http(container):
    ip = sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()
    while not ready(f"http://{ip}:8080/"):
        time.sleep(0.1)


def cold_tether():
    f = declaration("bench-cold", "session", 1)
    mark = os.path.join(WORK, "started")
    t0 = time.perf_counter()
    subprocess.run(
        [TETHER, "run", "-f", f, "--", "python3", "-c", f"import time; open({mark!r}, 'w').write(repr(time.perf_counter()))"],
        check=True,
        capture_output=True,
    )
    with open(mark) as m:
        return float(m.read()) - t0


def cold_script():
    net = "bench-script"
    subprocess.run(["docker", "network", "create", net], capture_output=True)
    t0 = time.perf_counter()
    for i in range(N):
        name = f"bench-script-s{i}"
        sh("docker", "run", "-d", "--name", name, "--network", net, IMAGE, "sh", "-c", "sleep 1; exec httpd -f -p 8080 -h /www")
        wait_http(name)
    took = time.perf_counter() - t0
    for i in range(N):
        subprocess.run(["docker", "rm", "-f", f"bench-script-s{i}"], capture_output=True)
    subprocess.run(["docker", "network", "rm", net], capture_output=True)
    return took


def cold_compose():
    d = os.path.join(WORK, "compose")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "docker-compose.yml"), "w") as f:
        f.write("version: '3.8'\nservices:\n")
        for i in range(N):
            f.write(f"  s{i}:\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 1; exec httpd -f -p 8080 -h /www']\n")
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "benchcompose"}
    t0 = time.perf_counter()
    sh("docker-compose", "up", "-d", cwd=d, env=env)
    for i in range(N):
        wait_http(f"benchcompose_s{i}_1")
    took = time.perf_counter() - t0
    subprocess.run(["docker-compose", "down"], cwd=d, env=env, capture_output=True)
    return took


def main():
    plain, networked, tether, own = overhead()
    cold = {"tether run": [], "one by one (script)": [], "docker-compose up -d + wait": []}
    for _ in range(3):
        cold["tether run"].append(cold_tether())
        cold["one by one (script)"].append(cold_script())
        cold["docker-compose up -d + wait"].append(cold_compose())
    cold = {k: statistics.median(v) for k, v in cold.items()}
    if "--json" in sys.argv:
        print(json.dumps({"plain_docker_run_s": plain, "docker_run_on_network_s": networked, "tether_run_warm_s": tether, "tether_own_s": own, "cold_ready_s": cold}, indent=2))
        return
    print(f"tether run beside its peers ({os.cpu_count()} cores), {N} sidecars\n")
    print(f"workload with {N} warm shared sidecars, median of {ROUNDS}")
    print(f"  plain docker run                    {plain * 1000:5.0f} ms")
    print(f"  docker run on the project network   {networked * 1000:5.0f} ms   {networked / plain:4.2f}x plain")
    print(f"  tether run                          {tether * 1000:5.0f} ms   {tether / plain:4.2f}x plain (target < 1.2x), {tether / networked:4.2f}x on the network")
    print(f"  tether's own part (host process)    {own * 1000:5.0f} ms")
    print(f"\ncold start of {N} sidecars that each take 1 s to be ready, until the workload can start (median of 3)")
    base = cold["tether run"]
    for name, s in cold.items():
        print(f"  {name:<28} {s:5.2f} s   {s / base:4.2f}x tether")
    print(f"  (the slowest single sidecar needs 1 s; all {N} one after another need {N} s)")


if __name__ == "__main__":
    main()
