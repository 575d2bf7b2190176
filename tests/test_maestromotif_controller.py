"""MaestroMotif's skill layer: features read from real NetHack games, the shipped skill code
(jobs/maestromotif/code) against the paper's rules, and the controller over real envs, in
the sandbox and in plain Python, with code that fails."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from nle import nethack

from maestro.envs.nethack import make_env
from maestro.llm.sandbox import (
    SkillSandbox,
    check_plain,
    compile_skill_code,
)
from maestro.methods.maestromotif.codegen import GAME_START
from maestro.methods.maestromotif.controller import (
    PlainSkillFunctions,
    SkillController,
    skill_functions,
)
from maestro.methods.maestromotif.features import (
    ALTAR_GLYPH,
    FEATURE_OBSERVATION_KEYS,
    SHOPKEEPER,
    skill_features,
)

CODE = Path(__file__).resolve().parents[1] / "jobs" / "maestromotif" / "code"
SKILLS = ("discoverer", "descender", "ascender", "worshipper", "merchant")
TASKS = ("gnomish_mines",)
WELCOME = "Hello Agent, welcome to NetHack!  You are a neutral male human Monk."


def skills_source() -> str:
    return (CODE / "skills.py").read_text()


def task_source(task: str) -> str:
    return (CODE / "tasks" / f"{task}.py").read_text()


def feature_env(seed: int, max_episode_steps: int = 5000):
    return make_env(
        "score",
        seed,
        max_episode_steps=max_episode_steps,
        observation_keys=FEATURE_OBSERVATION_KEYS,
    )


def test_features_of_a_real_game():
    env = feature_env(seed=3)
    try:
        observation, _ = env.reset(seed=3)
        features = skill_features(observation)
        check_plain(features, "features")
        assert features == {
            "depth": 1,
            "dungeon_number": 0,
            "in_mines": False,
            "gold": 0,
            "hp": features["hp_max"],
            "hp_max": features["hp_max"],
            "xp_level": 1,
            "hunger": 1,  # not hungry
            "turn": 1,
            "message": WELCOME,
            "altar_visible": False,
            "shopkeeper_visible": False,
            "inventory_empty": False,
        }
        assert features["hp_max"] > 0
        turns = [features["turn"]]
        actions = np.random.default_rng(3).integers(env.action_space.n, size=300)
        for action in actions:
            observation, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                break
            features = skill_features(observation)
            assert 0 < features["hp"] <= features["hp_max"]
            assert features["depth"] >= 1
            turns.append(features["turn"])
        assert turns == sorted(turns) and turns[-1] > turns[0]
    finally:
        env.close()


def test_altar_shopkeeper_mines_and_inventory_from_glyphs_and_stats():
    env = feature_env(seed=0)
    try:
        observation, _ = env.reset(seed=0)
    finally:
        env.close()
    room = nethack.GLYPH_CMAP_OFF + 19  # S_room
    gnome = [nethack.permonst(i).mname for i in range(nethack.NUMMONS)].index("gnome")

    def with_map(*glyphs: int) -> dict:
        changed = dict(observation)
        changed["glyphs"] = np.full(nethack.DUNGEON_SHAPE, room, dtype=np.int16)
        changed["glyphs"][0, : len(glyphs)] = glyphs
        return skill_features(changed)

    assert not with_map()["altar_visible"] and not with_map()["shopkeeper_visible"]
    assert with_map(ALTAR_GLYPH)["altar_visible"]
    assert not with_map(ALTAR_GLYPH + 1)["altar_visible"]  # a grave
    for offset in (nethack.GLYPH_MON_OFF, nethack.GLYPH_PET_OFF, nethack.GLYPH_DETECT_OFF):
        seen = with_map(offset + SHOPKEEPER)
        assert seen["shopkeeper_visible"] and not seen["altar_visible"]
    assert not with_map(nethack.GLYPH_MON_OFF + gnome)["shopkeeper_visible"]
    # A shopkeeper's corpse or statue is not a shopkeeper.
    assert not with_map(nethack.GLYPH_BODY_OFF + SHOPKEEPER)["shopkeeper_visible"]
    assert not with_map(nethack.GLYPH_STATUE_OFF + SHOPKEEPER)["shopkeeper_visible"]
    assert nethack.glyph_to_mon(nethack.GLYPH_MON_OFF + SHOPKEEPER) == SHOPKEEPER

    blstats = observation["blstats"].copy()
    blstats[nethack.NLE_BL_DNUM] = 2
    mines = skill_features({**observation, "blstats": blstats})
    assert mines["in_mines"] and mines["dungeon_number"] == 2
    empty = np.full_like(observation["inv_glyphs"], nethack.NO_GLYPH)
    assert skill_features({**observation, "inv_glyphs": empty})["inventory_empty"]


def test_shipped_code_compiles():
    skill_code = compile_skill_code(skills_source(), skill_functions(SKILLS))
    assert skill_code.functions[-1] == "policy" and len(skill_code.functions) == 11
    for task in TASKS:
        compile_skill_code(task_source(task), ["policy"])


def features(**changes) -> dict:
    """Hand-built features: a discoverer on depth 1, nothing special in sight."""
    three = ("discoverer", "descender", "ascender")
    base = {
        **GAME_START,
        "turn": 100,
        "active_skill": "discoverer",
        "skill_start_available": three,
        "history": ("discoverer",),
        "available": three,
    }
    assert set(changes) <= set(base)
    return {**base, **changes}


@pytest.fixture(scope="module", params=["plain", "sandbox"])
def callers(request) -> Iterator[dict]:
    """The shipped skill code and task policies, in plain Python or each in a sandbox."""
    sources = {"skills": (skills_source(), skill_functions(SKILLS))}
    sources.update({task: (task_source(task), ["policy"]) for task in TASKS})
    if request.param == "plain":
        yield {name: PlainSkillFunctions(*source) for name, source in sources.items()}
        return
    sandboxes = {
        name: SkillSandbox(compile_skill_code(*source)) for name, source in sources.items()
    }
    yield sandboxes
    for sandbox in sandboxes.values():
        sandbox.close()


def test_shipped_initiation_and_termination_follow_the_paper(callers):
    skills = callers["skills"]

    def initiable(skill, **changes):
        return skills.call(f"initiation_{skill}", features(**changes))

    def terminates(skill, **changes):
        return skills.call(f"termination_{skill}", features(active_skill=skill, **changes))

    for skill in ("discoverer", "descender", "ascender"):
        assert initiable(skill) is True
        assert initiable(skill, inventory_empty=True) is True
    for skill, sight in (("merchant", "shopkeeper_visible"), ("worshipper", "altar_visible")):
        assert initiable(skill) is False
        assert initiable(skill, **{sight: True}) is True
        assert initiable(skill, **{sight: True, "inventory_empty": True}) is False
    assert initiable("merchant", altar_visible=True) is False
    assert initiable("worshipper", shopkeeper_visible=True) is False

    assert terminates("discoverer", skill_turns=499) is False
    assert terminates("discoverer", skill_turns=500) is True
    for skill in ("descender", "ascender"):
        assert terminates(skill, skill_turns=5000) is False
        assert terminates(skill, depth=2, skill_start_depth=1) is True
        assert terminates(skill, depth=2, skill_start_depth=3) is True
    for skill in ("merchant", "worshipper"):
        assert terminates(skill, skill_turns=9999) is False
        assert terminates(skill, skill_turns=10000) is True

    # Any skill stops when merchant or worshipper becomes available, unless it is that one.
    merchant_appeared = {
        "available": ("discoverer", "descender", "ascender", "merchant"),
        "skill_start_available": ("discoverer", "descender", "ascender"),
    }
    for skill in ("discoverer", "descender", "ascender", "worshipper"):
        assert terminates(skill, **merchant_appeared) is True
    assert terminates("merchant", **merchant_appeared) is False
    merchant_was_there = {"available": merchant_appeared["available"]}
    merchant_was_there["skill_start_available"] = merchant_was_there["available"]
    assert terminates("discoverer", **merchant_was_there) is False
    altar_appeared = {**merchant_was_there, "available": (*SKILLS[:3], "merchant", "worshipper")}
    assert terminates("merchant", **altar_appeared) is True


def test_shipped_training_policy_explores_descends_to_a_random_depth_and_comes_back(callers):
    skills = callers["skills"]

    def chosen(active, depth, history, episode_random=0.5, **changes):
        return skills.call(
            "policy",
            features(
                active_skill=active,
                depth=depth,
                history=history,
                episode_random=episode_random,
                **changes,
            ),
        )

    # episode_random 0.5: target depth 2 + int(1.5) = 3.
    path = ("discoverer", "descender", "discoverer", "descender")
    assert chosen(None, 1, ()) == "discoverer"
    assert chosen("discoverer", 1, path[:1]) == "descender"
    assert chosen("descender", 2, path[:2]) == "discoverer"
    assert chosen("discoverer", 2, path[:3]) == "descender"
    assert chosen("descender", 3, path) == "ascender"
    assert chosen("ascender", 2, (*path, "ascender")) == "ascender"
    assert chosen("ascender", 1, (*path, "ascender", "ascender")) == "discoverer"
    assert chosen("discoverer", 1, (*path, "ascender", "ascender", "discoverer")) == "discoverer"
    # The target depth is 2, 3 or 4 with episode_random.
    assert chosen("descender", 2, path[:2], episode_random=0.0) == "ascender"
    assert chosen("descender", 3, path, episode_random=0.99) == "discoverer"
    assert chosen("descender", 4, path, episode_random=0.99) == "ascender"
    # Merchant and worshipper first when available, but not again right after they stopped.
    shop = {"available": (*SKILLS[:3], "merchant")}
    assert chosen("discoverer", 1, path[:1], **shop) == "merchant"
    assert chosen("merchant", 1, (*path[:1], "merchant"), **shop) == "discoverer"
    temple = {"available": (*SKILLS[:3], "worshipper", "merchant")}
    assert chosen("merchant", 1, ("merchant",), **temple) == "worshipper"


def test_shipped_task_policies(callers):
    mines = callers["gnomish_mines"]
    assert mines.call("policy", features(active_skill=None, history=())) == "descender"
    assert mines.call("policy", features(depth=3)) == "descender"
    assert mines.call("policy", features(depth=5)) == "ascender"
    assert mines.call("policy", features(depth=3, dungeon_number=2, in_mines=True)) == (
        "discoverer"
    )


def rollout(controller: SkillController, seed: int, steps: int, max_episode_steps: int) -> list:
    """The active skill's index on every observation of `steps` random steps of
    seeded games (a new episode, with its own seed, when one ends)."""
    env = feature_env(seed, max_episode_steps)
    actions = np.random.default_rng(seed).integers(env.action_space.n, size=steps)
    try:
        observation, _ = env.reset(seed=seed)
        active = [controller.reset(observation, seed=seed)]
        for episode_step, action in enumerate(actions):
            observation, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                observation, _ = env.reset()
                active.append(controller.reset(observation, seed=seed + episode_step))
            else:
                active.append(controller.step(observation))
    finally:
        env.close()
    return active


def test_controller_runs_the_same_skills_in_the_sandbox_as_in_plain_python():
    # The shipped code with a short discoverer, so that a few hundred steps switch skills.
    source = skills_source().replace("DISCOVERER_TURNS = 500", "DISCOVERER_TURNS = 20")
    functions = skill_functions(SKILLS)
    plain = SkillController(SKILLS, PlainSkillFunctions(source, functions), seed=0)
    expected = rollout(plain, seed=5, steps=300, max_episode_steps=120)
    with SkillSandbox(compile_skill_code(source, functions)) as sandbox:
        sandboxed = SkillController(SKILLS, sandbox, seed=0)
        assert rollout(sandboxed, seed=5, steps=300, max_episode_steps=120) == expected
    discoverer, descender = SKILLS.index("discoverer"), SKILLS.index("descender")
    assert expected[0] == discoverer and set(expected) == {discoverer, descender}
    # Within an episode the discoverer stops after 20 turns and the descender follows; the
    # random walk never changes depth, so back to the discoverer only at a reset.
    descents = sum(pair == (discoverer, descender) for pair in pairwise(expected))
    assert descents >= 2
    for controller in (plain, sandboxed):
        assert not controller.failures
        assert controller.switches == descents
        assert sum(controller.usage.values()) == 301
        assert controller.usage["descender"] == expected.count(descender)


FAILING_CODE = """
def initiation_discoverer(features):
    return True

