"""Reward model, intrinsic reward and preference store."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from maestro.feedback.intrinsic import IntrinsicReward, IntrinsicRewardConfig, combine
from maestro.feedback.preferences import PreferenceRecord, PreferenceStore
from maestro.feedback.reward_model import RewardModel
from maestro.feedback.reward_training import PairData, RewardTrainingConfig, train_reward_model
from maestro.store import LocalStore

MONSTERS = ["newt", "jackal", "grid bug", "kobold", "sewer rat", "gnome lord", "lichen"]
ITEMS = ["dagger", "apple", "scroll labeled FOO", "gold piece", "ring", "tin"]
# (template, hidden score): the rule the model has to recover from pairs alone.
TEMPLATES = [
    ("You kill the {m}!", 3),
    ("Welcome to experience level {n}.", 4),
    ("You find a hidden passage.", 2),
    ("You see here a {i}.", 1),
    ("You hear some noises in the distance.", 0),
    ("", 0),
    ("The {m} bites!", -1),
    ("It's solid stone.", -2),
    ("You stop. Your little dog is in the way.", -1),
]


def caption(rng) -> tuple[str, int]:
    template, score = TEMPLATES[rng.integers(len(TEMPLATES))]
    text = template.format(m=rng.choice(MONSTERS), i=rng.choice(ITEMS), n=rng.integers(2, 9))
    return text, score


def synthetic_pairs(n: int, seed: int) -> tuple[PairData, list[str]]:
    rng = np.random.default_rng(seed)
    c1, c2, target, ids, seen = [], [], [], [], []
    for k in range(n):
        (a, sa), (b, sb) = caption(rng), caption(rng)
        c1.append(a)
        c2.append(b)
        target.append(1.0 if sa > sb else 0.0 if sb > sa else 0.5)
        ids.append(f"q{k}")
        seen += [a, b]
    return PairData(c1, c2, np.array(target, dtype=np.float32), ids, np.ones(n, np.float32)), seen


def test_reward_model_recovers_a_hidden_preference():
    data, captions = synthetic_pairs(3000, seed=0)
    epochs = []
    model, metrics = train_reward_model(
        data,
        RewardTrainingConfig(epochs=6, model={"buckets": 4096}),
        seed=0,
        on_epoch=lambda e, m: epochs.append(m),
    )
    assert len(epochs) == 6
    assert metrics["val_pairs"] > 400  # the split holds out about a fifth, by question id
    assert metrics["val_accuracy"] > 0.9
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    # The learned order of the templates follows the hidden scores.
    r = model.normalised(
        ["Welcome to experience level 3.", "You kill the newt!", "It's solid stone."]
    )
    assert r[0] > r[2] and r[1] > r[2]
    # Normalised over the captions of the training draws; eps the median of the distinct ones.
    train, _ = data.split(0.2)
    drawn = model.normalised(train.caption_1 + train.caption_2)
    assert np.mean(drawn) == pytest.approx(0.0, abs=1e-3)
    assert np.std(drawn) == pytest.approx(1.0, abs=1e-3)
    distinct = sorted(set(train.caption_1 + train.caption_2))
    assert model.norm.threshold == pytest.approx(np.median(model.normalised(distinct)), abs=1e-6)

    again = RewardModel.from_bytes(model.to_bytes())
    np.testing.assert_allclose(again.normalised(captions[:50]), model.normalised(captions[:50]))
    assert again.norm == model.norm


def test_draw_counts_weigh_in_the_loss():
    """A pair drawn 9 times and the same pair labelled the other way, drawn once: the
    model follows the frequent draws (with equal weights it could not tell them apart)."""
    a, b = "You find a hidden passage.", "You hear some noises."
    target = np.array([1.0, 0.0], np.float32)  # question 1 says a, question 2 says b
    config = RewardTrainingConfig(epochs=40, batch_size=2, validation_fraction=1e-6)
    for weights, winner in (([9.0, 1.0], a), ([1.0, 9.0], b)):
        data = PairData([a, a], [b, b], target, ["q1", "q2"], np.array(weights, np.float32))
        model, metrics = train_reward_model(data, config, seed=0)
        assert metrics["train_draws"] == 10
        r_a, r_b = model.raw([a, b])
        assert (r_a > r_b) == (winner == a)


def test_split_is_by_pair_and_stable():
    data, _ = synthetic_pairs(500, seed=1)
    train, valid = data.split(0.2)
    assert not set(train.question_id) & set(valid.question_id)
    assert len(train) + len(valid) == 500
    assert data.split(0.2)[1].question_id == valid.question_id


def test_intrinsic_reward_by_hand():
    calls = []

    def normalised(captions):
        calls.append(list(captions))
        return np.array([{"good": 2.0, "meh": 0.5, "bad": -1.0}[c] for c in captions])

    reward = IntrinsicReward(normalised, threshold=0.6, beta=3.0)
    counts = Counter()
    out = reward.episode_rewards(["good", "meh", "good", "bad", "good"], counts)
    # good: 2/1^3, meh: below eps -> 0, good again: 2/2^3, bad -> 0, good: 2/3^3
    np.testing.assert_allclose(out, [2.0, 0.0, 0.25, 0.0, 2.0 / 27])
    assert counts == Counter({"good": 3, "meh": 1, "bad": 1})
    # Counts carry over to the next fragment of the same episode; the cache saves calls.
    np.testing.assert_allclose(reward.episode_rewards(["good"], counts), [2.0 / 64])
    assert sum(len(c) for c in calls) == 3
    # a1 * r_int + a2 * clip(scale * r_env, -clip, clip): 0.5 * 1 + 2 * min(0.1 * 300, 10).
    mix = IntrinsicRewardConfig(coef_intrinsic=0.5, coef_extrinsic=2.0)
    np.testing.assert_allclose(combine([1.0, 2.0], [300.0, -20.0], mix), [20.5, -3.0])
    unclipped = mix.model_copy(update={"extrinsic_clip": None, "extrinsic_scale": 1.0})
    np.testing.assert_allclose(combine([1.0], [300.0], unclipped), [600.5])


def record(qid: str, label) -> PreferenceRecord:
    return PreferenceRecord(qid, "a", "b", label, f"answer {qid}", "m", "v1", 1.0)


def test_preference_store_exactly_once_and_orphan_shards(tmp_path):
    store = LocalStore(tmp_path)
    prefs = PreferenceStore(store, "run/preferences")
    prefs.write_batch(0, [record("q0", 1), record("q1", None)])
    # A crash after a shard is written but before the manifest names it: the shard is not
    # part of the store, and redoing the batch replaces it.
    store.put_bytes(prefs.shard_key(1), b"half-written garbage")
    assert prefs.done_batches() == {0}
    assert prefs.answered_ids() == {"q0", "q1"}
    prefs.write_batch(1, [record("q2", 0), record("q3", 2)])
    table = prefs.read()
    assert table.column("question_id").to_pylist() == ["q0", "q1", "q2", "q3"]
    assert prefs.counts() == {
        "records": 4,
        "valid": 3,
        "invalid": 1,
        "prefer_1": 1,
        "prefer_2": 1,
        "ties": 1,
    }
    assert table.column("raw_answer").to_pylist()[1] == "answer q1"  # raw answers kept
    with pytest.raises(ValueError, match="label must be"):
        record("q9", 3)
