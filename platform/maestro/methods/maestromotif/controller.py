"""MaestroMotif's skill layer for one env: which skill acts on each observation.

The skill code (written by a language model, or by hand in the same format) defines, for
each skill `s`, `initiation_s(features)` (may `s` start now?) and `termination_s(features)`
(should the running `s` stop now?), and `policy(features)`, the policy over skills, which
returns the name of the skill to start (or its index in the skill order). `skill_functions`
lists them. The features are features.py's: what one observation shows, and what the
controller knows (the running skill, since when, the history, the available skills).

`SkillController.reset(observation)` starts an episode with the skill the policy chooses
among the available ones. `step(observation)` then asks, on every observation, every
initiation function (which skills are available) and the running skill's termination
function, in one batch; when the termination says True, the policy chooses among the
available skills and the chosen one starts (again, if it is the one that stopped). The
termination function sees the skills available at the previous observation (`available`):
asking it in the same batch as the initiations saves a round trip to the sandbox per step,
and a skill that stops because another became available stops one step later. The rules
themselves (a skill stopping when another becomes available, a step budget) are the code's:
the controller only applies what it answers.

A caller is whatever runs the code, with `call(function, features)` and `call_many(calls)`:
a `SkillSandbox` for untrusted code, `PlainSkillFunctions` for trusted code (benchmarks,
tests). A call that fails (`SkillCallFailed`) or answers something that is not a valid
answer (a termination or initiation that is not a bool, a policy naming no available skill)
never stops the rollout; it is counted in `failures` (by function name), its reason kept in
`failure_reasons`, and the controller falls back: a failed initiation means not available;
a failed termination keeps the skill running, until it has run `max_skill_steps` steps; a
failed policy keeps the running skill (at reset: the first available skill, or the first
skill when none is). A function that has failed `max_failures_per_episode` times in an
episode is not called again until the next: it is taken as failing (not counted again),
so code that hangs costs a few time limits per episode, not one per step.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from maestro.llm.sandbox import SkillCallFailed, describe
from maestro.methods.maestromotif.features import skill_features

POLICY = "policy"
# A skill whose termination keeps failing stops after this many steps (an episode's default
# step limit is 5000: longer than any skill the paper's code runs but merchant and
# worshipper, whose 10,000 turns outlast an episode anyway).
MAX_SKILL_STEPS = 1000
MAX_FAILURES_PER_EPISODE = 3


class SkillCaller(Protocol):
    """What runs skill code: `SkillSandbox` or `PlainSkillFunctions`."""

    def call(self, function: str, features: dict[str, Any]) -> Any: ...

    def call_many(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]: ...


def skill_functions(skills: Sequence[str]) -> tuple[str, ...]:
    """The functions skill code for `skills` must define: each skill's initiation and
    termination functions, and `policy`."""
    return (
        *(f"initiation_{skill}" for skill in skills),
        *(f"termination_{skill}" for skill in skills),
        POLICY,
    )


class PlainSkillFunctions:
    """Trusted skill code run in this process with plain `compile` and `exec`: `call` as
    `SkillSandbox.call` (a copy of the features, `SkillCallFailed` with the same one-line
    reason when the code raises), without the sandbox's rules and limits. The module runs
    once, not once per call: the same answers for code that keeps no state, which the
    sandbox's rules ensure."""

    def __init__(self, source: str, functions: Sequence[str]):
        self.functions = tuple(functions)
        self._namespace: dict[str, Any] = {}
        exec(compile(source, "<skill code>", "exec"), self._namespace)
        missing = [name for name in self.functions if not callable(self._namespace.get(name))]
        if missing:
            raise ValueError(f"the skill code does not define {missing}")

    def call(self, function: str, features: dict[str, Any]) -> Any:
        if function not in self.functions:
            raise ValueError(f"{function!r} is not one of {self.functions}")
        try:
            return self._namespace[function](dict(features))
        except Exception as error:
            raise SkillCallFailed(describe(error)) from None

    def call_many(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
        """As `SkillSandbox.call_many`: each result, or the `SkillCallFailed`."""
        outcomes = []
        for function, features in calls:
            try:
                outcomes.append(self.call(function, features))
            except SkillCallFailed as failure:
                outcomes.append(failure)
        return outcomes


class SkillController:
    """The skill layer of one env (module docstring). `skills` are the skill names in the
    order of their indices; `caller` runs the skill code, and `policy_caller` (default:
    `caller`) the policy over skills, for a task's policy kept apart from the skills' code;
    `seed` seeds the episodes' `episode_random` when `reset` gets no seed.

    Measures kept over every episode: `failures` and `failure_reasons` (module docstring),
    `usage` (observations each skill acted on) and `switches` (times the running skill
    changed within an episode)."""

    def __init__(
        self,
        skills: Sequence[str],
        caller: SkillCaller,
        seed: int | None = None,
        *,
        policy_caller: SkillCaller | None = None,
        max_skill_steps: int = MAX_SKILL_STEPS,
        max_failures_per_episode: int = MAX_FAILURES_PER_EPISODE,
    ):
        self.skills = tuple(skills)
        self.caller = caller
        self.policy_caller = caller if policy_caller is None else policy_caller
        self.max_skill_steps = max_skill_steps
        self.max_failures_per_episode = max_failures_per_episode
        self._episode_failures: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.failure_reasons: dict[str, str] = {}
        self.usage: Counter[str] = Counter()
        self.switches = 0
        self._random = random.Random(seed)
        self.episode_random = 0.0
        self.active: str | None = None
        self.history: list[str] = []
        self._skill_steps = 0
        self._start_turn = 0
        self._start_depth = 0
        self._start_available: tuple[str, ...] = ()
        self._available: tuple[str, ...] = ()
        self._pending: tuple[dict[str, Any], list, list[int]] = ({}, [], [])

    def reset(self, observation: dict[str, np.ndarray], seed: int | None = None) -> int:
        """Start an episode at its first observation: `episode_random` drawn from `seed`
        (from the controller's seed if None), the history emptied, the first skill chosen
        by the policy among the available skills. Its index in `skills`."""
        return self.answer(self.caller.call_many(self.reset_calls(observation, seed)))

    def step(self, observation: dict[str, np.ndarray]) -> int:
        """The index in `skills` of the skill that acts on `observation`: the running one,
        or the one the policy chooses when the running one terminates."""
        return self.answer(self.caller.call_many(self.step_calls(observation)))

    # `reset` and `step` in two halves, for a caller that batches the calls of several
    # controllers into one round trip (env.SkillVectorEnv): the calls an observation needs,
    # then the skill that acts, from their outcomes (in the calls' order).

    def reset_calls(
        self, observation: dict[str, np.ndarray], seed: int | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """`reset`'s calls: every initiation."""
        rng = self._random if seed is None else random.Random(seed)
        self.episode_random = rng.random()
        self._episode_failures = Counter()
        self.history = []
        self.active = None
        features = self._features(observation)
        return self._pending_calls(features, self._initiations(features))

    def step_calls(self, observation: dict[str, np.ndarray]) -> list[tuple[str, dict[str, Any]]]:
        """`step`'s calls: every initiation and the running skill's termination."""
        self._skill_steps += 1
        features = self._features(observation)
        termination = (f"termination_{self.active}", features)
        return self._pending_calls(features, [*self._initiations(features), termination])

    def answer(self, outcomes: Sequence[Any]) -> int:
        """The acting skill's index, from the outcomes of the last `reset_calls` or
        `step_calls` (each a result or a `SkillCallFailed`)."""
        features, calls, live = self._pending
        answers: list[bool | None] = [None] * len(calls)
        for index, outcome in zip(live, outcomes, strict=True):
            answers[index] = self._as_bool(calls[index][0], outcome)
        initiations = answers[: len(self.skills)]
        available = tuple(s for s, ok in zip(self.skills, initiations, strict=True) if ok)
        features["available"] = available
        if self.active is None:  # a reset: the policy chooses the first skill
            choice = self._choose(features)
            if choice is None:
                choice = available[0] if available else self.skills[0]
            self._start(choice, features)
        else:
            (terminated,) = answers[len(self.skills) :]
            if terminated is None:
                terminated = self._skill_steps >= self.max_skill_steps
            if terminated:
                choice = self._choose(features)
                if choice is not None:
                    self._start(choice, features)
        self._available = available
        return self._act()

    def _pending_calls(
        self, features: dict[str, Any], calls: list[tuple[str, dict[str, Any]]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The calls of `calls` to make (those of functions not given up on this episode),
        remembering all of them for `answer`."""
        live = [index for index, (function, _) in enumerate(calls) if self._callable(function)]
        self._pending = (features, calls, live)
        return [calls[index] for index in live]

    def _features(self, observation: dict[str, np.ndarray]) -> dict[str, Any]:
        """Every feature of `observation` (features.py) and the controller's, with
        `available` as at the previous observation (what the termination sees)."""
        features = skill_features(observation)
        features.update(
            active_skill=self.active,
            skill_turns=features["turn"] - self._start_turn if self.active else 0,
            skill_start_depth=self._start_depth if self.active else features["depth"],
            skill_start_available=self._start_available if self.active else (),
            history=tuple(self.history),
            episode_random=self.episode_random,
            available=self._available if self.active else (),
        )
        return features

    def _initiations(self, features: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Every skill's initiation call; they do not see `available`, which they decide."""
        asked = {key: value for key, value in features.items() if key != "available"}
        return [(f"initiation_{skill}", asked) for skill in self.skills]

    def _choose(self, features: dict[str, Any]) -> str | None:
        """The available skill the policy chooses; None when it fails or chooses another."""
        if not self._callable(POLICY):
            return None
        try:
            choice = self.policy_caller.call(POLICY, features)
        except SkillCallFailed as failure:
            self._fail(POLICY, failure.reason)
            return None
        if type(choice) is int and 0 <= choice < len(self.skills):
            choice = self.skills[choice]
        if choice not in features["available"]:
            self._fail(POLICY, f"chose {choice!r:.100}, not an available skill")
            return None
        return choice

    def _start(self, skill: str, features: dict[str, Any]) -> None:
        if self.active is not None and skill != self.active:
            self.switches += 1
        self.active = skill
        self.history.append(skill)
        self._skill_steps = 0
        self._start_turn = features["turn"]
        self._start_depth = features["depth"]
        self._start_available = features["available"]

    def _act(self) -> int:
        self.usage[self.active] += 1
        return self.skills.index(self.active)

    def _as_bool(self, function: str, outcome: Any) -> bool | None:
        """The answer of `function` if it is a bool; None (counted) if it failed."""
        if isinstance(outcome, SkillCallFailed):
            self._fail(function, outcome.reason)
            return None
        if type(outcome) is not bool:
            self._fail(function, f"returned a {type(outcome).__name__}, not a bool")
            return None
        return outcome

    def _callable(self, function: str) -> bool:
        """Whether `function` has failed fewer than `max_failures_per_episode` times in
        this episode."""
        return self._episode_failures[function] < self.max_failures_per_episode

    def _fail(self, function: str, reason: str) -> None:
        self.failures[function] += 1
        self._episode_failures[function] += 1
        self.failure_reasons[function] = reason
