"""The NetHack env with MaestroMotif's skill layer, as the agent and its reward see it.

`SkillEnv` wraps an NLE env whose observations hold the agent's keys and the skill code's
(`features.FEATURE_OBSERVATION_KEYS`). On every observation its `SkillController` says which
skill acts; the agent gets its own keys plus:
- `skill`: the index of the acting skill (the agent embeds it as a one-hot beside the
  bottom-line stats, `maestro.rl.agent`);
- `level_change`: the dungeon-level change since the previous observation, clipped to
  [-1, 1] (0 at an episode's start), which the skill reward models read with the message
  (`captions.reward_input`).
With `fixed_skill` the controller is left out and that skill acts throughout (evaluating a
skill on its own). At an episode's end `info` holds `episode_skill_steps` (steps per skill)
and `episode_skill_failures` (failed skill-code calls).

`SkillVectorEnv` is the same layer over a vector of envs, what RLlib's env runners step in
training: one sandbox round trip per step of all its envs (a round trip costs far more than
the calls of short code). The skill code runs in one sandbox per process and code version
(`shared_sandbox`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from nle import nethack

from maestro.envs.nethack import AGENT_OBSERVATION_KEYS
from maestro.llm.sandbox import SkillSandbox, compile_skill_code
from maestro.methods.maestromotif.controller import (
    POLICY,
    PlainSkillFunctions,
    SkillController,
    skill_functions,
)
from maestro.methods.maestromotif.features import FEATURE_OBSERVATION_KEYS

ENV_OBSERVATION_KEYS = tuple(dict.fromkeys([*AGENT_OBSERVATION_KEYS, *FEATURE_OBSERVATION_KEYS]))

_sandboxes: dict[tuple[str, tuple[str, ...]], SkillSandbox] = {}


def shared_sandbox(source: str, functions: Sequence[str]) -> SkillSandbox:
    """This process's sandbox for `source` (compiled once; `SkillCodeError` if refused)."""
    code = compile_skill_code(source, functions)
    key = (code.digest, tuple(functions))
    if key not in _sandboxes:
        _sandboxes[key] = SkillSandbox(code)
    return _sandboxes[key]


def skill_controller(
    skills: Sequence[str],
    skill_code: str,
    policy_code: str | None,
    seed: int,
    sandbox: bool = True,
) -> SkillController:
    """A controller over `skills` running `skill_code` (initiations, terminations and the
    training policy) and, when given, a task's `policy_code` as the policy over skills.
    `sandbox` False runs the code as plain Python (`PlainSkillFunctions`): only for
    measuring what the sandbox costs (bench/maestromotif_skill_code.py)."""
    caller_of = shared_sandbox if sandbox else PlainSkillFunctions
    functions = skill_functions(skills)
    policy_caller = None
    if policy_code is not None:
        functions = tuple(f for f in functions if f != POLICY)
        policy_caller = caller_of(policy_code, (POLICY,))
    caller = caller_of(skill_code, functions)
    return SkillController(skills, caller, seed, policy_caller=policy_caller)


def skill_observation_space(env_space: gym.spaces.Dict, num_skills: int) -> gym.spaces.Dict:
    """What the agent sees of one env: its keys, the acting skill and the level change."""
    spaces = {key: env_space[key] for key in AGENT_OBSERVATION_KEYS}
    spaces["skill"] = gym.spaces.Discrete(num_skills)
    spaces["level_change"] = gym.spaces.Box(-1, 1, shape=(), dtype=np.int8)
    return gym.spaces.Dict(spaces)


