"""Env steps per second of an N = 5 ensemble, with and without CERL, against a single
agent, in the same run.

Each side is the trial's own loop (`maestro.methods.cerl.train.EnsembleLoop`) on MinAtar
Breakout with one torch thread: acting, storing, one update of every member per
`--train-every` env steps and target syncs, past `learning_starts` so that every timed step
learns. Its rate is the loop's own `perf/env_steps_per_s` over windows of 500 env steps
(the evaluation that ends a window is timed apart; no checkpoints). The sides alternate,
`--rounds` times each; each side's rate is the mean of its windows' rates.

    python bench/cerl_ensemble_speed.py [--steps 3000] [--train-every 1] [--rounds 2]

Reported: the ensemble's rate over the single agent's (what N members cost), and CERL's
over the ensemble's (what the N x N heads cost).
"""

from __future__ import annotations

import argparse

import torch

from maestro.methods.cerl.config import CerlConfig
from maestro.methods.cerl.train import EnsembleLoop

SIDES = {
    "single": {"members": 1},
    "ensemble": {"members": 5},
    "cerl": {"members": 5, "cerl": True},
}
LEARNING_STARTS = 500
WINDOW = 500  # env steps per measured window


def steps_per_second(members: dict, steps: int, train_every: int) -> float:
    """The loop's own `perf/env_steps_per_s` over the windows after the warm-up (each
    window is `WINDOW` env steps; the evaluation that ends it is timed apart)."""
    cfg = CerlConfig(
        env="breakout", env_steps=LEARNING_STARTS + steps, learning_starts=LEARNING_STARTS,
        train_every=train_every, eval_every=WINDOW, eval_episodes=1,
        checkpoint_every=10**9, **members,
    )  # fmt: skip
    logged: list[tuple[int, float]] = []
    loop = EnsembleLoop(cfg, seed=0)
    loop.run(lambda m, step: logged.append((step, m["perf/env_steps_per_s"])), lambda step: None)
    learning = [rate for step, rate in logged if step > LEARNING_STARTS]
    return sum(learning) / len(learning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--train-every", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side, members in SIDES.items():
            rates[side].append(steps_per_second(members, args.steps, args.train_every))
    mean = {side: sum(values) / len(values) for side, values in rates.items()}
    for side, values in rates.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{side:9s} {mean[side]:7.1f} env steps/s ({shown})")
    print(f"ensemble / single: {mean['ensemble'] / mean['single']:.3f}")
    print(f"cerl / ensemble:   {mean['cerl'] / mean['ensemble']:.3f} (the N x N heads' cost)")


if __name__ == "__main__":
    main()
