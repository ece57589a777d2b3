"""Two benchmark commands in alternating pairs, so that a machine whose speed drifts skews their ratio least.

A shared 2-core machine can change speed by half within minutes, more than the gap between two implementations, so
their best-of-N runs taken one after the other compare hours, not code. Here each pair runs the baseline and the
candidate once each, one right after the other, and the order swaps every pair; the ratio is taken within each pair
and summarised by the geometric mean. Each command is a whole process (``bench.py`` or ``bench_original.py``) whose
last JSON line's ``img_per_s`` is its speed::

    O="python benchmarks/bench_original.py --repo /tmp/original --timm /tmp/timm0412"
    python benchmarks/pairs.py --pairs 6 --baseline "$O --model emma --threads 2" \\
        --candidate "python benchmarks/bench.py train --model emma --vit base --batch-size 8 --threads 2"

One JSON line per pair (both speeds and candidate / baseline), then the final line with every ratio, their geometric
mean, smallest and largest. The commands inherit the environment, so kernels held to an instruction set
(``MKL_ENABLE_INSTRUCTIONS=AVX2`` and the like) apply to both.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time


def speed(command: list[str]) -> float:
    """Run ``command`` and return the ``img_per_s`` of its last JSON line; a failure ends the comparison with its
    stderr's last lines."""
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"error: `{shlex.join(command)}` exited {result.returncode}"
                         f"{'' if lines else ' without a JSON line'}:\n{tail}")
    record = json.loads(lines[-1])
    if not record.get("img_per_s", 0) > 0:
        raise SystemExit(f"error: the last JSON line of `{shlex.join(command)}` has no positive img_per_s: {lines[-1]}")
    return float(record["img_per_s"])


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the command to compare against (one shell-quoted string)")
    parser.add_argument("--candidate", required=True, help="the command whose speed-up is wanted")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of runs (default: %(default)s)")
    opts = parser.parse_args(argv)
    if opts.pairs < 1:
        parser.error("--pairs must be at least 1")
    commands = {"baseline": shlex.split(opts.baseline), "candidate": shlex.split(opts.candidate)}
    ratios = []
    for pair in range(opts.pairs):
        order = ("baseline", "candidate") if pair % 2 == 0 else ("candidate", "baseline")
        speeds = {name: speed(commands[name]) for name in order}
        ratio = speeds["candidate"] / speeds["baseline"]
        ratios.append(ratio)
        emit(dict(pair=pair, first=order[0], time=time.strftime("%H:%M:%S"), baseline_img_per_s=speeds["baseline"],
                  candidate_img_per_s=speeds["candidate"], ratio=round(ratio, 3)))
    emit(dict(final=True, pairs=opts.pairs, ratios=[round(r, 3) for r in ratios],
              geometric_mean=round(math.exp(sum(math.log(r) for r in ratios) / len(ratios)), 3),
              min=round(min(ratios), 3), max=round(max(ratios), 3), baseline=opts.baseline, candidate=opts.candidate))


if __name__ == "__main__":
    sys.exit(main())
