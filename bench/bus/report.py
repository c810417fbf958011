#!/usr/bin/env python3
"""The table of bench/bus: tether's plugin bus beside NATS JetStream, ratios, and the targets.

Run it through bench/bus/run, which leaves in WORK: floor.json (the disk's write + fdatasync),
nats-version, and for each system a folder with result.json (the driver's figures, with the
resident memory of the processes it watched).
Usage: report.py WORK SYNC(yes|no) PERIOD [--quick] [--json]
"""

import json
import os
import sys

WORK, SYNC, PERIOD = sys.argv[1], sys.argv[2] == "yes", sys.argv[3]
QUICK = "--quick" in sys.argv
AS_JSON = "--json" in sys.argv


def load(*parts):
    with open(os.path.join(WORK, *parts)) as f:
        return json.load(f)


floor = load("floor.json")
with open(os.path.join(WORK, "sidecar-binary")) as f:
    sidecar_binary = f.read().strip()
with open(os.path.join(WORK, "nats-version")) as f:
    nats_version = f.read().strip().split()[-1]
systems = {}
for name in ["tether-periodic", "tether-always", "tether-nats", "jetstream"]:
    if os.path.isdir(os.path.join(WORK, name)):
        systems[name] = load(name, "result.json")

labels = {
    "tether-periodic": f"tether --sync {PERIOD}",
    "tether-always": "tether --sync always" if SYNC else "tether (fsync each)",
    "tether-nats": "tether --backend nats",
    "jetstream": f"JetStream {nats_version}",
}

if AS_JSON:
    print(json.dumps({"disk_write_fdatasync": floor, "periodic_sync_flag": SYNC, "sidecar_binary": sidecar_binary, "systems": systems}, indent=2))
    sys.exit(0)

js = systems["jetstream"]
names = list(systems)
rate, sat = js["rate"], js["saturation"]


def ms(x):
    return "-" if x is None else f"{x:.2f} ms"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def maybe_mib(kib):
    return "-" if kib is None else mib(kib)


def ratio(x, base):
    return f"{x / base:.2f}x"


def sidecar(field):
    """The larger of the two sidecars' `field`, None for JetStream."""

    def get(s):
        m = s["memory"]
        return max(m["sidecar_pub"][field], m["sidecar_sub"][field]) if "sidecar_pub" in m else None

    return get


def server(field):
    return lambda s: (s["memory"].get("bus") or s["memory"]["server"])[field]


def metrics(name):
    """The bus's Prometheus counters at the end of a tether run (metrics.txt), by name."""
    path = os.path.join(WORK, name, "metrics.txt")
    if not os.path.exists(path):
        return {}
    out = {}
    with open(path) as f:
        for line in f:
            if line and not line.startswith("#"):
                key, _, value = line.strip().rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
    return out


def syncs_per_1000(name):
    """fsyncs of the bus's store per 1,000 messages published, over the whole run."""
    m = metrics(name)
    published = m.get("tether_bus_messages_published_total")
    syncs = m.get("tether_bus_store_syncs_total")
    if not published or syncs is None:
        return None
    return syncs * 1000 / published


def cpu_per_1000(s):
    """CPU time (ms) the watched processes (bus, sidecars, nats-server) used per 1,000 messages
    delivered in the saturation phase; the driver's own (the plugins, the NATS client) is not in it."""
    used = sum(m.get("cpu_sat_s", 0) for m in s["memory"].values())
    return used * 1e6 / max(s["saturation"]["received"], 1)


rows = [
    (f"{rate['target_per_s']:,} msg/s for {rate['secs']} s, end to end p50", lambda s: s["rate"]["p50_ms"], ms),
    ("  p99", lambda s: s["rate"]["p99_ms"], ms),
    ("  p99.9", lambda s: s["rate"]["p999_ms"], ms),
    ("  max", lambda s: s["rate"]["max_ms"], ms),
    ("  publish acknowledged, p99", lambda s: s["rate"]["ack_p99_ms"], ms),
    (f"saturation ({sat['inflight']} in flight, {sat['secs']} s), published/s", lambda s: s["saturation"]["published_per_s"], lambda x: f"{x:,.0f}"),
    ("  delivered/s, end to end", lambda s: s["saturation"]["delivered_per_s"], lambda x: f"{x:,.0f}"),
    ("CPU per 1,000 messages at saturation, servers and sidecars", cpu_per_1000, lambda x: f"{x:.0f} ms"),
    ("fsyncs of the bus's store per 1,000 messages (whole run)", None, lambda x: "-" if x is None else f"{x:.0f}"),
    ("resident, bus or nats-server, at 1,000 msg/s", server("rss_at_rate_kib"), mib),
    ("  of it anonymous (not the binary's pages)", server("anon_at_rate_kib"), mib),
    ("  peak (VmHWM), after saturation", server("hwm_kib"), mib),
    ("  nats-server behind tether's Bus API, peak", lambda s: s["memory"].get("nats_server", {}).get("hwm_kib"), maybe_mib),
    (f"resident, one sidecar (the larger; {sidecar_binary.split(',')[0]}), at 1,000 msg/s", sidecar("rss_at_rate_kib"), maybe_mib),
    ("  of it anonymous (not the binary's pages)", sidecar("anon_at_rate_kib"), maybe_mib),
    ("  peak (VmHWM), after saturation", sidecar("hwm_kib"), maybe_mib),
]

