"""A language-model agent playing text bandits, several episodes side by side.

Every turn, each unfinished episode's prompt is asked `samples` times in one batched
generate call; the first answer is the one the agent acts on, all of them measure the
decision: the entropy of their parsed actions, and whether each thought committed to the
arm its action took. What a turn records is what the trial logs and the steering vector
is built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maestro.envs.text_bandit import TextBandit, TextBanditConfig, parse_action
from maestro.methods.east.steering import action_entropy


@dataclass
class Play:
    """What `play` saw, turn by turn: `entropy`, `agreement` (share of valid answers whose
    thought named their action's arm), `exploratory` (the taken action is not a greedy
    arm; NaN on a first turn with an empty history) and `invalid` (share of answers with
    no valid action), each (turns, episodes); `regret` the cumulative regret (turns,
    episodes); `arms_tried` the distinct arms each episode's agent pulled; `prompts` and
    `prompt_entropy` every prompt asked, in order, with its entropy."""

    entropy: np.ndarray
    agreement: np.ndarray
    exploratory: np.ndarray
    invalid: np.ndarray
    regret: np.ndarray
    arms_tried: np.ndarray
    prompts: list[str] = field(default_factory=list)
    prompt_entropy: list[float] = field(default_factory=list)
    tokens: int = 0  # generated, for throughput


def finite_mean(values) -> float:
    """The mean of the finite values (NaN marks "not measured"), NaN if there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def play(
    generate, env: TextBanditConfig, episodes: int, samples: int, seed: int, tokenizer=None
) -> Play:
    """Play `episodes` episodes of `env` (means and rewards from `seed`) with `generate`,
    a function from prompts to answers (an annotator's `generate`). With `tokenizer`, the
    answers' tokens are counted."""
    rng = np.random.default_rng(seed)
    bandits = [TextBandit(env, rng) for _ in range(episodes)]
    num_arms = len(env.arms)
    shape = (env.horizon, episodes)
    entropy, agreement, exploratory, invalid, regret = (np.full(shape, np.nan) for _ in range(5))
    pulled = [set() for _ in bandits]
    record = Play(entropy, agreement, exploratory, invalid, regret, np.zeros(episodes))
    for turn in range(env.horizon):
        prompts = [bandit.prompt() for bandit in bandits]
        answers = generate([prompt for prompt in prompts for _ in range(samples)])
        if tokenizer is not None:
            record.tokens += sum(
                len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers
            )
        for e, bandit in enumerate(bandits):
            parsed = [parse_action(a, env.arms) for a in answers[e * samples : (e + 1) * samples]]
            valid = [p for p in parsed if p.arm is not None]
            entropy[turn, e] = action_entropy([p.arm for p in parsed], num_arms)
            if valid:
                agreement[turn, e] = np.mean([p.agrees for p in valid])
            invalid[turn, e] = 1 - len(valid) / samples
            record.prompts.append(prompts[e])
            record.prompt_entropy.append(entropy[turn, e])
            arm = parsed[0].arm
            greedy = bandit.greedy_arms()
            if greedy and arm is not None:
                exploratory[turn, e] = arm not in greedy
            if arm is not None:
                pulled[e].add(arm)
            bandit.step(arm)
            regret[turn, e] = bandit.regret
    record.arms_tried = np.array([len(arms) for arms in pulled], dtype=float)
    return record
