"""What MaestroMotif's annotator and reward models read of a moment of play.

A moment is two consecutive observations of an episode, t-1 and t (at t = 0 there is no
previous one: an empty message and no changes). As in the paper:
- the annotator's **caption** holds the previous and the current message and the changes
  in dungeon level, gold, hit points, experience level and hunger between the two, written
  as short sentences (`skill_caption`), so a language model and the embedding annotator
  read them alike;
- a skill's reward model reads the current **message and the dungeon-level change clipped
  to [-1, 1]**; Maestro writes the change as words after the message (`reward_input`), so
  the Motif reward models (`maestro.feedback.reward_model`) read it unchanged.

The reward at step t is that of the moment ending at observation t, the one the agent acts
from (as Motif rewards the caption of the observation the action was taken from).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from nle import nethack

from maestro.feedback.collect import (
    CaptionCounts,
    CollectError,
    field_array,
    manifest_key,
    read_shard,
)
from maestro.store import ArtifactStore

# NetHack's hunger states (u.uhs), as the bottom line shows them.
HUNGER = ("satiated", "not hungry", "hungry", "weak", "fainting", "fainted", "starved")
LEVEL_CHANGE_WORDS = {-1: "went up a level", 0: "same level", 1: "went down a level"}
DATASET_COLUMNS = ["step", "caption", "blstats"]


@dataclass(frozen=True)
class Moment:
    """What a caption says of one observation: its message and bottom-line values."""

    message: str
    depth: int
    gold: int
    hp: int
    xp_level: int
    hunger: int

    @classmethod
    def of(cls, message: str, blstats: np.ndarray) -> Moment:
        return cls(
            message,
            int(blstats[nethack.NLE_BL_DEPTH]),
            int(blstats[nethack.NLE_BL_GOLD]),
            int(blstats[nethack.NLE_BL_HP]),
            int(blstats[nethack.NLE_BL_XP]),
            int(blstats[nethack.NLE_BL_HUNGER]),
        )


def level_change(previous: Moment | None, current: Moment) -> int:
    """The change in dungeon depth clipped to [-1, 1]: 1 deeper, -1 higher, 0 none."""
    if previous is None:
        return 0
    return int(np.clip(current.depth - previous.depth, -1, 1))


def reward_input(message: str, change: int) -> str:
    """A skill reward model's input: the message and the clipped level change."""
    return f"{message} [{LEVEL_CHANGE_WORDS[change]}]"


def hunger_name(state: int) -> str:
    return HUNGER[state] if 0 <= state < len(HUNGER) else f"hunger state {state}"


def changes(previous: Moment, current: Moment) -> list[str]:
    """The changes between two moments as sentences; the first says where the player went
    (a level change, or that there was none: the discoverer's moments say so too)."""
    if current.depth > previous.depth:
        said = [
            f"You went down, deeper into the dungeon (level {previous.depth} to {current.depth})."
        ]
    elif current.depth < previous.depth:
        said = [
            f"You went up, back towards the surface (level {previous.depth} to {current.depth})."
        ]
    else:
        said = ["You stayed on the same level."]
    gold = current.gold - previous.gold
    if gold:
        said.append(f"You {'gained' if gold > 0 else 'lost'} {abs(gold)} gold.")
    hp = current.hp - previous.hp
    if hp:
        said.append(f"You {'gained' if hp > 0 else 'lost'} {abs(hp)} hit points.")
    if current.xp_level != previous.xp_level:
        direction = "rose" if current.xp_level > previous.xp_level else "fell"
        said.append(f"Your experience level {direction} to {current.xp_level}.")
    if current.hunger != previous.hunger:
        said.append(
            f"Your hunger went from {hunger_name(previous.hunger)} to "
            f"{hunger_name(current.hunger)}."
        )
    return said


def skill_caption(previous: Moment | None, current: Moment) -> str:
    """The annotator's caption of the moment ending at `current` (the first of an episode
    says the game starts)."""
    said = changes(previous, current) if previous is not None else ["The game starts."]
    before = previous.message if previous is not None else ""
    return " | ".join(
        [
            f"Message before: {before or 'none'}",
            f"Message now: {current.message or 'none'}",
            " ".join(said),
        ]
    )


@dataclass
class SkillCaptions:
    """A dataset's distinct annotator captions with their counts (what pairs are drawn
    from) and each caption's reward input."""

    counts: CaptionCounts
    reward_inputs: dict[str, str]

    def reward_input_of(self, captions: list[str]) -> list[str]:
        return [self.reward_inputs[c] for c in captions]


def moments_of_table(table: pa.Table) -> tuple[Counter, dict[str, str]]:
    """Caption counts and reward inputs of the rows of one shard (rows in episode order,
    as `maestro.feedback.collect` writes them)."""
    steps = table.column("step").to_numpy()
    messages = table.column("caption").to_pylist()
    blstats = field_array(table, "blstats")
    counts: Counter = Counter()
    inputs: dict[str, str] = {}
    previous: Moment | None = None
    for row, (message, stats) in enumerate(zip(messages, blstats, strict=True)):
        current = Moment.of(message, stats)
        if steps[row] == 0:  # an episode's first observation
            previous = None
        text = skill_caption(previous, current)
        counts[text] += 1
        inputs[text] = reward_input(message, level_change(previous, current))
        previous = current
    return counts, inputs


def load_skill_captions(store: ArtifactStore, dataset: str) -> SkillCaptions:
    """The skill captions of the finished collection under `dataset`, one shard at a time."""
    if not store.exists(manifest_key(dataset)):
        raise CollectError(f"no finished collection at {store.uri(dataset)} (no manifest.json)")
    counts: Counter = Counter()
    inputs: dict[str, str] = {}
    for shard in store.get_json(manifest_key(dataset))["shards"]:
        shard_counts, shard_inputs = moments_of_table(
            read_shard(store, shard["key"], DATASET_COLUMNS)
        )
        counts.update(shard_counts)
        inputs.update(shard_inputs)
    return SkillCaptions(CaptionCounts.of(dict(counts)), inputs)
