#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name: where the GPU time goes.

    ncu --clock-control none --csv --metrics gpu__time_duration.sum PROGRAM > ncu.csv
    scripts/kernel_times.py ncu.csv [TOP]
    scripts/kernel_times.py --order ncu.csv [LAST]   every launch in order (the LAST ones), with its grid
                                                     when the log also has launch__grid_size
"""
import collections
import csv
import sys

order = sys.argv[1] == "--order"
args = sys.argv[2:] if order else sys.argv[1:]
rows = collections.defaultdict(lambda: [0, 0.0])
launches = collections.OrderedDict()  # launch id -> [name, us, grid]
with open(args[0], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    key = r.get("ID")
    if r.get("Metric Name") == "launch__grid_size":
        launches.setdefault(key, [r["Kernel Name"][:110], 0.0, ""])[2] = r["Metric Value"]
        continue
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    unit = r.get("Metric Unit", "nsecond")
    v = float(r["Metric Value"].replace(",", ""))
    v *= {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
    name = r["Kernel Name"][:110]
    launches.setdefault(key, [name, 0.0, ""])[1] = v
    rows[name][0] += 1
    rows[name][1] += v
if order:
    last = int(args[1]) if len(args) > 1 else len(launches)
    items = list(launches.values())[-last:]
    print(f"{len(items)} launches, {sum(us for _, us, _ in items) / 1e3:.3f} ms")
    for i, (name, us, grid) in enumerate(items):
        print(f"{i:5d} {us:9.1f} us  grid {grid:>8}  {name}")
    sys.exit(0)
total = sum(t for _, t in rows.values())
top = int(args[1]) if len(args) > 1 else 40
print(f"total {total / 1e3:.2f} ms in {sum(n for n, _ in rows.values())} launches")
for name, (n, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f"{t / 1e3:9.3f} ms {100 * t / total:5.1f}% {n:6d}x  {name}")
