#!/usr/bin/env python3
"""Where a paid request's time goes, from a provider log (debug, text format): per request, the time from
the saga's first line to each step, as p50/p95 over all requests that got a reply. Prints numbers only.

    scripts/bench/phases.py /tmp/benchlogs/provider-pool50.log
"""
import re
import sys
from datetime import datetime

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINE = re.compile(r"^(\S+Z)\s+\w+\s+lease\{request_id=([0-9a-f]{8,})[^}]*\}")
# Before its saga starts: the event as the nostr adapter took it from the relay.
RECEIVED = re.compile(r"^(\S+Z)\s+\w+\s+paygress::nostr: nostr request received event_id=([0-9a-f]{64})")
STEPS = [
    ("driven", "saga driven"),
    ("checked", "saga step persisted step=Redeeming"),
    ("redeemed", "paygress::lease::service::redeem: token redeemed"),
    ("objects", "pod and service created"),
    ("running", "paygress::k8s: pod running"),
    ("ssh", "ssh answers"),
    ("onion", "pooled onion service assigned|onion service published"),
    ("replied", "reply sent"),
]


def ts(s):
    return datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))]


def main(path):
    first, marks, received = {}, {}, {}
    for raw in open(path, errors="replace"):
        line = ANSI.sub("", raw)
        r = RECEIVED.match(line)
        if r:
            received.setdefault(r.group(2), ts(r.group(1)))
            continue
        m = LINE.match(line)
        if not m:
            continue
        t, req = ts(m.group(1)), m.group(2)
        first.setdefault(req, t)
        for name, pat in STEPS:
            if re.search(pat, line):
                marks.setdefault(req, {}).setdefault(name, t)
    done = [r for r in marks if "replied" in marks[r] and "redeemed" in marks[r]]
    if not done:
        print("no replied requests in", path)
        return
    for r in done:
        # The saga's clock starts when the request left the relay, if the log says when.
        first[r] = min(first[r], received.get(r, first[r]))
    queued = [marks[r]["redeemed"] - received[r] for r in done if r in received]
    print(f"{len(done)} requests ({len(queued)} with a receive time); seconds from the request's arrival "
          "(or the saga's first line), p50 / p95, and each step's own share")
    prev = None
    for name, _ in STEPS:
        at = [marks[r][name] - first[r] for r in done if name in marks[r]]
        own = [marks[r][name] - marks[r][prev] for r in done if name in marks[r] and prev in marks[r]] if prev else at
        if at:
            print(f"  {name:>9}: at {pct(at, .5):6.2f} / {pct(at, .95):6.2f}   step {pct(own, .5):6.2f} / {pct(own, .95):6.2f}")
        prev = name


if __name__ == "__main__":
    main(sys.argv[1])
