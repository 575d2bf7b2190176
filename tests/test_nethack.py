"""NetHack envs on real NLE: captions, task success, determinism, vector envs."""

from __future__ import annotations

import numpy as np
import pytest
from nle import nethack

from maestro.envs.nethack import (
    AGENT_OBSERVATION_KEYS,
    TASKS,
    caption,
    captions,
    get_task,
    hallucinating,
    make_env,
    make_raw_env,
    make_vector_env,
    reached_depth,
)

WELCOME = "Hello Agent, welcome to NetHack!  You are a neutral male human Monk."


def play(env, actions, seed):
    """Observations of one seeded episode under `actions` (stops when it ends)."""
    observation, _ = env.reset(seed=seed)
    seen = [observation]
    for action in actions:
        observation, _, terminated, truncated, _ = env.step(int(action))
        seen.append(observation)
        if terminated or truncated:
            break
    return seen


def test_every_task_builds_and_starts_with_the_welcome_caption():
    for name, task in TASKS.items():
        env = make_env(name, seed=0)
        try:
            observation, _ = env.reset(seed=0)
            assert set(observation) == set(AGENT_OBSERVATION_KEYS)
            assert caption(observation["message"]) == WELCOME
            assert task.goal and task.preference in ("score", "descend")
        finally:
            env.close()
    assert get_task("staircase_lvl4").env_kwargs == (("target_depth", 4),)
    with pytest.raises(KeyError, match="known: score"):
        get_task("sokoban")


def test_caption_extraction():
    env = make_env("score", seed=7)
    try:
        seen = play(env, np.zeros(0), seed=7)
        message = seen[0]["message"]
        assert message.shape == (256,) and message.dtype == np.uint8
        assert caption(message) == WELCOME
        assert caption(message.tobytes()) == WELCOME
        # Bytes after the terminating NUL are not part of the caption; whitespace is stripped.
        assert caption(b"  You kill the newt!  \0garbage") == "You kill the newt!"
        assert caption(np.zeros(256, np.uint8)) == ""
        assert captions(np.stack([message, np.zeros(256, np.uint8)])) == [WELCOME, ""]
        # A short random walk: empty captions and game messages.
        walk = np.random.default_rng(7).integers(env.action_space.n, size=200)
        texts = [caption(o["message"]) for o in play(env, walk, seed=7)]
        assert "" in texts and len(set(texts) - {"", WELCOME}) >= 2
    finally:
        env.close()


def status_with(env, blstats=None, glyphs=None):
    """The task's verdict on its current real observation, with fields replaced."""
    raw = env.unwrapped
    observation = [a.copy() for a in raw.last_observation]
    if blstats is not None:
        observation[raw._blstats_index] = blstats
    if glyphs is not None:
        observation[raw._glyph_index] = glyphs
    return raw._is_episode_end(tuple(observation))


@pytest.mark.parametrize(
    "task,target", [("staircase", 2), ("staircase_lvl3", 3), ("staircase_lvl4", 4)]
)
def test_depth_tasks_succeed_on_reaching_their_level(task, target):
    env = make_env(task, seed=1)
    try:
        env.reset(seed=1)
        raw = env.unwrapped
        blstats = raw.last_observation[raw._blstats_index].copy()
        assert blstats[nethack.NLE_BL_DEPTH] == 1
        assert status_with(env) == raw.StepStatus.RUNNING
        for depth in range(1, 6):
            changed = blstats.copy()
            changed[nethack.NLE_BL_DEPTH] = depth
            expected = raw.StepStatus.TASK_SUCCESSFUL if depth >= target else 0
            assert status_with(env, blstats=changed) == expected
            assert reached_depth(changed, target) == (depth >= target)
    finally:
        env.close()


def test_oracle_sober_counts_only_when_sober():
    env = make_env("oracle_sober", seed=2)
    try:
        env.reset(seed=2)
        raw = env.unwrapped
        blstats = raw.last_observation[raw._blstats_index].copy()
        glyphs = raw.last_observation[raw._glyph_index].copy()
        x, y = int(blstats[nethack.NLE_BL_X]), int(blstats[nethack.NLE_BL_Y])
        assert status_with(env) == raw.StepStatus.RUNNING
        glyphs[y, x + 1] = raw.oracle_glyph
        assert status_with(env, glyphs=glyphs) == raw.StepStatus.TASK_SUCCESSFUL
        high = blstats.copy()
        high[nethack.NLE_BL_CONDITION] |= nethack.BL_MASK_HALLU | nethack.BL_MASK_CONF
        assert hallucinating(high) and not hallucinating(blstats)
        assert status_with(env, blstats=high, glyphs=glyphs) == raw.StepStatus.RUNNING
    finally:
        env.close()
    env = make_env("oracle", seed=2)  # the plain task counts a hallucinated Oracle too
    try:
        env.reset(seed=2)
        assert status_with(env, blstats=high, glyphs=glyphs) == raw.StepStatus.TASK_SUCCESSFUL
    finally:
        env.close()


