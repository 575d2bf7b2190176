"""Intrinsic-reward overhead: env steps/s of NetHack training with Motif's intrinsic reward
against the same training without it, in one run on the same cores.

Both sides are the same RLlib APPO setup (the smoke agent, one env runner, a local
learner); the only difference is the learner connector that computes r_int from the
reward model (the default, full-size caption model, untrained: its weights cost what trained
ones cost to evaluate) and rewrites the rewards. The model is normalised as training
normalises it (`reward_training.normalisation`): mean and std of its outputs over the
captions of pairs drawn from a random-play dataset collected here, eps the median of those
captions' normalised outputs (each distinct caption once). The share of the dataset's
distinct captions, and of its observations, whose reward passes eps (a nonzero r_int) is
printed: measured, not assumed. The sides
alternate, each repeat trains a fresh algorithm for a few iterations after a warm-up
iteration, and the best and median env steps/s of each side are compared (the machine may
be shared: the best is the closest estimate of an undisturbed run). The connector's own
time is printed too: its share of the learner's wall time is what the reward costs where
the learner is the bottleneck.

    python bench/intrinsic_reward_overhead.py [--repeats 3] [--iterations 4] [--shards 2]

Goal: with / without >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from maestro.feedback.collect import CollectConfig, collect, load_caption_counts
from maestro.feedback.intrinsic import IntrinsicRewardConfig
from maestro.feedback.pairs import PairSamplingConfig, sample_pairs
from maestro.feedback.reward_model import (
    CaptionRewardNet,
    Normalisation,
    RewardModel,
    RewardModelConfig,
)
from maestro.feedback.reward_training import PairData, normalisation
from maestro.rl.results import learner_stats, sampled_env_steps
from maestro.rl.training import TrainingConfig, algorithm_config
from maestro.runtime import init_ray
from maestro.spec import ResourcesSpec
from maestro.store import LocalStore


def reward_model(shards: int) -> RewardModel:
    """A full-size caption reward model with untrained weights (they cost what trained ones
    cost to evaluate), normalised as training normalises a trained one, on the captions of a
    random-play dataset of `shards` shards. Prints the share of that dataset's distinct
    captions and of its observations (rows) whose reward passes eps."""
    torch.manual_seed(0)
    model = RewardModel(CaptionRewardNet(RewardModelConfig()), Normalisation(0.0, 1.0, 0.0))
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        collect(store, "dataset", CollectConfig(num_shards=shards, num_actors=1), seed=0)
        captions = load_caption_counts(store, "dataset")
    # The pairs a reward model is trained on: uniform draws over the dataset's rows. Their
    # labels play no part in the normalisation.
    sample = sample_pairs(captions, PairSamplingConfig(num_draws=20_000), seed=0)
    pairs = PairData(
        [q.caption_1 for q in sample.questions],
        [q.caption_2 for q in sample.questions],
        np.zeros(len(sample.questions), dtype=np.float32),
        [q.id for q in sample.questions],
        np.array([q.count for q in sample.questions], dtype=np.float32),
    )
    model.norm = normalisation(model, pairs, quantile=0.5)
    margin = model.normalised(captions.captions) - model.norm.threshold
    distinct_share = float(np.mean(margin >= 0))
    row_share = float(captions.counts[margin >= 0].sum() / captions.rows)
    print(
        f"random-play dataset: {captions.rows} observations, {len(captions.captions)} "
        f"distinct captions; passing eps: {100 * distinct_share:.1f}% of distinct captions, "
        f"{100 * row_share:.1f}% of observations",
        flush=True,
    )
    return model


def measure(config: TrainingConfig, settings: dict | None, iterations: int) -> dict[str, float]:
    """Env steps/s over `iterations` iterations after one warm-up iteration."""
    algo = algorithm_config("score", config, seed=0, epoch=0, settings=settings).build_algo()
    try:
        while sampled_env_steps(algo.train()) == 0:
            pass  # env runners starting
        learner_stats(algo)
        steps, start = 0, time.perf_counter()
        for _ in range(iterations):
            steps += sampled_env_steps(algo.train())
        seconds = time.perf_counter() - start
        shaped = learner_stats(algo)
    finally:
        algo.stop()
    return {
        "steps_per_s": steps / seconds,
        "connector_s": shaped.get("seconds", 0.0),
        "connector_steps": shaped.get("steps", 0.0),
        "wall_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--seconds-per-iteration", type=float, default=10.0)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--shards", type=int, default=2, help="of the normalisation dataset")
    args = parser.parse_args()

    init_ray(ResourcesSpec(num_cpus=2))
    config = TrainingConfig(
        algorithm="appo",
        num_env_runners=1,
        num_envs_per_env_runner=args.num_envs,
        max_episode_steps=1000,
        min_iteration_seconds=args.seconds_per_iteration,
        torch_threads=1,
    )
    torch.set_num_threads(1)
    from maestro.feedback.intrinsic_connector import learner_settings

    model = reward_model(args.shards)
    intrinsic = IntrinsicRewardConfig(coef_intrinsic=0.1, coef_extrinsic=0.1, beta=3.0)
    settings = learner_settings(model, intrinsic)
    sides: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for repeat in range(args.repeats):
        for side in ("without", "with"):
            result = measure(config, settings if side == "with" else None, args.iterations)
            sides[side].append(result)
            print(
                f"repeat {repeat} {side:>7}: {result['steps_per_s']:7.1f} env steps/s"
                f" over {result['wall_s']:.0f}s",
                flush=True,
            )
    best = {side: max(r["steps_per_s"] for r in runs) for side, runs in sides.items()}
    median = {
        side: statistics.median(r["steps_per_s"] for r in runs) for side, runs in sides.items()
    }
    with_runs = sides["with"]
    connector_ms = (
        1e6
        * sum(r["connector_s"] for r in with_runs)
        / max(sum(r["connector_steps"] for r in with_runs), 1)
    )
    share = np.mean([r["connector_s"] / r["wall_s"] for r in with_runs])
    print(f"best   env steps/s: without {best['without']:.1f}, with {best['with']:.1f}")
    print(f"median env steps/s: without {median['without']:.1f}, with {median['with']:.1f}")
    print(f"connector: {connector_ms:.3f} ms per 1000 env steps, {100 * share:.2f}% of wall time")
    print(f"ratio with/without (best):   {best['with'] / best['without']:.3f}  (goal >= 0.9)")
    print(f"ratio with/without (median): {median['with'] / median['without']:.3f}")


if __name__ == "__main__":
    main()
