#!/usr/bin/env python3
"""The agent's own share of each DHCP answer in one run.

usage: response_quantiles.py BEFORE AFTER

BEFORE and AFTER are the boot agent's /metrics scraped just before and just
after a run. From the growth of ggnet_dhcp_response_seconds (each request's
kernel receive timestamp to its reply handed to the kernel: the wait for a
worker to read it, the answer and the send) it prints, per reply type, the
count and p50/p99/max-bucket in ms, interpolated within buckets as
Prometheus' histogram_quantile does."""
import re
import sys

LINE = re.compile(r'^ggnet_dhcp_response_seconds_bucket\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def buckets(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                labels = dict(LABEL.findall(m.group(1)))
                le = float('inf') if labels['le'] == '+Inf' else float(labels['le'])
                out.setdefault(labels['reply'], {})[le] = float(m.group(2))
    return out


def quantile(q, cum):
    """cum: sorted [(le, cumulative count)]."""
    total = cum[-1][1]
    if total == 0:
        return float('nan')
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float('inf'):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def main():
    before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
    if not after:
        sys.exit("response_quantiles.py: no ggnet_dhcp_response_seconds in " + sys.argv[2])
    parts = []
    for reply in sorted(after):
        cum = sorted((le, c - before.get(reply, {}).get(le, 0.0)) for le, c in after[reply].items())
        n = cum[-1][1]
        if n == 0:
            continue
        top = next(le for le, c in cum if c >= n)  # the bucket the slowest fell in
        parts.append('%s_n=%d %s_p50=%.3fms %s_p99=%.3fms %s_max<=%sms' % (
            reply, n, reply, quantile(0.5, cum) * 1e3, reply, quantile(0.99, cum) * 1e3, reply,
            'inf' if top == float('inf') else '%g' % (top * 1e3)))
    print(' '.join(parts))


if __name__ == '__main__':
    main()
