"""Pair sampling and de-duplication, on captions from a real NetHack rollout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from maestro.envs.nethack import caption, make_env
from maestro.feedback.collect import CaptionCounts
from maestro.feedback.pairs import (
    PairSamplingConfig,
    canonical,
    make_question,
    pending,
    question_id,
    sample_pairs,
)


def dataset_of(captions: list[str]) -> CaptionCounts:
    return CaptionCounts.of(Counter(captions))


@pytest.fixture(scope="module")
def nethack_captions() -> CaptionCounts:
    """The captions of 600 random steps of NetHackScore (repeats and empties included)."""
    env = make_env("score", max_episode_steps=600)
    try:
        observation, _ = env.reset(seed=9)
        texts = [caption(observation["message"])]
        for action in np.random.default_rng(9).integers(env.action_space.n, size=600):
            observation, _, terminated, truncated, _ = env.step(int(action))
            texts.append(caption(observation["message"]))
            if terminated or truncated:
                observation, _ = env.reset()
                texts.append(caption(observation["message"]))
    finally:
        env.close()
    counts = Counter(texts)
    assert counts[""] > 50 and 5 < len(counts) < len(texts) / 4
    return dataset_of(texts)


def test_a_pair_and_its_mirror_are_one_question():
    a, b = "You kill the newt!", "It's a wall."
    assert question_id(a, b) == question_id(b, a)
    assert make_question(a, b) == make_question(b, a)
    assert canonical(a, b) == canonical(b, a) == (b, a)
    assert question_id(a, b) != question_id(a, "")
    assert question_id(a, b, "descend/v1") != question_id(a, b, "score/v1")
    # Stable across processes and versions: a fixed hash, not Python's hash().
    assert question_id("", "It's a wall.") == question_id("It's a wall.", "")
    assert len(question_id(a, b)) == 64 and int(question_id(a, b), 16) >= 0


def test_sampling_is_deterministic_and_deduplicated(nethack_captions):
    config = PairSamplingConfig(num_draws=3000)
    sample = sample_pairs(nethack_captions, config, seed=1)
    assert sample_pairs(nethack_captions, config, seed=1) == sample
    assert sample_pairs(nethack_captions, config, seed=2).questions != sample.questions

    ids = [q.id for q in sample.questions]
    assert len(ids) == len(set(ids))
    unordered = [frozenset((q.caption_1, q.caption_2)) for q in sample.questions]
    assert len(unordered) == len(set(unordered)), "a pair and its mirror both asked"
    assert all(q.id == question_id(q.caption_1, q.caption_2) for q in sample.questions)
    # Every draw is a question (identical captions included) or a repeat of one.
    assert sum(q.count for q in sample.questions) == 3000
    assert sample.duplicates == sum(q.count - 1 for q in sample.questions)
    # Captions repeat heavily, so most draws repeat a question.
    assert sample.duplicates > 1000 and len(sample.questions) < 1500
    stats = sample.stats()
    assert stats["pairs/questions"] == len(sample.questions)
    assert stats["pairs/dedup_ratio"] == len(sample.questions) / 3000

    # Presentation order is unrelated to caption order (sorted order would always put the
    # empty caption first).
    first_is_smaller = [q.caption_1 < q.caption_2 for q in sample.questions]
    assert 0.35 < np.mean(first_is_smaller) < 0.65


def test_uniform_draws_follow_caption_frequencies():
    captions = ["a"] * 9 + ["b"]
    sample = sample_pairs(dataset_of(captions), PairSamplingConfig(num_draws=10000), seed=0)
    counts = {q.id: q.count for q in sample.questions}
    assert set(counts) == {question_id("a", "b"), question_id("a", "a"), question_id("b", "b")}
    assert sum(counts.values()) == 10000
    # P(a, a) = 0.81, P(b, b) = 0.01, P(one of each) = 0.18.
    assert abs(sample.identical / 10000 - 0.82) < 0.02
    assert abs(counts[question_id("a", "b")] / 10000 - 0.18) < 0.02
    assert abs(counts[question_id("b", "b")] / 10000 - 0.01) < 0.005
    # Identical captions are ties: never asked.
    assert [canonical(q.caption_1, q.caption_2) for q in pending(sample.questions, [])] == [
        ("a", "b")
    ]


def test_unique_mode_draws_distinct_captions(nethack_captions):
    sample = sample_pairs(
        nethack_captions, PairSamplingConfig(num_draws=20000, mode="unique"), seed=3
    )
    distinct = nethack_captions.captions
    assert sample.identical == 0
    # With many draws every unordered pair of distinct captions shows up.
    assert len(sample.questions) == len(distinct) * (len(distinct) - 1) // 2
    # Every distinct caption is as likely, however often it occurs.
    once = CaptionCounts(distinct, np.ones(len(distinct), np.int64))
    assert sample_pairs(once, PairSamplingConfig(num_draws=20000, mode="unique"), seed=3) == sample
    with pytest.raises(ValueError, match="at least 2 distinct"):
        sample_pairs(dataset_of(["only"] * 5), PairSamplingConfig(mode="unique"), seed=0)


def test_answered_questions_are_never_asked_again(nethack_captions):
    config = PairSamplingConfig(num_draws=2000, namespace="score/v1")
    questions = sample_pairs(nethack_captions, config, seed=5).questions
    answered: set[str] = set()
    asked: list[str] = []
    # Annotate in rounds of 100, resampling each round as a restarted job would.
    while todo := pending(sample_pairs(nethack_captions, config, seed=5).questions, answered):
        batch = todo[:100]
        asked.extend(q.id for q in batch)
        answered.update(q.id for q in batch)
    asked_first = [q for q in questions if not q.identical]
    assert len(asked) == len(set(asked)) == len(asked_first)
    assert pending(questions, answered) == []

    # An answer to a mirrored pair counts as an answer to the pair.
    q = asked_first[0]
    mirrored = question_id(q.caption_2, q.caption_1, "score/v1")
    assert pending(asked_first[:3], {mirrored}) == asked_first[1:3]


def test_one_changed_word_of_the_prompt_file_asks_every_question_afresh(tmp_path, nethack_captions):
    """Question ids carry the digest of the prompt set and the task's preference: the same
    file gives the same ids (its answers are reused), one changed word gives all new ids."""
    from maestro.feedback.stages import question_namespace
    from maestro.llm import load_prompt_set
    from maestro.llm.prompts import prompt_path

    text = prompt_path("motif").read_text()
    same, edited = tmp_path / "same.yaml", tmp_path / "edited.yaml"
    same.write_text(text)
    assert "honest judge" in text
    edited.write_text(text.replace("honest judge", "careful judge"))
    config = PairSamplingConfig(num_draws=500)

    def ids(prompt_file: str, preference: str = "score") -> set[str]:
        pairs = question_namespace(config, load_prompt_set(prompt_file), preference)
        return {q.id for q in sample_pairs(nethack_captions, pairs, seed=1).questions}

    reference = ids("motif")
    assert ids(str(same)) == reference
    assert ids(str(edited)).isdisjoint(reference)
    assert ids("motif", "descend").isdisjoint(reference)
