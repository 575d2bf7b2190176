"""The features MaestroMotif's skill code reads: plain values (bool, int, str, None and tuples
of str) that its initiation and termination functions and its policy over skills get.

`skill_features(observation)` reads these from one NLE observation (NLE 1.3, NetHack 3.6.6;
the keys it needs are `FEATURE_OBSERVATION_KEYS`):
- `depth`: the dungeon depth on the bottom line (1 on the first level).
- `dungeon_number`: which dungeon the level is in, NetHack's `dnum`: 0 the Dungeons of Doom,
  1 Gehennom, 2 the Gnomish Mines, ... (the order of NetHack's dat/dungeon.def).
- `in_mines`: whether that dungeon is the Gnomish Mines.
- `gold`, `hp`, `hp_max`: gold carried, hit points and their maximum.
- `xp_level`: the experience level (1 at the start), not the experience points.
- `hunger`: NetHack's hunger state: 0 satiated, 1 not hungry, 2 hungry, 3 weak, 4 fainting,
  5 fainted, 6 starved.
- `turn`: the game turn (game time; actions that take no time leave it unchanged).
- `message`: the message line, stripped ("" when there is none).
- `altar_visible`: whether an altar is on the map (the map keeps what the hero remembers).
- `shopkeeper_visible`: whether a shopkeeper is shown on the map (seen, detected or
  ridden; a hallucinating hero sees other monsters in their place).
- `inventory_empty`: whether the hero carries nothing.

`SkillController` (controller.py) adds what the skill layer knows:
- `active_skill`: the running skill's name (None before the first skill of an episode).
- `skill_turns`: game turns since the running skill started.
- `skill_start_depth`: `depth` when the running skill started.
- `skill_start_available`: `available` when the running skill started, so that code can
  tell a skill that became available from one that already was.
- `history`: the names of the skills run so far this episode, in order, the running one
  last; a skill started again after it terminated appears again.
- `available`: the names of the skills whose initiation function is True: at this
  observation for the policy over skills, at the previous one for termination functions
  (asked in the same batch as the initiations, controller.py). Initiation functions get
  every feature but this one (they are what decides it).
- `episode_random`: a number in [0, 1) drawn once per episode from its seed, for code that
  chooses at random (it has no random module, and no state across calls).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nle import nethack

from maestro.envs.nethack import caption

FEATURE_OBSERVATION_KEYS: tuple[str, ...] = ("blstats", "message", "glyphs", "inv_glyphs")

# Every feature skill code gets, in the order of the module docstring (and of the code
# prompts, codegen_prompts.yaml).
FEATURE_NAMES: tuple[str, ...] = (
    "depth",
    "dungeon_number",
    "in_mines",
    "gold",
    "hp",
    "hp_max",
    "xp_level",
    "hunger",
    "turn",
    "message",
    "altar_visible",
    "shopkeeper_visible",
    "inventory_empty",
    "active_skill",
    "skill_turns",
    "skill_start_depth",
    "skill_start_available",
    "history",
    "available",
    "episode_random",
)

# The Gnomish Mines' dnum: dungeons are numbered in the order dat/dungeon.def lists them.
GNOMISH_MINES_DNUM = 2
ALTAR_GLYPH = nethack.GLYPH_CMAP_OFF + next(
    index
    for index in range(nethack.MAXPCHARS)
    if nethack.symdef.from_idx(index).explanation == "altar"
)
SHOPKEEPER = next(
    index for index in range(nethack.NUMMONS) if nethack.permonst(index).mname == "shopkeeper"
)


def glyph_table(glyphs: list[int]) -> np.ndarray:
    """A lookup table over every glyph (NO_GLYPH included): True at `glyphs`."""
    table = np.zeros(nethack.MAX_GLYPH + 1, dtype=bool)
    table[glyphs] = True
    return table


# A monster has one glyph per way of being shown: seen, tame, detected, ridden.
SHOPKEEPER_GLYPHS = glyph_table(
    [
        offset + SHOPKEEPER
        for offset in (
            nethack.GLYPH_MON_OFF,
            nethack.GLYPH_PET_OFF,
            nethack.GLYPH_DETECT_OFF,
            nethack.GLYPH_RIDDEN_OFF,
        )
    ]
)


def skill_features(observation: dict[str, np.ndarray]) -> dict[str, Any]:
    """The features of one NLE observation holding `FEATURE_OBSERVATION_KEYS` (see the
    module docstring for each one's meaning)."""
    blstats = observation["blstats"]
    glyphs = observation["glyphs"]
    dungeon_number = int(blstats[nethack.NLE_BL_DNUM])
    return {
        "depth": int(blstats[nethack.NLE_BL_DEPTH]),
        "dungeon_number": dungeon_number,
        "in_mines": dungeon_number == GNOMISH_MINES_DNUM,
        "gold": int(blstats[nethack.NLE_BL_GOLD]),
        "hp": int(blstats[nethack.NLE_BL_HP]),
        "hp_max": int(blstats[nethack.NLE_BL_HPMAX]),
        "xp_level": int(blstats[nethack.NLE_BL_XP]),
        "hunger": int(blstats[nethack.NLE_BL_HUNGER]),
        "turn": int(blstats[nethack.NLE_BL_TIME]),
        "message": caption(observation["message"]),
        "altar_visible": bool((glyphs == ALTAR_GLYPH).any()),
        "shopkeeper_visible": bool(SHOPKEEPER_GLYPHS[glyphs].any()),
        "inventory_empty": bool((observation["inv_glyphs"] == nethack.NO_GLYPH).all()),
    }
