#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name: where the GPU time goes.

    ncu --clock-control none --csv --metrics gpu__time_duration.sum PROGRAM > ncu.csv
    scripts/kernel_times.py ncu.csv [TOP]
"""
import collections
import csv
import sys

rows = collections.defaultdict(lambda: [0, 0.0])
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    unit = r.get("Metric Unit", "nsecond")
    v = float(r["Metric Value"].replace(",", ""))
    v *= {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
    name = r["Kernel Name"][:110]
    rows[name][0] += 1
    rows[name][1] += v
total = sum(t for _, t in rows.values())
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
print(f"total {total / 1e3:.2f} ms in {sum(n for n, _ in rows.values())} launches")
for name, (n, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f"{t / 1e3:9.3f} ms {100 * t / total:5.1f}% {n:6d}x  {name}")
