"""Parallel trials: the wall time of `maestro run` on 10 seeds of a small trial (the `td3`
arm of `jobs/mage/pendulum.yaml`: 2000 env steps, 500 of warm-up, 2 updates per step, 2
evaluation episodes every 500 steps, [64, 64] networks), trials side by side on the local
Ray cluster (`trials.max_concurrent` unset: as many as its CPUs fit, one CPU each)
against the same seeds one at a time (`trials.max_concurrent: 1`), in the same run.

Each side is a whole `maestro run` subprocess (Ray start, Tune, MLflow tracking to a sqlite
database, checkpoints, the summary) in its own temporary folder, timed around the
subprocess. The side-by-side run goes first, so the one-off warm-up of a first run (files
read from disk) counts against it, not for it. The speedup is sequential / side by side;
divided by the number of cores, 1.0 is perfect scaling (the driver, Ray and MLflow share
those cores with the trials).

    python bench/parallel_trials.py [--seeds 10] [--env-steps 2000] [--warmup 500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from td3_updates import maestro_run, write_spec


def timed_run(name: str, loop: dict, td3: dict, seeds: int, max_concurrent: int | None) -> float:
    """Wall seconds of `maestro run` of the spec, in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = write_spec(folder, name, loop, td3, seeds, max_concurrent)
        return maestro_run(spec, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--env-steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()

    loop = {
        "env_steps": args.env_steps,
        "warmup_steps": args.warmup,
        "updates_per_step": 2,
        "eval_every": 500,
        "eval_episodes": 2,
    }
    td3 = {"hidden": [64, 64]}
    parallel = timed_run("side-by-side", loop, td3, args.seeds, None)
    print(f"side by side: {parallel:.1f} s")
    sequential = timed_run("one-at-a-time", loop, td3, args.seeds, 1)
    print(f"one at a time: {sequential:.1f} s")
    cores = os.cpu_count()
    speedup = sequential / parallel
    print(f"trials: {args.seeds} seeds x {args.env_steps} env steps (td3 arm, hidden [64, 64])")
    print(f"speedup one at a time / side by side: {speedup:.2f} on {cores} cores")
    print(f"per core: {speedup / cores:.2f} (1.0: perfect scaling)")


if __name__ == "__main__":
    main()