class SkillEnv(gym.Wrapper):
    """The skill layer over one NetHack env (module docstring). `controller` chooses the
    skill unless `fixed_skill` (an index into `skills`) is given."""

    def __init__(
        self,
        env: gym.Env,
        skills: Sequence[str],
        controller: SkillController | None,
        fixed_skill: int | None = None,
    ):
        super().__init__(env)
        if (controller is None) == (fixed_skill is None):
            raise ValueError("give a controller or a fixed skill, not both")
        self.skills = tuple(skills)
        self.controller = controller
        self.fixed_skill = fixed_skill
        self.observation_space = skill_observation_space(env.observation_space, len(skills))
        self._depth = 0
        self._steps: Counter = Counter()
        self._failures_before = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        self._steps = Counter()
        self._failures_before = self._failures()
        skill = self.fixed_skill
        if skill is None:
            skill = self.controller.reset(observation, self.env.get_wrapper_attr("policy_seed"))
        self._depth = int(observation["blstats"][nethack.NLE_BL_DEPTH])
        return self._observe(observation, skill, 0), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        skill = self.fixed_skill
        if skill is None:
            skill = self.controller.step(observation)
        depth = int(observation["blstats"][nethack.NLE_BL_DEPTH])
        change, self._depth = int(np.clip(depth - self._depth, -1, 1)), depth
        if terminated or truncated:
            info = {
                **info,
                "episode_skill_steps": dict(self._steps),
                "episode_skill_failures": self._failures() - self._failures_before,
            }
        return self._observe(observation, skill, change), reward, terminated, truncated, info

    def _observe(self, observation: dict[str, np.ndarray], skill: int, change: int):
        self._steps[self.skills[skill]] += 1
        out: dict[str, Any] = {key: observation[key] for key in AGENT_OBSERVATION_KEYS}
        out["skill"] = skill
        out["level_change"] = np.array(change, dtype=np.int8)
        return out

    def _failures(self) -> int:
        return sum(self.controller.failures.values()) if self.controller else 0


class SkillVectorEnv(gym.vector.VectorWrapper):
    """`SkillEnv` for each env of a vector (NetHack envs reset on the step after their
    episode ends, gymnasium's default), their skill-code calls batched into one call to
    `caller` per step; `controllers[i]` decides env i's skill. At an episode's end its
    info holds `episode_skill_failures`."""

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        skills: Sequence[str],
        controllers: Sequence[SkillController],
        caller,
    ):
        super().__init__(env)
        self.skills = tuple(skills)
        self.controllers = list(controllers)
        self.caller = caller
        self.single_observation_space = skill_observation_space(
            env.single_observation_space, len(skills)
        )
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self._depth = np.zeros(self.num_envs, dtype=np.int64)
        self._starts = np.zeros(self.num_envs, dtype=bool)  # envs whose next step is a reset
        self._failures_before = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, *, seed=None, options=None):
        observations, infos = self.env.reset(seed=seed, options=options)
        self._starts[:] = False
        return self._observe(observations, np.ones(self.num_envs, dtype=bool)), infos

    def step(self, actions):
        observations, rewards, terminated, truncated, infos = self.env.step(actions)
        started = self._starts.copy()
        self._starts = np.logical_or(terminated, truncated)
        out = self._observe(observations, started)
        if self._starts.any():
            failures = np.array([sum(c.failures.values()) for c in self.controllers])
            infos = {
                **infos,
                "episode_skill_failures": failures - self._failures_before,
                "_episode_skill_failures": self._starts.copy(),
            }
        return out, rewards, terminated, truncated, infos

    def _observe(self, observations: dict[str, np.ndarray], started: np.ndarray):
        """The agent's observations with each env's skill (its controller's, from one
        batch of calls) and level change; `started[i]`: env i's episode starts here."""
        depth = observations["blstats"][:, nethack.NLE_BL_DEPTH].astype(np.int64)
        change = np.where(started, 0, np.clip(depth - self._depth, -1, 1)).astype(np.int8)
        self._depth = depth
        calls, sizes = [], []
        for i, controller in enumerate(self.controllers):
            single = {key: observations[key][i] for key in FEATURE_OBSERVATION_KEYS}
            if started[i]:
                self._failures_before[i] = sum(controller.failures.values())
                seed = self.env.envs[i].get_wrapper_attr("policy_seed")
                asked = controller.reset_calls(single, seed)
            else:
                asked = controller.step_calls(single)
            calls += asked
            sizes.append(len(asked))
        outcomes = self.caller.call_many(calls) if calls else []
        ends = np.cumsum(sizes)
        skills = np.array(
            [
                controller.answer(outcomes[end - size : end])
                for controller, size, end in zip(self.controllers, sizes, ends, strict=True)
            ],
            dtype=np.int64,
        )
        out = {key: observations[key] for key in AGENT_OBSERVATION_KEYS}
        out["skill"] = skills
        out["level_change"] = change
        return out
