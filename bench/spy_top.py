"""Top functions of a ``py-spy record --format raw`` profile: self and inclusive share of the
busy samples (samples idle in the event loop's epoll wait are counted apart).

Used for bench/PROFILE.md: ``uvx --from py-spy py-spy record --pid <actor pid> --duration 6
--format raw --output emsd.raw --nonblocking --rate 500`` while ``bench_load.py`` runs, then
``python bench/spy_top.py emsd.raw [N]``.
"""
from __future__ import annotations

import re
import sys
from collections import Counter

IDLE = ('epoll', 'select', 'poll (selectors', 'get_events', '_epoll_wait')


def _short(frame: str) -> str:
    m = re.match(r'(.*?) \((.*?):(\d+)\)', frame)
    if not m:
        return frame
    fn, path, _ = m.groups()
    for marker in ('site-packages/', 'piker_ems/', 'lib/python3.11/'):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f'{fn} ({path})'


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    selfc: Counter = Counter()
    incl: Counter = Counter()
    busy = idle = 0
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(' ')
        if not stack:
            continue
        n = int(n)
        frames = [_short(f) for f in stack.split(';')]
        if any(k in frames[-1] for k in IDLE):
            idle += n
            continue
        busy += n
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f'busy samples {busy}, idle {idle} ({100 * busy / max(1, busy + idle):.0f}% busy)\n')
    print('| self % | function |\n|---:|---|')
    for f, n in selfc.most_common(top):
        print(f'| {100 * n / busy:.1f} | `{f}` |')
    print('\n| inclusive % | function |\n|---:|---|')
    for f, n in incl.most_common(top + 15):
        print(f'| {100 * n / busy:.1f} | `{f}` |')


if __name__ == '__main__':
    main()
