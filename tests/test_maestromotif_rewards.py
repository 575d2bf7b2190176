"""MaestroMotif's skills file, captions and per-skill reward models (issue 16).

The reward matrix test is the paper's check at test scale: each skill's reward model,
trained on the embedding annotator's preferences for that skill, must rate the moments of
its own skill above the moments of the others. The moments share one pool of real NetHack
messages, so what tells the groups apart is what the captions say changed (the level for
the descender and the ascender)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from nle import nethack

from maestro.feedback.collect import CaptionCounts, fixed_binary
from maestro.feedback.pairs import PairSamplingConfig, sample_pairs
from maestro.feedback.reward_training import (
    PairData,
    RewardTrainingConfig,
    train_reward_model,
)
from maestro.llm import PairQuestion
from maestro.llm.backends import make_annotator
from maestro.methods.maestromotif.captions import (
    Moment,
    level_change,
    moments_of_table,
    reward_input,
    skill_caption,
)
from maestro.methods.maestromotif.rewards import reward_matrix, skill_prompts, skill_thresholds
from maestro.methods.maestromotif.skills import SkillsFileError, load_skills

SKILLS_FILE = "jobs/maestromotif/skills.yaml"
MESSAGES = [
    "",
    "It's a wall.",
    "You hit the newt.",
    "You kill the jackal!",
    "You miss the grid bug.",
    "You see here a dagger.",
    "You find a hidden passage.",
    "There is a doorway here.",
    "The kitten bites!",
    "You see here 4 gold pieces.",
    "You hear some noises in the distance.",
    "Welcome to experience level 2.",
]
FIGHTS = [m for m in MESSAGES if any(w in m for w in ("hit", "kill", "miss", "bites"))]


def moment(message: str = "", depth: int = 1, gold: int = 0, hp: int = 12, xp: int = 1,
           hunger: int = 1) -> Moment:  # fmt: skip
    return Moment(message, depth, gold, hp, xp, hunger)


def test_captions_by_hand() -> None:
    before = moment("You hit the newt.", depth=1, gold=3, hp=12, hunger=1)
    after = moment("You kill the newt!", depth=2, gold=10, hp=9, xp=2, hunger=2)
    assert skill_caption(before, after) == (
        "Message before: You hit the newt. | Message now: You kill the newt! | "
        "You went down, deeper into the dungeon (level 1 to 2). You gained 7 gold. "
        "You lost 3 hit points. Your experience level rose to 2. "
        "Your hunger went from not hungry to hungry."
    )
    assert skill_caption(None, moment()) == (
        "Message before: none | Message now: none | The game starts."
    )
    assert level_change(moment(depth=4), moment(depth=1)) == -1
    assert level_change(moment(depth=1), moment(depth=3)) == 1
    assert level_change(None, moment(depth=3)) == 0
    assert reward_input("You kill the newt!", 1) == "You kill the newt! [went down a level]"
    assert reward_input("", 0) == " [same level]"


def test_moments_of_a_shard_restart_at_each_episode() -> None:
    blstats = np.zeros((4, nethack.BLSTATS_SHAPE[0]), dtype=np.int64)
    blstats[:, nethack.NLE_BL_DEPTH] = [1, 2, 3, 3]
    blstats[:, nethack.NLE_BL_HP] = 10
    blstats[:, nethack.NLE_BL_HUNGER] = 1
    table = pa.table(
        {
            "episode": [0, 0, 1, 1],
            "step": [0, 1, 0, 1],
            "caption": ["", "You hit it.", "", ""],
            "blstats": fixed_binary(blstats),
        }
    ).replace_schema_metadata()
    field = pa.field(
        "blstats", table.schema.field("blstats").type, metadata={
            b"shape": str(nethack.BLSTATS_SHAPE[0]).encode(), b"dtype": b"int64"
        },
    )  # fmt: skip
    table = table.set_column(3, field, table.column("blstats"))
    counts, inputs = moments_of_table(table)
    went_down = (
        "Message before: none | Message now: You hit it. | "
        "You went down, deeper into the dungeon (level 1 to 2)."
    )
    assert counts == {
        "Message before: none | Message now: none | The game starts.": 2,
        "Message before: none | Message now: none | You stayed on the same level.": 1,
        went_down: 1,
    }
    assert inputs[went_down] == "You hit it. [went down a level]"


def test_the_shipped_skills_and_bad_skills_files(tmp_path) -> None:
    skills = load_skills(SKILLS_FILE)
    assert skills.names == ["discoverer", "descender", "ascender", "worshipper", "merchant"]
    assert [s.eps_quantile for s in skills.skills] == [0.95, 0.85, 0.85, 0.85, 0.85]
    prompts = skill_prompts("maestromotif", skills)
    assert prompts.task("descender").modifier == skills.skill("descender").preference
    one = "- {name: a, preference: p, goal: g}\n"
    bad = {
        "repeated": f"skills:\n{one}{one}",
        "Name": "skills:\n- {name: Big, preference: p, goal: g}\n",
        "missing": "skills:\n- {name: a, goal: g}\n",
        "empty": "skills: []\n",
    }  # fmt: skip
    reasons = {}
    for name, text in bad.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        with pytest.raises(SkillsFileError) as error:
            load_skills(path)
        reasons[name] = str(error.value)
    assert "repeated: a" in reasons["repeated"]
    assert "lower-case identifier" in reasons["Name"]
    assert "skills.0.preference: Field required" in reasons["missing"]
    assert "at least 1 item" in reasons["empty"]
    with pytest.raises(SkillsFileError, match="cannot read"):
        load_skills(tmp_path / "absent.yaml")


def synthetic_moments(rng: np.random.Generator, n: int) -> dict[str, list[tuple[Moment, Moment]]]:
    """n moments of each kind: fights on one level, a level down, a level up (messages
    drawn from one pool for the level changes, so only the change tells them apart)."""
    groups: dict[str, list[tuple[Moment, Moment]]] = {
        "discoverer": [],
        "descender": [],
        "ascender": [],
    }
    for _ in range(n):
        depth = int(rng.integers(2, 6))
        before, now = (str(m) for m in rng.choice(MESSAGES, size=2))
        groups["discoverer"].append(
            (
                moment(before, depth),
                moment(str(rng.choice(FIGHTS)), depth, hp=int(rng.integers(8, 12))),
            )
        )
        groups["descender"].append((moment(before, depth), moment(now, depth + 1)))
        groups["ascender"].append((moment(before, depth), moment(now, depth - 1)))
    return groups  # fmt: skip


def test_each_skill_reward_model_prefers_its_own_skill() -> None:
    skills = load_skills(SKILLS_FILE)
    names = ["discoverer", "descender", "ascender"]
    rng = np.random.default_rng(0)
    train, held_out = synthetic_moments(rng, 60), synthetic_moments(rng, 30)
    counts: dict[str, int] = {}
    inputs: dict[str, str] = {}
    for pairs in train.values():
        for before, now in pairs:
            text = skill_caption(before, now)
            counts[text] = counts.get(text, 0) + 1
            inputs[text] = reward_input(now.message, level_change(before, now))
    dataset = CaptionCounts.of(counts)
    judge = make_annotator({"backend": "embedding", "prompt": "maestromotif"})
    prompts = skill_prompts("maestromotif", skills)
    models = {}
    for index, name in enumerate(names):
        questions = sample_pairs(dataset, PairSamplingConfig(num_draws=800), seed=index).questions
        asked = [q for q in questions if not q.identical]
        judgements = judge.judge(
            [PairQuestion(q.caption_1, q.caption_2, prompts.task(name)) for q in asked]
        )
        labelled = [(q, j.label) for q, j in zip(asked, judgements, strict=True)]
        data = PairData(
            [inputs[q.caption_1] for q, _ in labelled],
            [inputs[q.caption_2] for q, _ in labelled],
            np.array([{1: 1.0, 2: 0.0, 0: 0.5}[label] for _, label in labelled], np.float32),
            [q.id for q, _ in labelled],
            np.array([q.count for q, _ in labelled], np.float32),
        )
        config = RewardTrainingConfig(epochs=20, batch_size=64, learning_rate=3e-3)
        models[name], _ = train_reward_model(data, config, seed=0)
    groups = {
        name: [reward_input(now.message, level_change(before, now)) for before, now in pairs]
        for name, pairs in held_out.items()
    }
    matrix = reward_matrix(models, groups)
    print("rows: models, columns: moments of", names, "\n", np.round(matrix, 2))
    for i in range(len(names)):
        others = [matrix[i, j] for j in range(len(names)) if j != i]
        assert matrix[i, i] > max(others), (names[i], matrix[i])
    eps = skill_thresholds(models, skills, list(inputs.values()))
    for name in names:
        rewards = models[name].normalised(sorted(set(inputs.values())))
        assert np.mean(rewards >= eps[name]) == pytest.approx(
            1 - skills.skill(name).eps_quantile, abs=0.1
        )
