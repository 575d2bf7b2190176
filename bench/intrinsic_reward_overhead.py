"""Intrinsic-reward overhead: env steps/s of NetHack training with Motif's intrinsic reward
against the same training without it, in one run on the same cores.

Both sides are the same RLlib APPO setup (the smoke agent, one env runner, a local
learner); the only difference is the learner connector that computes r_int from the
reward model (the default, full-size caption model) and rewrites the rewards. The sides
alternate, each repeat trains a fresh algorithm for a few iterations after a warm-up
iteration, and the best and median env steps/s of each side are compared (the machine may
be shared: the best is the closest estimate of an undisturbed run). The connector's own
time is printed too: its share of the learner's wall time is what the reward costs where
the learner is the bottleneck.

    python bench/intrinsic_reward_overhead.py [--repeats 3] [--iterations 4]

Goal: with / without >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from maestro.methods.motif.train import TrainingConfig, algorithm_config
from maestro.rl.results import learner_stats, sampled_env_steps
from maestro.runtime import init_ray
from maestro.spec import ResourcesSpec


def reward_model():
    """A full-size caption reward model (untrained weights cost the same to evaluate),
    normalised so about half of the captions pass the threshold, as with Motif's median
    threshold."""
    import torch

    from maestro.methods.motif.intrinsic import IntrinsicRewardConfig
    from maestro.methods.motif.reward_model import (
        CaptionRewardNet,
        Normalisation,
        RewardModel,
        RewardModelConfig,
    )

    torch.manual_seed(0)
    model = RewardModel(CaptionRewardNet(RewardModelConfig()), Normalisation(0.0, 1.0, 0.0))
    return model, IntrinsicRewardConfig(coef_intrinsic=0.1, coef_extrinsic=0.1, beta=3.0)


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
    import torch

    torch.set_num_threads(1)
    from maestro.methods.motif.intrinsic_connector import learner_settings

    model, intrinsic = reward_model()
    settings = learner_settings(
        model, intrinsic.coef_intrinsic, intrinsic.coef_extrinsic, intrinsic.beta
    )
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
