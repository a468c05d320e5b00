#!/usr/bin/env python3
"""Table and SVG plots for scripts/bench/onion-scale.sh (standard library only: the plots are hand-written SVG,
so the bench needs no plotting package).

    onion-scale-plot.py SCALE_TSV TRANSFER_TSV MB OUTDIR
"""
import csv
import math
import statistics
import sys

scale_tsv, transfer_tsv, mb, outdir = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
rows = list(csv.DictReader(open(scale_tsv), delimiter="\t"))
NAMES = {"arti": "arti, one process", "ctor": "C tor, one process per lease"}
COLORS = {"arti": "#1f77b4", "ctor": "#d62728"}


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, unit="", digits=1):
    return "–" if v is None else f"{v:.{digits}f}{unit}"


# ---- table ----
print()
has_pss = "pss_kib" in rows[0] if rows else False
print("| leases | design | RSS |" + (" PSS |" if has_pss else "") + " idle CPU (% of one core) | answering after start | start → all answer "
      "| answering after kill -9 + restart | restart → all answer | a new lease during the restart: published |")
print("|---:|---|---:|" + ("---:|" if has_pss else "") + "---:|---:|---:|---:|---:|---:|")
for r in rows:
    rss = num(r["rss_kib"])
    pss = num(r.get("pss_kib"))
    print(f"| {r['leases']} | {NAMES[r['design']]} | {fmt(rss and rss / 1024, ' MiB')} "
          + (f"| {fmt(pss and pss / 1024, ' MiB')} " if has_pss else "")
          + f"| {fmt(num(r['idle_cpu_pct']), ' %', 2)} | {r['answering']}/{r['total']} "
          f"| {fmt(num(r['start_all_s']), ' s')} | {r['restart_answering']}/{r['restart_total']} "
          f"| {fmt(num(r['restart_all_s']), ' s')} | {fmt(num(r.get('new_lease_s')), ' s')} |")

transfer = {}
for line in open(transfer_tsv):
    design, secs = line.split()
    transfer.setdefault(design, []).append(num(secs))
if transfer:
    print()
    print(f"SSH transfer of {mb:.0f} MiB ('cat > /dev/null'), MB/s (10^6 bytes/s) per run, median:")
    med = {}
    for design, label in (("direct", "loopback, no Tor"), ("arti", "arti onion service"),
                          ("ctor", "C tor onion service")):
        runs = [mb * 1.048576 / s for s in transfer.get(design, []) if s]
        fails = sum(1 for s in transfer.get(design, []) if s is None)
        if runs:
            med[design] = statistics.median(runs)
        print(f"  {label:22} {' '.join(f'{v:.2f}' for v in runs) or '–'}"
              f"{f' (failed {fails})' if fails else ''}  median {fmt(med.get(design), ' MB/s', 2)}")
    if "arti" in med and "ctor" in med:
        print(f"  arti / C tor: {med['arti'] / med['ctor'] * 100:.0f} %")


# ---- plots: log-log lines, leases on x ----
def plot(path, title, ylabel, series, ylog=True):
    W, H, L, R, T, B = 640, 400, 70, 20, 40, 50
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and (y > 0 or not ylog)]
    if not pts:
        return
    xs = sorted({x for x, _ in pts})
    x0, x1 = math.log10(min(xs)), math.log10(max(xs)) if max(xs) > min(xs) else math.log10(min(xs)) + 1
    ys = [y for _, y in pts]
    if ylog:
        y0 = math.floor(math.log10(min(ys)))
        y1 = math.ceil(math.log10(max(ys)))
        y1 = y1 if y1 > y0 else y0 + 1
        ticks = [10 ** e for e in range(y0, y1 + 1)]
        fy = lambda y: T + (H - T - B) * (1 - (math.log10(y) - y0) / (y1 - y0))
    else:
        top = max(ys) * 1.1 or 1
        step = 10 ** math.floor(math.log10(top))
        ticks = [i * step for i in range(int(top / step) + 2) if i * step <= top * 1.05]
        fy = lambda y: T + (H - T - B) * (1 - y / top)
    fx = lambda x: L + (W - L - R) * ((math.log10(x) - x0) / (x1 - x0) if x1 > x0 else 0.5)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<text x="15" y="{(H - B + T) / 2}" transform="rotate(-90 15 {(H - B + T) / 2})" '
           f'text-anchor="middle">{ylabel}</text>',
           f'<text x="{(W + L) / 2}" y="{H - 10}" text-anchor="middle">live leases (log scale)</text>']
    for t in ticks:
        y = fy(t)
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{L - 5}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    for x in xs:
        out.append(f'<line x1="{fx(x):.1f}" x2="{fx(x):.1f}" y1="{T}" y2="{H - B}" stroke="#eee"/>'
                   f'<text x="{fx(x):.1f}" y="{H - B + 15}" text-anchor="middle">{x:g}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#444"/>')
    for i, (name, s) in enumerate(series.items()):
        p = [(fx(x), fy(y)) for x, y in s if y is not None and (y > 0 or not ylog)]
        color = COLORS[name.split()[0]]
        dash = ' stroke-dasharray="5,4"' if name.endswith((" start", " PSS")) else ""
        if p:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in p) + '"/>')
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in p]
        label = NAMES[name.split()[0]] + (" " + name.split(" ", 1)[1] if " " in name else "")
        out.append(f'<line x1="{L + 10}" x2="{L + 35}" y1="{T + 15 + 16 * i}" y2="{T + 15 + 16 * i}" '
                   f'stroke="{color}" stroke-width="2"{dash}/><text x="{L + 40}" y="{T + 19 + 16 * i}">{label}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")
    print(f"wrote {path}")


def series(col, scale=1.0, designs=("arti", "ctor"), suffix=""):
    return {d + suffix: [(float(r["leases"]), num(r[col]) and num(r[col]) * scale) for r in rows if r["design"] == d]
            for d in designs}


print()
plot(f"{outdir}/bench-onion-rss.svg", "Memory with N live onion services: RSS (solid), PSS (dashed)",
     "MiB (log scale)", {**series("rss_kib", 1 / 1024), **(series("pss_kib", 1 / 1024, suffix=" PSS") if has_pss else {})})
plot(f"{outdir}/bench-onion-cpu.svg", "Idle CPU with N live onion services", "% of one core (log scale)",
     series("idle_cpu_pct"))
plot(f"{outdir}/bench-onion-restart.svg", "Until every address answers: after kill -9 + restart (solid), "
     "after first start (dashed)", "seconds (log scale)",
     {**series("restart_all_s", suffix=" restart"), **series("start_all_s", suffix=" start")})