print(f"tether's plugin bus beside NATS JetStream ({os.cpu_count()} cores), 1 KiB messages, one topic{', QUICK run' if QUICK else ''}")
print(
    f"disk floor, one 1 KiB append + fdatasync in the stores' folder ({floor['count']} times): "
    f"p50 {ms(floor['p50_ms'])}, p99 {ms(floor['p99_ms'])}, p99.9 {ms(floor['p999_ms'])}, max {ms(floor['max_ms'])}\n"
)
width = max(len(r[0]) for r in rows) + 2
col = 24
print(" " * width + "".join(f"{labels[n]:>{col}}" for n in names))
for title, get, fmt in rows:
    if get is None:
        # Per system by name, not from its figures: the bus's own counters.
        cells = [f"{fmt(syncs_per_1000(n) if n.startswith('tether-') and n != 'tether-nats' else None):>{col}}" for n in names]
        print(f"{title:<{width}}" + "".join(cells))
        continue
    base = get(js)
    cells = []
    for n in names:
        v = get(systems[n])
        text = fmt(v)
        if n != "jetstream" and v is not None and base:
            text += f" ({ratio(v, base)})"
        cells.append(f"{text:>{col}}")
    print(f"{title:<{width}}" + "".join(cells))

lost = []
for n in names:
    for phase in ("rate", "saturation"):
        p = systems[n][phase]
        if p["errors"] or p["received"] < p["acked"]:
            lost.append(
                f"  {labels[n]}, {phase}: {p['errors']} publishes failed"
                f"{' (first: ' + p['first_error'] + ')' if p['first_error'] else ''}, "
                f"{p['acked'] - p['received']} acknowledged but not delivered"
            )
    if systems[n]["redelivered"]:
        lost.append(f"  {labels[n]}: {systems[n]['redelivered']} deliveries came again (not counted)")
if lost:
    print("\nnot clean:")
    print("\n".join(lost))

print(
    f"\n(x) = against JetStream. JetStream {nats_version} (Debian's) writes each message to the OS and fsyncs"
    "\nits files every 2 minutes; this version has no per-message fsync (no sync_interval)."
)
if not SYNC:
    print(
        "This `tether bus serve` has no --sync flag yet (branch bus-server adds it): only its default,"
        "\nwhich fsyncs each commit before the ack, was run. bench/bus runs --sync always and"
        f"\n--sync {PERIOD} by itself once `tether bus serve --help` shows the flag."
    )

print("\ntargets (issue 12):")


def verdict(ok):
    return "pass" if ok else "FAIL"


if "tether-periodic" in systems:
    t = systems["tether-periodic"]
    p99, jp99 = t["rate"]["p99_ms"], rate["p99_ms"]
    print(f"  [{verdict(p99 <= jp99 + 1)}] periodic sync, p99 at 1,000 msg/s at most 1 ms above JetStream's: {ms(p99)} vs {ms(jp99)}")
    d, jd = t["saturation"]["delivered_per_s"], sat["delivered_per_s"]
    print(f"  [{verdict(d >= jd / 2)}] periodic sync, throughput at least half of JetStream's: {d:,.0f} vs {jd:,.0f} msg/s ({ratio(d, jd)})")
else:
    print("  [ -- ] periodic sync, p99 at 1,000 msg/s at most 1 ms above JetStream's: not measured (no --sync)")
    print("  [ -- ] periodic sync, throughput at least half of JetStream's: not measured (no --sync)")
t = systems["tether-always"]
p99 = t["rate"]["p99_ms"]
print(
    f"  [{verdict(p99 <= 2 * floor['p99_ms'])}] fsync each commit, p99 at 1,000 msg/s within 2x the disk's"
    f" (p99 of write + fdatasync): {ms(p99)} vs 2 x {ms(floor['p99_ms'])}"
)
if "tether-periodic" in systems:
    # What making each commit durable costs: the same path's p99 without it is the periodic run's.
    # Not the wording, which takes the whole path (two sidecars, two gRPC hops, a claim
    # and an ack) against one fsync: no system here meets that, JetStream without any fsync
    # included; shown beside it, not instead of it.
    pp99 = systems["tether-periodic"]["rate"]["p99_ms"]
    ack, pack = t["rate"]["ack_p99_ms"], systems["tether-periodic"]["rate"]["ack_p99_ms"]
    print(
        f"  [ info ] what fsyncing each commit adds, p99 (fsync each commit minus periodic sync): end to end"
        f" {ms(p99 - pp99)}, publish acknowledged {ms(ack - pack)}; 2x the disk's p99: {ms(2 * floor['p99_ms'])}"
    )
tethers = [systems[n] for n in names if n != "jetstream"]
peak = max(sidecar("hwm_kib")(t) for t in tethers) * 1024 / 1e6
steady = max(sidecar("rss_at_rate_kib")(t) for t in tethers) * 1024 / 1e6
anon = max(sidecar("anon_at_rate_kib")(t) for t in tethers) * 1024 / 1e6
print(
    f"  [{verdict(peak < 10)}] a sidecar under 10 MB resident: peak (VmHWM) {peak:.1f} MB; at 1,000 msg/s"
    f" {steady:.1f} MB, of which {anon:.1f} MB anonymous ({sidecar_binary})"
)
if QUICK:
    print("\nQUICK run: a few seconds per phase, so p99.9 rests on few samples; run without --quick for figures.")
