"""Driver memory of Motif's prepare: the peak memory of the driver process that collects a
dataset (on Ray rollout actors), reads its caption counts and draws the pairs to annotate,
at the smoke preset's size and at `--scale` times as many rows, in the same run.

Each size runs in a fresh Python process (`resource` reports a process's peak), which
prints its peak resident memory after the imports and after the work; the growth is what
the dataset's size costs the driver. The driver holds one entry per distinct caption, not
per row: the growth should stay flat while the rows grow `--scale` times.

    python bench/motif_driver_memory.py [--scale 10] [--draws 4000]

Goal: the larger dataset's growth under 1.5 x the smoke-sized one's (plus 20 MiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

SMOKE = {"num_shards": 8, "episodes_per_shard": 1, "max_episode_steps": 1000, "num_actors": 2}


def peak_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(shards: int, draws: int) -> None:
    """(In the child process) collect `shards` shards, count captions, draw pairs; print
    the peaks and sizes as one JSON line."""
    import os

    os.environ.setdefault("RAY_ADDRESS", "local")
    from maestro.feedback.collect import CollectConfig, collect, load_caption_counts
    from maestro.feedback.pairs import PairSamplingConfig, sample_pairs
    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec
    from maestro.store import LocalStore

    init_ray(ResourcesSpec(num_cpus=2))
    before = peak_mib()
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        start = time.perf_counter()
        collect(store, "dataset", CollectConfig(**{**SMOKE, "num_shards": shards}), seed=0)
        dataset = load_caption_counts(store, "dataset")
        sample = sample_pairs(dataset, PairSamplingConfig(num_draws=draws), seed=0)
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "rows": dataset.rows,
                "distinct": len(dataset.captions),
                "questions": len(sample.questions),
                "before_mib": before,
                "after_mib": peak_mib(),
                "seconds": seconds,
            }
        )
    )


def run(shards: int, draws: int) -> dict:
    """`measure` in a fresh process."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(shards), "--draws", str(draws)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="rows of the large run / smoke")
    parser.add_argument("--draws", type=int, default=4000, help="pairs drawn (the smoke's)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        measure(args.child, args.draws)
        return
    results = [run(SMOKE["num_shards"] * scale, args.draws) for scale in (1, args.scale)]
    for result in results:
        growth = result["after_mib"] - result["before_mib"]
        print(
            f"{result['rows']:>9,} rows, {result['distinct']:>6,} distinct captions: "
            f"driver peak {result['after_mib']:.0f} MiB (+{growth:.0f} MiB for the data), "
            f"{result['seconds']:.0f} s"
        )
    small, large = (r["after_mib"] - r["before_mib"] for r in results)
    print(
        f"rows x{results[1]['rows'] / results[0]['rows']:.1f}: growth x{large / max(small, 1):.2f}"
    )
    print("goal: growth under 1.5 x the smoke's, plus 20 MiB")


if __name__ == "__main__":
    main()