def initiation_descender(features):
    return True

def initiation_ascender(features):
    return 1 / 0

def termination_discoverer(features):
    while True:
        pass

def termination_descender(features):
    return features["depth"] / 0 > 1

def termination_ascender(features):
    return True

def policy(features):
    if features["active_skill"] is None:
        return "discoverer"
    if features["active_skill"] == "discoverer":
        return 1
    return "flying"
"""
FAILING_SKILLS = ("discoverer", "descender", "ascender")


@pytest.mark.parametrize("caller", ["plain", "sandbox"])
def test_failing_skill_code_is_counted_and_the_rollout_goes_on(caller):
    functions = skill_functions(FAILING_SKILLS)
    if caller == "plain":
        # Plain Python has no time limit: the endless termination is the sandbox's case.
        source = FAILING_CODE.replace("while True:\n        pass", "return None")
        skill_caller = PlainSkillFunctions(source, functions)
    else:
        skill_caller = SkillSandbox(compile_skill_code(FAILING_CODE, functions), timeout_s=0.05)
    controller = SkillController(
        FAILING_SKILLS, skill_caller, seed=0, max_skill_steps=4, max_failures_per_episode=100
    )
    try:
        active = rollout(controller, seed=1, steps=12, max_episode_steps=1000)
    finally:
        if caller == "sandbox":
            skill_caller.close()
    # The discoverer's termination fails on every step: it runs until the step cap (4), then
    # the policy chooses index 1, the descender. Its termination fails too; at the cap the
    # policy names an unknown skill on every step, and the descender goes on.
    assert active == [0] * 4 + [1] * 9
    assert controller.failures == {
        "termination_discoverer": 4,
        "termination_descender": 8,
        "policy": 5,
        "initiation_ascender": 13,
    }
    assert controller.failure_reasons == {
        "termination_discoverer": (
            "timed out after 0.05 s" if caller == "sandbox" else "returned a NoneType, not a bool"
        ),
        "termination_descender": "ZeroDivisionError: division by zero",
        "policy": "chose 'flying', not an available skill",
        "initiation_ascender": "ZeroDivisionError: division by zero",
    }
    assert controller.switches == 1
    assert controller.usage == {"discoverer": 4, "descender": 9}