def test_seeded_envs_replay_the_same_games():
    first, second = (make_env("score", max_episode_steps=120) for _ in range(2))
    actions = np.random.default_rng(0).integers(first.action_space.n, size=300)
    try:
        a = play(first, actions, seed=11)
        b = play(second, actions, seed=11)
        n = min(len(a), len(b))
        assert n > 50
        for x, y in zip(a[:n], b[:n], strict=True):
            for key in AGENT_OBSERVATION_KEYS:
                np.testing.assert_array_equal(x[key], y[key])
        # The next episode (no seed given) is the same on both, and differs from the first.
        c, d = first.reset()[0], second.reset()[0]
        np.testing.assert_array_equal(c["tty_chars"], d["tty_chars"])
        assert not np.array_equal(c["tty_chars"], a[0]["tty_chars"])
        # Observations are the caller's: later steps do not overwrite them.
        kept = c["tty_chars"].copy()
        first.step(1)
        np.testing.assert_array_equal(c["tty_chars"], kept)
    finally:
        first.close()
        second.close()


def test_vector_env_resets_finished_episodes_and_keeps_their_last_observation():
    steps = 12
    vector = make_vector_env("score", num_envs=2, max_episode_steps=steps)
    singles = [make_env("score", max_episode_steps=steps) for _ in range(2)]
    actions = np.random.default_rng(3).integers(vector.single_action_space.n, size=(steps, 2))
    try:
        observations, _ = vector.reset(seed=5)
        assert observations["tty_chars"].shape == (2, 24, 80)
        assert captions(observations["message"]) == [WELCOME, WELCOME]
        for step in range(steps):
            observations, _, terminated, truncated, info = vector.step(actions[step])
        assert (terminated | truncated).all()
        for i, single in enumerate(singles):
            replay = play(single, actions[:, i], seed=5 + i)
            assert len(replay) == steps + 1
            final = info["final_obs"][i]
            for key in AGENT_OBSERVATION_KEYS:
                np.testing.assert_array_equal(final[key], replay[-1][key])
            # Auto-reset: the vector already shows env i's next episode.
            following, _ = single.reset()
            np.testing.assert_array_equal(observations["tty_chars"][i], following["tty_chars"])
    finally:
        vector.close()
        for single in singles:
            single.close()


def test_raw_env_reports_an_abort_at_the_step_limit():
    env = make_raw_env("score", max_episode_steps=5)
    try:
        env.seed(1, 2, reseed=False)
        env.reset()
        ends = [env.step(0)[4]["end_status"] for _ in range(5)]
        assert ends[:4] == [0, 0, 0, 0] and ends[4] == env.StepStatus.ABORTED
    finally:
        env.close()


@pytest.mark.parametrize("task", ["staircase", "staircase_lvl3", "oracle", "oracle_sober"])
def test_sparse_tasks_pay_fifty_on_success_and_nothing_per_step(task):
    """Motif's sparse tasks: 50 on the step that succeeds, 0 on every other step, where
    NLE's own staircase task charges the steps on which game time stands still."""
    from nle.env import tasks as nle_tasks

    walk = np.random.default_rng(3).integers(20, size=300)
    env, nle_env = make_env(task, seed=3), nle_tasks.NetHackStaircase()
    try:
        rewards, nle_rewards = [], []
        for game, out in ((env, rewards), (nle_env, nle_rewards)):
            game.reset(seed=3)
            for action in walk:
                _, reward, terminated, truncated, _ = game.step(int(action))
                out.append(reward)
                if terminated or truncated:
                    break
        assert min(nle_rewards) < 0, "the walk must stand still somewhere for this to bite"
        assert rewards == [0.0] * len(rewards)
        raw = env.unwrapped
        seen = raw.last_observation
        assert raw._reward_fn(seen, 0, seen, raw.StepStatus.TASK_SUCCESSFUL) == 50.0
        assert raw._reward_fn(seen, 0, seen, raw.StepStatus.RUNNING) == 0.0
    finally:
        env.close()
        nle_env.close()


def test_continual_staircase_goes_on_past_its_depth_and_pays_nothing():
    env = make_env("staircase_lvl3_continual", seed=1)
    try:
        env.reset(seed=1)
        raw = env.unwrapped
        deep = raw.last_observation[raw._blstats_index].copy()
        deep[nethack.NLE_BL_DEPTH] = 5
        assert status_with(env, blstats=deep) == raw.StepStatus.RUNNING
        seen = raw.last_observation
        assert raw._reward_fn(seen, 0, seen, raw.StepStatus.TASK_SUCCESSFUL) == 0.0
    finally:
        env.close()
