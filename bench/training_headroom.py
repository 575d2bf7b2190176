"""Training headroom: env steps/s of the NetHack training loop against raw NLE steps/s
on the same cores, in one run.

Raw: as many processes as the training uses (the driver with its learner, plus each env
runner) each step a bare NLE env of the task with random actions, nothing else, for a
fixed time; their steps add up. Training: Motif's RLlib APPO loop (the smoke agent, the
quickstart's Sample Factory loss, the intrinsic reward on, one env runner per remaining
core) over the same cores. The ratio is the share of NetHack's own speed that the training
loop reaches: the rest is the headroom left to the agent's forward passes, RLlib's
connectors and the learner.

    python bench/training_headroom.py [--seconds 30] [--iterations 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np


def raw_steps(args: tuple[str, int, float, int]) -> int:
    """Steps one process takes on a bare env in `seconds` (random actions)."""
    task, seed, seconds, max_episode_steps = args
    from maestro.envs.nethack import make_raw_env

    env = make_raw_env(task, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    steps, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for action in rng.integers(env.action_space.n, size=100):
            _, _, terminated, truncated, _ = env.step(int(action))
            steps += 1
            if terminated or truncated:
                env.reset()
    env.close()
    return steps


def raw_steps_per_s(task: str, processes: int, seconds: float, max_episode_steps: int) -> float:
    """Aggregate raw NLE steps/s of `processes` processes in parallel."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        start = time.perf_counter()
        counts = pool.map(
            raw_steps, [(task, i, seconds, max_episode_steps) for i in range(processes)]
        )
        elapsed = time.perf_counter() - start
    return sum(counts) / max(elapsed, seconds)


def training_steps_per_s(task: str, env_runners: int, iterations: int, num_envs: int) -> float:
    """Env steps/s of the APPO training loop with the intrinsic reward (after warm-up)."""
    import torch

    from maestro.feedback.intrinsic import IntrinsicRewardConfig
    from maestro.feedback.intrinsic_connector import learner_settings
    from maestro.feedback.reward_model import (
        CaptionRewardNet,
        Normalisation,
        RewardModel,
        RewardModelConfig,
    )
    from maestro.rl.results import sampled_env_steps
    from maestro.rl.training import TrainingConfig, algorithm_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RewardModel(CaptionRewardNet(RewardModelConfig()), Normalisation(0.0, 1.0, 0.0))
    config = TrainingConfig(
        algorithm="appo",
        appo_loss="sample_factory",
        num_env_runners=env_runners,
        num_envs_per_env_runner=num_envs,
        max_episode_steps=1000,
        min_iteration_seconds=10,
        torch_threads=1,
    )
    settings = learner_settings(model, IntrinsicRewardConfig(coef_extrinsic=0.1))
    algo = algorithm_config(task, config, seed=0, epoch=0, settings=settings).build_algo()
    try:
        while sampled_env_steps(algo.train()) == 0:
            pass  # env runners starting
        steps, start = 0, time.perf_counter()
        for _ in range(iterations):
            steps += sampled_env_steps(algo.train())
        return steps / (time.perf_counter() - start)
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="score")
    parser.add_argument("--cores", type=int, default=2, help="driver + env runners")
    parser.add_argument("--seconds", type=float, default=30.0, help="raw measurement")
    parser.add_argument("--iterations", type=int, default=4, help="training iterations")
    parser.add_argument("--num-envs", type=int, default=16, help="envs per env runner")
    args = parser.parse_args()

    raw = raw_steps_per_s(args.task, args.cores, args.seconds, 1000)
    print(f"raw NLE: {raw:.0f} steps/s on {args.cores} processes", flush=True)

    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec

    init_ray(ResourcesSpec(num_cpus=args.cores))
    training = training_steps_per_s(args.task, args.cores - 1, args.iterations, args.num_envs)
    print(f"training (APPO, intrinsic reward): {training:.0f} env steps/s")
    print(f"training / raw: {training / raw:.3f}")


if __name__ == "__main__":
    main()
