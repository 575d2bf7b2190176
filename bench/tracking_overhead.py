"""MLflow tracking overhead: the same RANDOMIST run with tracking on (a parent run, one
child run per trial, every report's metrics batched into `log_batch` requests sent from a
writer thread) against tracking off (`tracking.enabled: false`), in the same run.

Both sides are whole `run_experiment` calls on one local Ray cluster with a sqlite MLflow
database (`MLFLOW_TRACKING_URI` points elsewhere if set). They alternate (off, on, off,
on, ...) and the fastest time of each is kept, since a shared machine only ever adds time.

    python bench/tracking_overhead.py [--trials 20] [--rounds 6000] [--repeats 8]

Goal: tracked wall time under 1.05 x untracked (overhead under 5%).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from trial_overhead import parse_args, run_spec, run_timed, start_cluster, trial_specs


def main() -> None:
    args = parse_args(__doc__)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start_cluster(folder)
        # One untimed run first: Tune's imports and the trial workers' start.
        run_timed(run_spec(folder, 5, 20, tracking=False))
        off, on = [], []
        for _ in range(args.repeats):
            off.append(run_timed(run_spec(folder, args.trials, args.rounds, False)))
            on.append(run_timed(run_spec(folder, args.trials, args.rounds, True)))
        ratio = min(on) / min(off)
        trials = len(trial_specs(run_spec(folder, args.trials, args.rounds)))
        print(f"trials: {trials} x {args.rounds} rounds, 10 reports each, 2 at a time")
        print(f"tracking off: best {min(off):.2f} s (median {statistics.median(off):.2f})")
        print(f"tracking on:  best {min(on):.2f} s (median {statistics.median(on):.2f})")
        print(f"ratio on / off: {ratio:.3f} (overhead {100 * (ratio - 1):.1f}%)")
        print("goal: ratio under 1.05")


if __name__ == "__main__":
    main()
