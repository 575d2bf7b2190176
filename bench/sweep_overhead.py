"""Sweep overhead: RANDOMIST trials through `maestro sweep` against the same trials' work
run directly as plain Ray tasks, on the same local cluster, in the same run.

The sweep side is all of `run_sweep`: the parent MLflow run, Ray Tune (search, trial
actors, a checkpoint with every report, its experiment state), one MLflow child run per
trial with batched metrics, and the summary. The plain side runs, for each trial, what its
trainable computes (arm values, the seeded simulation of every round) as a Ray task with
the same CPUs, and keeps nothing. The two sides alternate (tasks, sweep, tasks, sweep,
...) and the fastest time of each is kept, since a shared machine only ever adds time.

    python bench/sweep_overhead.py [--trials 20] [--rounds 1500] [--repeats 2]

Goal: sweep wall time under 1.10 x the plain tasks' (overhead under 10%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "randomist" / "sweep.yaml"
ALGORITHMS = ("randomist", "optimist", "ucb1", "phe", "thompson")


def sweep_spec(folder: Path, trials: int, rounds: int, tracking: bool = True):
    """The RANDOMIST sweep spec sized to `trials` (algorithms x seeds), run 2 at a time."""
    from maestro.spec import load_spec

    seeds = list(range((trials + len(ALGORITHMS) - 1) // len(ALGORITHMS)))
    return load_spec(
        SPEC,
        overrides=[
            f"config.rounds={rounds}",
            f"config.log_every={max(rounds // 10, 1)}",
            "config.value_samples=5000",
            "resources.num_cpus=2",
            f"store.uri={folder / 'store'}",
            # A new name per run: each measurement is a new sweep.
            f"tracking.run_name=bench-{time.time_ns()}",
            f"tracking.enabled={str(tracking).lower()}",
            "tracking.experiment=bench",
            "sweep.max_concurrent=2",
            "sweep.resources.cpus=1",
            "sweep.space.config.exploration={grid: [0.3]}",
            f"sweep.space.seed={{grid: {seeds}}}",
        ],
    )


def trial_work(trial_spec: dict) -> float:
    """What the RANDOMIST trainable computes for one trial, with no Tune and no tracking."""
    import numpy as np

    from maestro.methods.randomist import RandomistConfig, arm_values, simulate

    cfg = RandomistConfig.model_validate(trial_spec["config"])
    values = arm_values(cfg)
    runs = [simulate(cfg, a, int(trial_spec["seed"]), values) for a in cfg.algorithms]
    for _ in range(cfg.rounds):
        latest = [next(run) for run in runs]
    return float(np.mean(latest))


def trial_specs(spec) -> list[dict]:
    """Every trial's resolved spec, as the sweep would run them."""
    import itertools

    from maestro.sweep import apply_params, load_sweep

    plan = load_sweep(spec)
    keys = sorted(plan.sweep.space)
    grids = [plan.sweep.space[k].args for k in keys]
    return [
        apply_params(spec.resolved(), dict(zip(keys, values, strict=True)))
        for values in itertools.product(*grids)
    ]


def run_tasks(specs: list[dict], cpus: float) -> float:
    """Wall seconds to run every trial's work as Ray tasks."""
    import ray

    task = ray.remote(num_cpus=cpus)(trial_work)
    start = time.perf_counter()
    ray.get([task.remote(trial) for trial in specs])
    return time.perf_counter() - start


def run_sweep_timed(spec) -> float:
    """Wall seconds of a whole `run_sweep`."""
    from maestro.sweep import run_sweep

    start = time.perf_counter()
    result = run_sweep(spec)
    elapsed = time.perf_counter() - start
    if result.errored or result.trials != len(trial_specs(spec)):
        sys.exit(f"sweep went wrong: {result}")
    return elapsed


def start_cluster(folder: Path) -> None:
    """A local Ray cluster of 2 CPUs (never another process's), and MLflow in `folder`."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
    os.environ.setdefault("RAY_ADDRESS", "local")
    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec
    from maestro.tracking import Tracker

    init_ray(ResourcesSpec(num_cpus=2))
    # Create the MLflow database now: its one-time setup is not part of any sweep.
    Tracker.start("bench", "warm-up", {}, {}).end()


def parse_args(doc: str) -> argparse.Namespace:
    """The options both sweep benchmarks take."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1500, help="rounds per trial")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each side")
    return parser.parse_args()


def main() -> None:
    args = parse_args(__doc__)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start_cluster(folder)
        spec = sweep_spec(folder, args.trials, args.rounds)
        specs = trial_specs(spec)
        cpus = spec.sweep["resources"]["cpus"]
        # Untimed first: the task workers' start, Tune's imports, its trial workers' start.
        run_tasks(specs[:2], cpus)
        run_sweep_timed(sweep_spec(folder, 2, 20, tracking=False))
        plain, swept = [], []
        for _ in range(args.repeats):
            plain.append(run_tasks(specs, cpus))
            swept.append(run_sweep_timed(sweep_spec(folder, args.trials, args.rounds)))
        per_trial = (min(swept) - min(plain)) / len(specs)
        ratio = min(swept) / min(plain)
        print(f"trials: {len(specs)} x {args.rounds} rounds, 2 at a time, 1 CPU each")
        print(f"plain Ray tasks: best {min(plain):.2f} s (median {statistics.median(plain):.2f})")
        print(f"maestro sweep:   best {min(swept):.2f} s (median {statistics.median(swept):.2f})")
        print(f"ratio sweep / tasks: {ratio:.3f} (overhead {100 * (ratio - 1):.1f}%, ", end="")
        print(f"{per_trial:.3f} s per trial)")
        print("goal: ratio under 1.10")


if __name__ == "__main__":
    main()
