"""Programmatic teacher throughput: verified samples per second per core, by domain.

One sample is what the synth stage makes per index: `make_problem` (an exact answer computed symbolically or by
enumeration), the worked solution rendered, and `render.verify` (the rendered solution's extracted answer checked
against the exact one; for `python_code`, the solution's unit tests run in the sandbox). One process, one thread,
so samples/s is per core; the figure is the median of --repeats passes over the same indices.

    python bench/synth_throughput.py                    # 400 samples per domain (python_code: 40), difficulty 1 and 3
    python bench/synth_throughput.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from phiforge.data.render import verify  # noqa: E402
from phiforge.data.problems import DOMAINS, make_problem  # noqa: E402
from phiforge.data.render import STYLES  # noqa: E402


def one_pass(domain: str, n: int, difficulty: int) -> tuple[float, int]:
    t0, ok = time.perf_counter(), 0
    for i in range(n):
        p = make_problem(domain, 0, i, difficulty)
        STYLES["exercise"](p)
        ok += verify(p)
    return time.perf_counter() - t0, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="samples per domain and difficulty (python_code: a tenth)")
    ap.add_argument("--difficulties", default="1,3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats, args.difficulties = 40, 1, "1"
    levels = [int(d) for d in args.difficulties.split(",")]
    print(f"| domain | {' | '.join(f'difficulty {d}: samples/s' for d in levels)} | verified |")
    print("|---|" + "---|" * len(levels) + "---|")
    totals = {d: [0, 0.0] for d in levels}
    for domain in DOMAINS:
        n = max(4, args.n // 10) if domain == "python_code" else args.n
        cells, verified = [], []
        for d in levels:
            runs = [one_pass(domain, n, d) for _ in range(args.repeats)]
            secs = statistics.median(r[0] for r in runs)
            cells.append(f"{n / secs:,.0f}")
            verified.append(f"{runs[0][1]}/{n}")
            totals[d][0] += n
            totals[d][1] += secs
        print(f"| {domain} | {' | '.join(cells)} | {', '.join(verified)} |", flush=True)
    print(f"| all domains, equal counts | {' | '.join(f'{n / s:,.0f}' for n, s in totals.values())} | |")


if __name__ == "__main__":
    main()
