"""MaestroMotif's five skills, written by hand in the format of the code a language model
writes (platform/maestro/methods/maestromotif/sandbox.py says what the code may contain;
features.py what the features mean): the initiation and termination functions the paper's
official code gives each skill, and its training policy over skills.

This file is data the method reads and runs in the sandbox, not a module to import.
"""

# Skills that interrupt any other skill when they become available.
INTERRUPTING_SKILLS = ("merchant", "worshipper")
DISCOVERER_TURNS = 500
MERCHANT_TURNS = 10000
WORSHIPPER_TURNS = 10000
# The training policy descends to a depth drawn per episode from 2, 3 or 4.
LOWEST_TARGET_DEPTH = 2
TARGET_DEPTHS = 3


def interrupted(features):
    """Whether merchant or worshipper became available since the running skill started
    (and is not the running skill)."""
    for skill in INTERRUPTING_SKILLS:
        if (
            skill != features["active_skill"]
            and skill in features["available"]
            and skill not in features["skill_start_available"]
        ):
            return True
    return False


def initiation_discoverer(features):
    return True


def initiation_descender(features):
    return True


def initiation_ascender(features):
    return True


def initiation_merchant(features):
    return features["shopkeeper_visible"] and not features["inventory_empty"]


def initiation_worshipper(features):
    return features["altar_visible"] and not features["inventory_empty"]


def termination_discoverer(features):
    return features["skill_turns"] >= DISCOVERER_TURNS or interrupted(features)


def termination_descender(features):
    return features["depth"] != features["skill_start_depth"] or interrupted(features)


def termination_ascender(features):
    return features["depth"] != features["skill_start_depth"] or interrupted(features)


def termination_merchant(features):
    return features["skill_turns"] >= MERCHANT_TURNS or interrupted(features)


def termination_worshipper(features):
    return features["skill_turns"] >= WORSHIPPER_TURNS or interrupted(features)


def target_depth(features):
    return LOWEST_TARGET_DEPTH + int(features["episode_random"] * TARGET_DEPTHS)


def policy(features):
    """Training: merchant or worshipper whenever one is available and not the skill that
    just stopped; otherwise explore each level, then descend, until the episode's target
    depth; then ascend level by level back to depth 1, and explore there.

    The paper's policy also picks the Gnomish Mines or the main dungeon at random; here the
    descender takes whichever way down it finds (the features do not say where the Mines'
    staircase is).
    """
    active = features["active_skill"]
    for skill in INTERRUPTING_SKILLS:
        if skill in features["available"] and skill != active:
            return skill
    depth = features["depth"]
    if "ascender" in features["history"] or depth >= target_depth(features):
        if depth > 1:
            return "ascender"
        return "discoverer"
    if active == "discoverer":
        return "descender"
    return "discoverer"
