"""The same seed gives the same NetHack game whenever it is played.

NetHack takes the game's birthday from the wall clock (`ubirthday`, set by `time()` when a
game starts) and names shopkeepers after it, so two runs of one seed a while apart met
differently named shopkeepers (and, where the name draw falls back on the RNG, can go on
to different games). These tests start the same seeds as if at two times a day apart: the
env's NetHack is given the birthday the clock would have given it, right after NLE starts
the game (nothing reads it before a level below the first is made) and before Maestro
pins it.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os

import numpy as np

from maestro.envs.nethack import (
    caption,
    game_birthday,
    make_env,
    make_raw_env,
    pin_birthday,
)
from maestro.feedback.collect import CollectConfig, RandomPolicy, collect_shard, field_array

# Two wall-clock times a day apart (2023-11-14 22:13:20 UTC and the next day). Played
# unpinned at these times, the games below greet different shopkeepers.
STARTS = (1_700_000_000, 1_700_086_400)


def start_at(env, when: int) -> None:
    """Make every game `env` starts look as if it were started at `when` (seconds since the
    epoch): what NetHack's `time()` would have put in `ubirthday`."""
    nle = env.unwrapped.nethack
    reset = nle.reset

    def reset_at(*args, **kwargs):
        observation = reset(*args, **kwargs)
        pin_birthday(env, when)
        return observation

    nle.reset = reset_at


def birthday(env) -> int:
    """The `ubirthday` of the game `env` is playing."""
    handle = _ctypes.dlopen(env.unwrapped.nethack.dlpath, os.RTLD_NOLOAD | os.RTLD_LAZY)
    try:
        return ctypes.c_long.from_address(_ctypes.dlsym(handle, "ubirthday")).value
    finally:
        _ctypes.dlclose(handle)


def play(seed: int, steps: int, when: int) -> tuple[list[str], bytes]:
    """The captions and screens of the first `steps` steps of `make_env`'s game for `seed`,
    started at `when`, played by the seeded random policy."""
    env = make_env("score", max_episode_steps=steps)
    try:
        start_at(env, when)
        observation, _ = env.reset(seed=seed)
        policy = RandomPolicy(int(env.action_space.n))
        policy.reset(env.policy_seed)
        captions, screens = [caption(observation["message"])], [observation["tty_chars"]]
        for _ in range(steps):
            observation, _, terminated, truncated, _ = env.step(policy.act(observation))
            captions.append(caption(observation["message"]))
            screens.append(observation["tty_chars"])
            if terminated or truncated:
                break
        return captions, np.stack(screens).tobytes()
    finally:
        env.close()


def test_a_seed_replays_the_same_game_at_another_time():
    # Seed 36 enters a general store at step 1870; unpinned, its shopkeeper was Annootok
    # at the first time and Wonotobo a day later.
    (captions, screens), (later_captions, later_screens) = (play(36, 1900, when) for when in STARTS)
    greetings = [c for c in captions if c.startswith('"Hello, Agent!  Welcome to')]
    assert greetings, "the game no longer reaches a shop: pick another seed"
    assert later_captions == captions
    assert later_screens == screens


def test_a_collected_shard_is_the_same_bytes_at_another_time():
    # Shard 6 of seed 0 falls into a liquor emporium on its first step; unpinned, the
    # shopkeeper was Kyzyl at one time and Ossipewsk at another.
    config = CollectConfig(max_episode_steps=200)
    tables = []
    for when in STARTS:
        env = make_raw_env("score", max_episode_steps=200, observation_keys=tuple(config.fields))
        try:
            start_at(env, when)
            policy = RandomPolicy(int(env.action_space.n))
            tables.append(collect_shard(env, policy, config, seed=0, shard=6))
        finally:
            env.close()
    first, later = tables
    assert any("Welcome to" in c for c in first.column("caption").to_pylist()[:3])
    assert later.column("caption").to_pylist() == first.column("caption").to_pylist()
    for name in config.fields:
        np.testing.assert_array_equal(field_array(later, name), field_array(first, name))


def test_the_birthday_comes_from_the_seed():
    env = make_env("score", max_episode_steps=10)
    try:
        birthdays = []
        for seed in (0, 1, 0):  # several resets: the birthday's writer leaves NLE able to reset
            env.reset(seed=seed)
            core = env.unwrapped.get_seeds()[0]
            assert birthday(env) == game_birthday(core)
            birthdays.append(birthday(env))
        # Different games, different birthdays (NetHack varies shopkeepers between games).
        assert birthdays[0] == birthdays[2] != birthdays[1]
    finally:
        env.close()
