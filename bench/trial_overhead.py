"""Trial overhead: `maestro run` of short RANDOMIST trials against the same trials' work run
directly as plain Ray tasks, on the same local cluster, in the same run.

The `maestro run` side is all of `run_experiment` on `jobs/randomist/lqg.yaml` (every arm x
seed): the parent MLflow run, Ray Tune (the grid, trial actors, reports batched by
`trials.report_seconds` as a run does, each with the latest checkpoint if any, its final
save), one MLflow child run per trial with every logged point, the summary, the claims and
the plots. The plain side runs, for each trial, what it computes (arm values, every round
of its algorithm) as a Ray task with the same CPUs, and keeps nothing. The two sides
alternate (tasks, run, tasks, run, ...); the ratio of the fastest time of each is the
measure, since a shared machine only ever adds time, and the median of each run's time over
the tasks' just before it is printed beside it.

    python bench/trial_overhead.py [--trials 20] [--rounds 6000] [--repeats 8]

Goal: run wall time under 1.10 x the plain tasks' (overhead under 10%) at 6000 rounds.
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
SPEC = REPO / "jobs" / "randomist" / "lqg.yaml"
ARMS = 7  # the spec's algorithms


def run_spec(folder: Path, trials: int, rounds: int, tracking: bool = True):
    """The RANDOMIST spec sized to `trials` (its 7 algorithms x seeds), run 2 at a time."""
    from maestro.spec import load_spec

    return load_spec(
        SPEC,
        overrides=[
            f"config.rounds={rounds}",
            f"config.log_every={max(rounds // 10, 1)}",
            "resources.num_cpus=2",
            f"store.uri={folder / 'store'}",
            # A new name per run: each measurement is a new experiment.
            f"tracking.run_name=bench-{time.time_ns()}",
            f"tracking.enabled={str(tracking).lower()}",
            "tracking.experiment=bench",
            f"trials.seeds={max(1, -(-trials // ARMS))}",
            "trials.max_concurrent=2",
            "trials.cpus=1",
        ],
    )


def trial_work(data: dict) -> float:
    """What one trial computes, with no Tune, no checkpoints and no tracking."""
    from maestro.methods.randomist.bandit import BanditState, simulate
    from maestro.methods.randomist.config import RandomistConfig

    cfg = RandomistConfig.model_validate(data["config"])
    state = BanditState.start(cfg, data["seed"])
    for _ in simulate(cfg, state):
        pass
    return float(state.regret[-1])


def trial_specs(spec) -> list[dict]:
    """Every trial's resolved spec, as `maestro run` makes them."""
    from maestro.spec import trial_data

    return [
        trial_data(spec.resolved(), {"arm": arm, "seed": seed})
        for arm in spec.arm_names()
        for seed in spec.seeds()
    ]


def run_tasks(specs: list[dict], cpus: float) -> float:
    """Wall seconds to run every trial's work as Ray tasks."""
    import ray

    task = ray.remote(num_cpus=cpus)(trial_work)
    start = time.perf_counter()
    ray.get([task.remote(trial) for trial in specs])
    return time.perf_counter() - start


def run_timed(spec) -> float:
    """Wall seconds of a whole `run_experiment`."""
    from maestro.run import run_experiment

    start = time.perf_counter()
    result = run_experiment(spec)
    elapsed = time.perf_counter() - start
    if any(f"final_regret/{arm}" not in result.summary for arm in spec.arm_names()):
        sys.exit(f"the run went wrong: {result}")
    return elapsed


def start_cluster(folder: Path) -> None:
    """A local Ray cluster of 2 CPUs (never another process's), and MLflow in `folder`."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
    os.environ.setdefault("RAY_ADDRESS", "local")
    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec
    from maestro.tracking import Tracker

    init_ray(ResourcesSpec(num_cpus=2))
    # Create the MLflow database now: its one-time setup is not part of any run.
    Tracker.start("bench", "warm-up", {}, {}).end()


def parse_args(doc: str) -> argparse.Namespace:
    """The options both trial benchmarks take."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6000, help="rounds per trial")
    parser.add_argument("--repeats", type=int, default=8, help="timings of each side")
    return parser.parse_args()


def main() -> None:
    args = parse_args(__doc__)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start_cluster(folder)
        spec = run_spec(folder, args.trials, args.rounds)
        specs = trial_specs(spec)
        # Untimed first: the driver's imports (Tune, MLflow, rliable, matplotlib). Both sides
        # still start worker processes in every timed run: a Tuner's trial actors are new
        # processes that push Ray's idle task workers out of its pool, and die with it.
        run_tasks(specs[:2], spec.trials.cpus)
        run_timed(run_spec(folder, ARMS, 20, tracking=False))
        plain, timed = [], []
        for _ in range(args.repeats):
            plain.append(run_tasks(specs, spec.trials.cpus))
            timed.append(run_timed(run_spec(folder, args.trials, args.rounds)))
            print(f"repeat {len(timed)}: plain tasks {plain[-1]:.2f} s, run {timed[-1]:.2f} s")
        per_trial = (min(timed) - min(plain)) / len(specs)
        ratio = min(timed) / min(plain)
        # Each run against the tasks just before it: a machine whose speed drifts between
        # repeats moves both sides of a pair alike.
        paired = statistics.median(t / p for t, p in zip(timed, plain, strict=True))
        print(f"trials: {len(specs)} x {args.rounds} rounds, 2 at a time, 1 CPU each")
        print(f"plain Ray tasks: best {min(plain):.2f} s (median {statistics.median(plain):.2f})")
        print(f"maestro run:     best {min(timed):.2f} s (median {statistics.median(timed):.2f})")
        print(f"ratio run / tasks: {ratio:.3f} (overhead {100 * (ratio - 1):.1f}%, ", end="")
        print(f"{per_trial:.3f} s per trial)")
        print(f"median of each run / the tasks before it: {paired:.3f}")
        print("goal: ratio under 1.10")


if __name__ == "__main__":
    main()
