"""`make bench`: run every benchmark side by side in one go and print their figures.

Benchmarks print figures and ratios against a reference measured in the same run; they never
assert on time (absolute times are noisy on shared 2-core machines). Each runs in its own
process so one benchmark's memory and threads do not skew the next.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = (
    "bench_detection",
    "bench_localisation",
    "bench_recalibration",
    "bench_loop",
    "bench_inference",
    "bench_capture",
    "bench_mes",
    "bench_training",
    "bench_ui",
)


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    failures = []
    for name in BENCHES:
        if not (root / "tests" / "bench" / f"{name}.py").exists():
            print(f"== {name}: not present, skipped")
            continue
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"tests.bench.{name}", *sys.argv[1:]], cwd=root)
        print(f"== {name}: exit {proc.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode != 0:
            failures.append(name)
    if failures:
        print(f"benchmarks that failed to run: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
