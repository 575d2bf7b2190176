"""A multi-armed Gaussian bandit described in text, for language-model agents (EAST).

The arms are named buttons (or machines). The prompt states the task and the answer
format, lists every past (arm, reward) and ends with `Thought:`, so the agent's answer is
`Thought: ... Action: <arm>`; `parse_action` reads the arm from that text (with or without
the `Thought:` the prompt wrote). An answer that names no arm, or more
than one, is invalid: the turn is lost and counted, never guessed.

An episode's arm means are drawn uniformly from `mean_range` (or fixed by `means`), and a
pull pays its arm's mean plus Gaussian noise of std `noise`, shown with `decimals`
decimals. `opening` writes pulls into the history before the agent's first turn: none;
`honest`, one real pull of every arm; `misleading`, one pull of every arm where the rewards
shown are the arms' means in reversed rank order (the best arm looks worst), which an agent
that does not explore never corrects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WORDINGS = {
    "buttons": (
        "Buttons: {names}. Each press pays a random reward; find the best button and earn "
        "as much as you can. Answer as Thought: ... Action: <button>\n",
        "Press {turn}: {arm}, reward {reward}\n",
    ),
    "machines": (
        "Slot machines: {names}. Each pull pays a random amount; find the best machine and "
        "win as much as you can. Answer as Thought: ... Action: <machine>\n",
        "Pull {turn}: {arm} paid {reward}\n",
    ),
}
ANSWER_START = "Thought:"
Wording = Literal["buttons", "machines"]
Opening = Literal["none", "honest", "misleading"]


class TextBanditConfig(BaseModel):
    """A text bandit: its arms, rewards, length and wording."""

    model_config = ConfigDict(extra="forbid")

    arms: list[str] = Field(default=["blue", "red", "green"], min_length=2)
    means: list[float] | None = Field(
        default=None, description="each arm's mean reward; none: drawn per episode"
    )
    mean_range: tuple[float, float] = (0.0, 1.0)
    noise: float = Field(default=0.1, ge=0, description="std of the reward noise")
    decimals: int = Field(default=1, ge=0, le=6)
    horizon: int = Field(default=10, ge=1, description="the agent's turns per episode")
    opening: Opening = "none"
    wording: Wording = "buttons"

    @field_validator("arms")
    @classmethod
    def _distinct_words(cls, arms: list[str]) -> list[str]:
        for arm in arms:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", arm):
                raise ValueError(f"arm name {arm!r}: one word of letters, digits and hyphens")
        if len({arm.lower() for arm in arms}) != len(arms):
            raise ValueError("arm names must differ (ignoring case)")
        return arms

    @model_validator(mode="after")
    def _check(self) -> TextBanditConfig:
        if self.means is not None and len(self.means) != len(self.arms):
            raise ValueError(f"means: {len(self.means)} values for {len(self.arms)} arms")
        if self.mean_range[0] > self.mean_range[1]:
            raise ValueError("mean_range: low above high")
        return self


@dataclass(frozen=True)
class ParsedAction:
    """What an answer says: the arm acted on (None: invalid, `reason` says why) and the arm
    the thought commits to (the one arm it names; None if it names none or several)."""

    arm: int | None
    thought_arm: int | None
    reason: str

    @property
    def agrees(self) -> bool:
        """Whether the thought committed to the arm the action took."""
        return self.arm is not None and self.thought_arm == self.arm


ACTION = re.compile(r"action\s*:", re.IGNORECASE)
THOUGHT = re.compile(r"thought\s*:", re.IGNORECASE)
# Decoration around a bare arm name that still reads as that name: markdown, quotes,
# brackets, a full stop; and "the <arm> button".
DECORATION = "*_`'\"[](){}<>.!"
ARTICLE = re.compile(r"^the\s+", re.IGNORECASE)
NOUN = re.compile(r"\s+(button|machine)$", re.IGNORECASE)


def parse_action(text: str, arms: list[str]) -> ParsedAction:
    """The arm an answer `Thought: ... Action: <arm>` acts on. The first `Action:` line
    must hold exactly one arm name (any case, decorated at most by markdown, quotes,
    brackets, a full stop, "the ... button"); a later `Action:` naming another arm makes
    the answer ambiguous. Anything else is invalid."""
    names = [arm.lower() for arm in arms]
    markers = list(ACTION.finditer(text))
    end = markers[0].start() if markers else len(text)
    thought_start = THOUGHT.search(text[:end])
    thought_arm = committed_arm(text[thought_start.end() if thought_start else 0 : end], names)
    if not markers:
        return ParsedAction(None, thought_arm, "no action")
    chosen = []
    for marker in markers:
        line = text[marker.end() :].split("\n", 1)[0].strip().strip(DECORATION).strip()
        word = NOUN.sub("", ARTICLE.sub("", line)).strip(DECORATION).lower()
        chosen.append(names.index(word) if word in names else None)
    if chosen[0] is None:
        return ParsedAction(None, thought_arm, "not an arm")
    if any(arm is not None and arm != chosen[0] for arm in chosen[1:]):
        return ParsedAction(None, thought_arm, "several actions")
    return ParsedAction(chosen[0], thought_arm, "action")


def committed_arm(thought: str, names: list[str]) -> int | None:
    """The one arm a thought names (whole words, any case), or None."""
    named = {
        index
        for index, name in enumerate(names)
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", thought, re.IGNORECASE)
    }
    return named.pop() if len(named) == 1 else None


@dataclass
class TextBandit:
    """One episode of a text bandit: the arm means, the history shown, the agent's turns."""

    config: TextBanditConfig
    rng: np.random.Generator
    means: np.ndarray = field(init=False)
    history: list[tuple[int, float]] = field(init=False, default_factory=list)
    turns: int = field(init=False, default=0)
    regret: float = field(init=False, default=0.0)
    invalid: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        cfg = self.config
        if cfg.means is not None:
            self.means = np.array(cfg.means, dtype=float)
        else:
            self.means = self.rng.uniform(*cfg.mean_range, size=len(cfg.arms))
        if cfg.opening == "honest":
            self.history = [(arm, self.pull(arm)) for arm in range(len(cfg.arms))]
        elif cfg.opening == "misleading":
            order = np.argsort(self.means)  # worst first
            shown = np.empty_like(self.means)
            shown[order] = self.means[order[::-1]]
            self.history = [(arm, float(shown[arm])) for arm in range(len(cfg.arms))]

    @property
    def done(self) -> bool:
        return self.turns >= self.config.horizon

    def pull(self, arm: int) -> float:
        """A reward of `arm`, rounded as the prompt shows it."""
        reward = self.means[arm] + self.config.noise * self.rng.standard_normal()
        return round(float(reward), self.config.decimals)

    def prompt(self) -> str:
        """The task, every past pull, and the start of the answer (`Thought:`)."""
        cfg = self.config
        intro, line = WORDINGS[cfg.wording]
        text = intro.format(names=", ".join(cfg.arms))
        for turn, (arm, reward) in enumerate(self.history, start=1):
            shown = f"{reward:.{cfg.decimals}f}"
            text += line.format(turn=turn, arm=cfg.arms[arm], reward=shown)
        return text + ANSWER_START

    def greedy_arms(self) -> set[int]:
        """The arms with the highest mean reward in the history (empty before any pull)."""
        totals: dict[int, list[float]] = {}
        for arm, reward in self.history:
            totals.setdefault(arm, []).append(reward)
        if not totals:
            return set()
        averages = {arm: float(np.mean(rewards)) for arm, rewards in totals.items()}
        best = max(averages.values())
        return {arm for arm, value in averages.items() if value == best}

    def step(self, arm: int | None) -> float | None:
        """Take one turn: pull `arm` and show its reward, or with None (an invalid answer)
        lose the turn, which costs the regret of the worst arm. Returns the reward."""
        best = float(self.means.max())
        self.turns += 1
        if arm is None:
            self.invalid += 1
            self.regret += best - float(self.means.min())
            return None
        reward = self.pull(arm)
        self.history.append((arm, reward))
        self.regret += best - float(self.means[arm])
        return reward
