"""Skill code in training: env steps/s of MaestroMotif's skill-conditioned APPO training
with the skill code run in the sandbox, against the same training with the same code run
as plain Python (`PlainSkillFunctions`), in one run on the same cores.

Both sides are `maestromotif.train.algorithm_config(...).build_algo()` with
jobs/maestromotif/smoke.yaml's `train:` settings (one env runner of 16 envs, the learner
in the driver), the shipped skill code (jobs/maestromotif/code/skills.py) and five
untrained reward models (what they reward does not change the cost); they differ only in
`env_config["sandbox"]`. Each side is built once and warmed up; the two algorithms live side
by side (the idle one's env runner only finishes the sample requests it holds) and take
turns, `--repeats` each, of about `--seconds` after an untimed iteration
(`nethack_vs_reference.maestro_turn`), the side going first alternating. The best turn of
each side is kept, the medians printed beside it.

    python bench/maestromotif_training.py [--seconds 20] [--repeats 3]

Goal (issue 16): sandboxed / plain >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from maestro.feedback.reward_model import (
    CaptionRewardNet,
    Normalisation,
    RewardModel,
    RewardModelConfig,
)
from maestro.methods.maestromotif.skills import load_skills
from maestro.methods.maestromotif.train import SkillTraining, algorithm_config
from maestro.rl.results import sampled_env_steps
from maestro.runtime import init_ray
from maestro.spec import ResourcesSpec, load_spec
from nethack_vs_reference import maestro_turn

JOBS = Path(__file__).resolve().parents[1] / "jobs" / "maestromotif"


def build(sandbox: bool, how: SkillTraining, config):
    algo_config = algorithm_config("score", config, seed=0, epoch=0, how=how)
    algo_config.env_config["sandbox"] = sandbox
    algo = algo_config.build_algo()
    while sampled_env_steps(algo.train()) == 0:
        pass  # env runners starting
    return algo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed per turn")
    parser.add_argument("--repeats", type=int, default=3, help="turns of each side")
    args = parser.parse_args()

    config = load_spec(JOBS / "smoke.yaml").config.train
    torch.set_num_threads(config.torch_threads or torch.get_num_threads())
    skills = load_skills(JOBS / "skills.yaml")
    how = SkillTraining(
        skills=tuple(skills.names),
        skill_code=(JOBS / "code" / "skills.py").read_text(),
        reward_models=tuple(
            RewardModel(CaptionRewardNet(RewardModelConfig()), Normalisation(0.0, 1.0, 0.0))
            for _ in skills.names
        ),
        thresholds=(0.0,) * len(skills.names),
        intrinsic=load_spec(JOBS / "smoke.yaml").config.intrinsic,
    )
    init_ray(ResourcesSpec(num_cpus=4))  # logical CPUs: two algorithms' env runners
    algos = {"plain": build(False, how, config), "sandboxed": build(True, how, config)}
    best = dict.fromkeys(algos, 0.0)
    rates: dict[str, list[float]] = {side: [] for side in algos}
    try:
        for repeat in range(args.repeats):
            # Each side goes first in every other repeat: a machine that slows down over
            # the run (or a side that leaves work behind) favours neither.
            order = list(algos) if repeat % 2 == 0 else list(reversed(algos))
            for side in order:
                algo = algos[side]
                sampled, trained, timers = maestro_turn(algo, args.seconds)
                print(
                    f"repeat {repeat} {side:9}: {sampled:7.1f} env steps/s "
                    f"(trained {trained:.1f}; {timers})",
                    flush=True,
                )
                best[side] = max(best[side], sampled)
                rates[side].append(sampled)
    finally:
        for algo in algos.values():
            algo.stop()
    medians = {side: statistics.median(rates[side]) for side in algos}
    print(f"best env steps/s: plain {best['plain']:.1f}, sandboxed {best['sandboxed']:.1f}")
    print(f"median env steps/s: plain {medians['plain']:.1f}, sandboxed {medians['sandboxed']:.1f}")
    print(
        f"sandboxed / plain: {best['sandboxed'] / best['plain']:.3f} best, "
        f"{medians['sandboxed'] / medians['plain']:.3f} median  (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
