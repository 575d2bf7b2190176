"""Skill-code overhead: env steps/s of a NetHack env loop with MaestroMotif's skill layer
running the shipped skill code (jobs/maestromotif/code/skills.py) in the sandbox, against
the same loop running that code in plain Python (`PlainSkillFunctions`), in one process.

The loop: one env from `maestro.envs.nethack.make_env` with the observation keys the
features need, random actions from a fixed seed, `SkillController.step` on every
observation (`reset` when an episode ends), `--steps` steps. The controller calls every
skill's initiation function and the running skill's termination function on every step
(the policy over skills when a skill stops): with five skills, six calls per step, in one
round trip to the sandbox's worker process (`call_many`). The bare env loop (no features,
no skill code) is timed too. The sides alternate, `--repeats` times; the best of each is
kept (a shared machine only ever adds time), medians beside it.

An env loop with random actions is the strictest case: nothing but NetHack shares the
step's time with the skill code. In training, the agent's forward pass and the learner
share it too, and the issue's goal (>= 0.9) is for training's steps/s.

    python bench/maestromotif_skill_code.py [--steps 20000] [--repeats 3]

Goal (training): sandboxed / plain >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from maestro.envs.nethack import make_env
from maestro.llm.sandbox import SkillSandbox, compile_skill_code
from maestro.methods.maestromotif.controller import (
    PlainSkillFunctions,
    SkillCaller,
    SkillController,
    skill_functions,
)
from maestro.methods.maestromotif.features import FEATURE_OBSERVATION_KEYS

SKILL_CODE = Path(__file__).resolve().parents[1] / "jobs" / "maestromotif" / "code" / "skills.py"
SKILLS = ("discoverer", "descender", "ascender", "worshipper", "merchant")
SEED = 0


def env_loop(steps: int, caller: SkillCaller | None) -> tuple[float, SkillController | None]:
    """Seconds for `steps` random steps of seeded games, with a skill controller on `caller`
    acting on every observation (none if None); and the controller."""
    env = make_env("score", SEED, observation_keys=FEATURE_OBSERVATION_KEYS)
    actions = np.random.default_rng(SEED).integers(env.action_space.n, size=steps)
    controller = None if caller is None else SkillController(SKILLS, caller, SEED)
    try:
        start = time.perf_counter()
        observation, _ = env.reset(seed=SEED)
        if controller is not None:
            controller.reset(observation)
        for action in actions:
            observation, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                observation, _ = env.reset()
                if controller is not None:
                    controller.reset(observation)
            elif controller is not None:
                controller.step(observation)
        return time.perf_counter() - start, controller
    finally:
        env.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each side")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    source = SKILL_CODE.read_text()
    functions = skill_functions(SKILLS)
    plain = PlainSkillFunctions(source, functions)
    timings: dict[str, list[float]] = {"bare env": [], "plain": [], "sandboxed": []}
    with SkillSandbox(compile_skill_code(source, functions)) as sandbox:
        sandbox.call("initiation_discoverer", {})  # untimed: the worker's start
        for repeat in range(args.repeats):
            for side, caller in (("bare env", None), ("plain", plain), ("sandboxed", sandbox)):
                seconds, controller = env_loop(args.steps, caller)
                timings[side].append(args.steps / seconds)
                if controller is not None and controller.failures:
                    raise RuntimeError(f"the shipped code failed: {controller.failure_reasons}")
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{side} {rates[-1]:,.0f}" for side, rates in timings.items())
                + " steps/s",
                flush=True,
            )
    usage = controller.usage
    print(f"{args.steps} steps per timing; skill usage in the last: {dict(usage)}")
    for side, rates in timings.items():
        print(f"{side:>9}: best {max(rates):,.0f} steps/s (median {statistics.median(rates):,.0f})")
    per_step_us = 1e6 * (1 / max(timings["sandboxed"]) - 1 / max(timings["plain"]))
    ratio = max(timings["sandboxed"]) / max(timings["plain"])
    print(f"sandbox cost: {per_step_us:.0f} us per step ({len(SKILLS) + 1} calls or more)")
    print(f"ratio sandboxed / plain: {ratio:.3f} (goal for training: >= 0.9)")
    print(f"ratio plain / bare env: {max(timings['plain']) / max(timings['bare env']):.3f}")


if __name__ == "__main__":
    main()
