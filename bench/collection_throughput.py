"""Collection throughput: captions/s of one rollout worker against raw NLE steps/s.

Both run in this process, pinned to one core, on the same games: for each shard, the raw
loop replays its episodes (same seeds, same random actions, plain `env.step`, nothing
kept), and the worker collects the shard for real (copying the observation fields,
extracting captions, encoding Parquet, writing atomically to a local store, fsync
included). Times are wall-clock (`time.perf_counter`): CPU time would leave out the wait
for the disk, which a rollout worker pays too. The games are deterministic, so each shard
is timed several times, alternating the two sides, and the fastest time of each side is
kept (as `timeit` does): on a shared machine that is the closest estimate of what a
dedicated rollout core does. Medians are printed beside it.

    python bench/collection_throughput.py [--shards 4] [--repeats 5] [--fields message]

Goal: captions/s >= 0.9 x raw steps/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from maestro.envs.nethack import episode_seeds, make_raw_env, start_game
from maestro.feedback.collect import (
    DEFAULT_FIELDS,
    CollectConfig,
    RandomPolicy,
    RolloutWorker,
)


def raw_steps(env, policy: RandomPolicy, config: CollectConfig, seed: int, shard: int) -> int:
    """Play a shard's games with nothing but env.step; returns the steps taken."""
    steps = 0
    for episode in range(config.episodes_per_shard):
        core, disp, policy_seed = episode_seeds(np.random.SeedSequence([seed, shard, episode]))
        observation, _ = start_game(env, core, disp)
        policy.reset(policy_seed)
        for _ in range(config.max_episode_steps):
            observation, _, terminated, truncated, _ = env.step(policy.act(observation))
            steps += 1
            if terminated or truncated:
                break
    return steps


def timed(fn) -> tuple[int, float]:
    """(result, wall seconds) of fn(): the disk writes' waits count."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="score")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--episodes-per-shard", type=int, default=2)
    parser.add_argument("--max-episode-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fields",
        default=",".join(DEFAULT_FIELDS),
        help="observation fields stored beside the captions (comma-separated)",
    )
    args = parser.parse_args()
    # One rollout core: keep this process (and any helper threads) on a single CPU.
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

    config = CollectConfig(
        task=args.task,
        num_shards=args.shards + 1,
        episodes_per_shard=args.episodes_per_shard,
        max_episode_steps=args.max_episode_steps,
        fields=[f for f in args.fields.split(",") if f],
    )
    with tempfile.TemporaryDirectory() as folder:
        worker = RolloutWorker(folder, "bench", config, args.seed)
        raw_env = make_raw_env(
            config.task,
            max_episode_steps=config.max_episode_steps,
            observation_keys=tuple(dict.fromkeys([*config.fields, "message"])),
            character=config.character,
        )
        raw_policy = RandomPolicy(int(raw_env.action_space.n))
        # Warm-up (imports, buffers paged in, first Parquet write), not timed.
        worker.run_shard(args.shards)
        raw_steps(raw_env, raw_policy, config, args.seed, args.shards)

        ratios, medians = [], []
        totals = [0, 0.0, 0, 0.0]
        for shard in range(args.shards):
            raw_times, collect_times = [], []
            for repeat in range(args.repeats):
                sides = [
                    (
                        raw_times,
                        lambda s=shard: raw_steps(raw_env, raw_policy, config, args.seed, s),
                    ),
                    (collect_times, lambda s=shard: worker.run_shard(s).rows),
                ]
                for times, run in sides[:: 1 if repeat % 2 else -1]:
                    times.append(timed(run))
            steps, raw_best = raw_times[0][0], min(t for _, t in raw_times)
            captions, collect_best = collect_times[0][0], min(t for _, t in collect_times)
            raw_rate, collect_rate = steps / raw_best, captions / collect_best
            ratios.append(collect_rate / raw_rate)
            raw_median = statistics.median(t for _, t in raw_times)
            collect_median = statistics.median(t for _, t in collect_times)
            medians.append((captions / collect_median) / (steps / raw_median))
            totals = [totals[0] + steps, totals[1] + raw_best, totals[2] + captions,
                      totals[3] + collect_best]  # fmt: skip
            print(
                f"shard {shard}: {steps} steps, raw {raw_rate:6.0f} steps/s | "
                f"{captions} captions, collection {collect_rate:6.0f} captions/s | "
                f"ratio {ratios[-1]:.3f} (of medians {medians[-1]:.3f})"
            )

    steps, raw_seconds, captions, collect_seconds = totals
    ratio = (captions / collect_seconds) / (steps / raw_seconds)
    print(
        f"\ntask {config.task}, {args.shards} shards x {config.episodes_per_shard} episodes "
        f"(<= {config.max_episode_steps} steps), fields {', '.join(config.fields)}, "
        f"best of {args.repeats}, wall time on one core"
    )
    print(f"raw NLE:    {steps / raw_seconds:8.0f} steps/s")
    print(f"collection: {captions / collect_seconds:8.0f} captions/s")
    print(
        f"ratio captions/s / raw steps/s: {ratio:.3f}"
        f" (per shard {min(ratios):.3f}-{max(ratios):.3f}; of medians "
        f"{statistics.median(medians):.3f}); goal >= 0.9"
    )


if __name__ == "__main__":
    main()
