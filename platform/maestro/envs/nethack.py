"""NetHack (NLE 1.3) for Motif: the tasks, captions, observation fields, vector envs and
the per-episode measures that training and evaluation report (`EpisodeStats`).

Tasks (`TASKS`, by name):
- `score`: NLE's NetHackScore (reward = in-game score gained).
- `staircase`, `staircase_lvl3`, `staircase_lvl4`: reach dungeon level 2, 3 or 4, as Motif
  defines them. NLE's own NetHackStaircase succeeds when the agent merely stands on a down
  staircase (`internal[4]`), so these are `NetHackDescend`: success when the depth in the
  bottom line (`blstats[NLE_BL_DEPTH]`) reaches the target, rewarded as Motif's sparse
  tasks (`SparseSuccessReward`). Any way down counts (stairs, trap door, hole); Motif's code
  also matches a descend message (docs/methods/motif.md says why Maestro does not).
- `staircase_lvl3_continual`, `staircase_lvl4_continual`: Motif's variants for runs on the
  intrinsic reward alone: the episode goes on past the target depth (it ends at death or
  the step limit), no extrinsic reward; success is having reached the depth.
- `staircase_pet`: NLE's NetHackStaircasePet (on a down staircase with the pet adjacent),
  with NLE's reward: Maestro's own task, not Motif's.
- `oracle`: NLE's NetHackOracle (next to the Oracle), rewarded as Motif's sparse tasks.
- `oracle_sober`: the same, refusing success while hallucinating: Motif found agents that
  hallucinate to "see" the Oracle without reaching it.

Each task carries a natural-language `goal` (what the embedding annotator scores captions
against) and a `preference` (the key of the prompt's task modifier: `score` or `descend`).

Every env is deterministic given its seed, whenever and wherever it runs (`start_game`):
NetHack's core and display RNGs are set from a seed sequence before every reset, with no
reseeding during play (NLE's level-generation RNG is left off: levels come from the core
RNG); the moon phase, Friday the 13th, night and midnight are derived from the seed rather
than the wall clock (NLE's `fix_moon_phase`); and so is the game's birthday, which NetHack
takes from the clock and names its shopkeepers after (`pin_birthday`). A rerun replays the
same games, message for message.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from nle import nethack
from nle.env import tasks as nle_tasks

# What Motif's agent reads (screen, colours, cursor, bottom-line stats, message line).
AGENT_OBSERVATION_KEYS: tuple[str, ...] = (
    "tty_chars",
    "tty_colors",
    "tty_cursor",
    "blstats",
    "message",
)

DEFAULT_MAX_EPISODE_STEPS = 5000
# NLE's task status for success (only its task classes define it, as 2).
TASK_SUCCESSFUL = int(nle_tasks.NetHackStaircase.StepStatus.TASK_SUCCESSFUL)
# What `EpisodeStats` measures of each episode.
EPISODE_FIELDS = ("extrinsic_return", "score", "depth", "distinct_messages", "length", "success")


class SparseSuccessReward:
    """Motif's sparse-task reward: `success_reward` (50) on the step that succeeds, else 0,
    with no time penalty (NLE's tasks charge each step on which game time stands still).
    The episode ends on success (NLE's task status)."""

    success_reward: float = 50.0

    def _reward_fn(self, last_observation, action, observation, end_status):
        return self.success_reward if end_status == TASK_SUCCESSFUL else 0.0


class NetHackDescend(SparseSuccessReward, nle_tasks.NetHackStaircase):
    """Reach dungeon depth `target_depth` (Motif's staircase tasks: 2, 3 or 4)."""

    def __init__(self, *args: Any, target_depth: int = 2, **kwargs: Any):
        if target_depth < 2:
            raise ValueError(f"target_depth must be at least 2, got {target_depth}")
        self.target_depth = target_depth
        super().__init__(*args, **kwargs)

    def _is_episode_end(self, observation):
        if reached_depth(observation[self._blstats_index], self.target_depth):
            return self.StepStatus.TASK_SUCCESSFUL
        return self.StepStatus.RUNNING


class NetHackDescendContinual(NetHackDescend):
    """Reach depth `target_depth` without the episode ending there and without extrinsic
    reward (Motif's continual staircase tasks, for intrinsic-only runs); `EpisodeStats`
    counts the episode a success when its depth reached the target."""

    def _is_episode_end(self, observation):
        return self.StepStatus.RUNNING

    def _reward_fn(self, last_observation, action, observation, end_status):
        return 0.0


class NetHackOracle(SparseSuccessReward, nle_tasks.NetHackOracle):
    """NLE's Oracle task (stand next to the Oracle) with Motif's sparse reward."""


class NetHackOracleSober(NetHackOracle):
    """NLE's Oracle task, but standing next to the Oracle only counts when not
    hallucinating (a hallucinating agent sees random monsters, the Oracle among them)."""

    def _is_episode_end(self, observation):
        if hallucinating(observation[self._blstats_index]):
            return self.StepStatus.RUNNING
        return super()._is_episode_end(observation)


def reached_depth(blstats: np.ndarray, target_depth: int) -> bool:
    """Whether the bottom-line stats show a dungeon depth of at least `target_depth`."""
    return int(blstats[nethack.NLE_BL_DEPTH]) >= target_depth


def hallucinating(blstats: np.ndarray) -> bool:
    """Whether the hallucination condition bit is set in the bottom-line stats."""
    return bool(int(blstats[nethack.NLE_BL_CONDITION]) & nethack.BL_MASK_HALLU)


@dataclass(frozen=True)
class NetHackTask:
    """One NetHack task: how to build it and what it asks of the agent in words."""

    name: str
    env_class: type[nle_tasks.NetHackScore]
    goal: str
    preference: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()


TASKS: dict[str, NetHackTask] = {
    task.name: task
    for task in (
        NetHackTask(
            "score",
            nle_tasks.NetHackScore,
            "maximise the game score: kill monsters, collect gold, gain experience levels "
            "and go deeper into the dungeon",
            "score",
        ),
        NetHackTask(
            "staircase",
            NetHackDescend,
            "go down the stairs to the next dungeon level",
            "descend",
            (("target_depth", 2),),
        ),
        NetHackTask(
            "staircase_pet",
            nle_tasks.NetHackStaircasePet,
            "reach the staircase down with your pet next to you",
            "descend",
        ),
        NetHackTask(
            "staircase_lvl3",
            NetHackDescend,
            "go down the stairs to dungeon level 3",
            "descend",
            (("target_depth", 3),),
        ),
        NetHackTask(
            "staircase_lvl4",
            NetHackDescend,
            "go down the stairs to dungeon level 4",
            "descend",
            (("target_depth", 4),),
        ),
        NetHackTask(
            "staircase_lvl3_continual",
            NetHackDescendContinual,
            "go down the stairs to dungeon level 3",
            "descend",
            (("target_depth", 3),),
        ),
        NetHackTask(
            "staircase_lvl4_continual",
            NetHackDescendContinual,
            "go down the stairs to dungeon level 4",
            "descend",
            (("target_depth", 4),),
        ),
        NetHackTask(
            "oracle",
            NetHackOracle,
            "go down the dungeon and find the Oracle",
            "descend",
        ),
        NetHackTask(
            "oracle_sober",
            NetHackOracleSober,
            "go down the dungeon and find the Oracle, without hallucinating",
            "descend",
        ),
    )
}


def get_task(name: str) -> NetHackTask:
    """The task called `name`; `KeyError` naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"no NetHack task {name!r} (known: {', '.join(TASKS)})") from None


def caption(message: np.ndarray | bytes) -> str:
    """The caption of an observation: its message line up to the first NUL, stripped.

    Empty messages are valid captions (""). NetHack writes ASCII; latin-1 decodes any byte
    so a caption can always be encoded back to the same bytes."""
    raw = message.tobytes() if isinstance(message, np.ndarray) else bytes(message)
    return raw.partition(b"\0")[0].decode("latin-1").strip()


def episode_seeds(root: np.random.SeedSequence) -> tuple[int, int, int]:
    """NetHack's (core, disp) RNG seeds and a policy seed drawn from a seed sequence."""
    core, disp, policy = root.generate_state(3, dtype=np.uint64)
    # NLE passes seeds as C longs: keep them positive and below 2**63.
    return int(core >> 1), int(disp >> 1), int(policy >> 1)


def clear_scoreboard(env: gym.Env) -> None:
    """Empty the high-score file of an env's NetHack instance.

    NetHack shows its high-score list on the last screen of a game, read from a file that
    every game of the instance appends to; emptied before each game, that screen depends on
    the game alone (else on which games the instance happened to play before)."""
    record = Path(env.unwrapped.nethack._vardir) / "record"
    record.write_bytes(b"")


# The birthday `pin_birthday` gives a game: a day of the year 2000 drawn from its core seed.
BIRTHDAY_EPOCH = 946_684_800  # 2000-01-01 00:00:00 UTC
BIRTHDAY_SPAN = 366 * 86_400


def game_birthday(core: int) -> int:
    """The birthday (seconds since the epoch) of the game whose core RNG seed is `core`."""
    return BIRTHDAY_EPOCH + core % BIRTHDAY_SPAN


def pin_birthday(env: gym.Env, birthday: int) -> None:
    """Set the birthday of the game an env is playing (NetHack's `ubirthday`).

    NetHack sets `ubirthday` from the wall clock (`time()` in `u_init`) when a game starts,
    and NLE 1.3's `fix_moon_phase` does not cover it. It picks each shopkeeper's name and
    gender (`nameshk`: an offset from `ubirthday // 257`, so two runs of one seed 257 s
    apart can meet "Annootok" or "Asidonhopo"); where the wanted name lies past the end of
    the list, the name is drawn with the core RNG instead, so the game itself can go on
    differently from that level on. It also picks the ants of an anthole (`antholemon`:
    `ubirthday % 3`); the record file keeps it as the birth date. Both draws happen only
    when a level deeper than 1 is made (shops from depth 2, antholes below 12), never
    before the first observation, so setting it right after the reset pins them all.

    The value is written into the env's own copy of NetHack, which NLE loads from `dlpath`
    and reloads on every reset; the handle opened here is closed at once, since NLE refuses
    to reload a library someone else still holds (it exits the process)."""
    library = env.unwrapped.nethack.dlpath
    handle = _ctypes.dlopen(library, os.RTLD_NOLOAD | os.RTLD_LAZY)
    try:
        ctypes.c_long.from_address(_ctypes.dlsym(handle, "ubirthday")).value = birthday
    finally:
        _ctypes.dlclose(handle)


def start_game(
    env: gym.Env, core: int, disp: int, options: dict | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Start a new game on an NLE env (from `make_raw_env`, or a wrapper of one) that
    depends on `(core, disp)` alone: the RNGs seeded without reseeding, an empty high-score
    list (`clear_scoreboard`), the calendar from the seed (`fix_moon_phase`, which
    `make_raw_env` sets) and the birthday from the seed (`pin_birthday`). Returns the
    env's first observation and info (NLE's arrays, not copies)."""
    env.unwrapped.seed(core, disp, reseed=False)
    clear_scoreboard(env)
    observation, info = env.reset(options=options)
    pin_birthday(env, game_birthday(core))
    return observation, info


class SeededNetHack(gym.Wrapper):
    """Deterministic episodes and observations the caller owns.

    `reset(seed=s)` restarts a seed sequence at `s`; every reset (with or without a seed)
    takes the next child of that sequence and seeds NetHack's RNGs from it, so episode k
    after `reset(seed=s)` is the same game on every run (the high-score list that ends a
    game included, see `clear_scoreboard`). NLE reuses its observation arrays
    between steps; this wrapper returns copies, so observations stay valid after the next
    step (vector envs keep the last observation of a finished episode)."""

    def __init__(self, env: nle_tasks.NetHackScore, seed: int | None = None):
        super().__init__(env)
        self._root = np.random.SeedSequence(seed)
        self.policy_seed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start the next episode (the first of a new sequence if `seed` is given)."""
        if seed is not None:
            self._root = np.random.SeedSequence(seed)
        core, disp, self.policy_seed = episode_seeds(self._root.spawn(1)[0])
        observation, info = start_game(self.env, core, disp, options)
        return copy_observation(observation), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return copy_observation(observation), reward, terminated, truncated, info


def copy_observation(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of an NLE observation (whose arrays NLE overwrites on the next step)."""
    return {key: value.copy() for key, value in observation.items()}


def make_raw_env(
    task: str,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
    observation_keys: tuple[str, ...] = AGENT_OBSERVATION_KEYS,
    **nle_kwargs: Any,
) -> nle_tasks.NetHackScore:
    """The bare NLE env of `task` (no seeding or copying; see `make_env`)."""
    spec = get_task(task)
    kwargs = {"fix_moon_phase": True, **dict(spec.env_kwargs), **nle_kwargs}
    return spec.env_class(
        observation_keys=observation_keys, max_episode_steps=max_episode_steps, **kwargs
    )


def make_env(
    task: str,
    seed: int | None = None,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
    observation_keys: tuple[str, ...] = AGENT_OBSERVATION_KEYS,
    **nle_kwargs: Any,
) -> SeededNetHack:
    """A deterministic env of `task` returning `observation_keys`. Extra keyword arguments
    go to NLE (e.g. `character`, `penalty_step`)."""
    env = make_raw_env(task, max_episode_steps, observation_keys, **nle_kwargs)
    return SeededNetHack(env, seed)


def make_vector_env(
    task: str,
    num_envs: int,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
    observation_keys: tuple[str, ...] = AGENT_OBSERVATION_KEYS,
    **nle_kwargs: Any,
) -> gym.vector.SyncVectorEnv:
    """`num_envs` envs of `task` stepped in turn, with batched observations.

    An env whose episode ends is reset in the same step: the returned observation is the
    new episode's first, and `info["final_obs"]` holds the last one of the old episode.
    `reset(seed=s)` seeds env i with s + i (gymnasium's convention), so a vector's games
    are reproducible."""

    def factory() -> Callable[[], gym.Env]:
        return lambda: make_env(task, None, max_episode_steps, observation_keys, **nle_kwargs)

    return gym.vector.SyncVectorEnv(
        [factory() for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def captions(messages: np.ndarray) -> list[str]:
    """Captions of a batch of message lines (shape (N, 256))."""
    return [caption(row) for row in messages]


class EpisodeStats(gym.Wrapper):
    """NetHack episode measures, put in the info of an episode's last step as
    `episode_<field>` for `EPISODE_FIELDS`:

    - score: the in-game score (bottom line) at the last step where the game was still
      on (NLE zeroes the observation that ends an episode);
    - depth: the deepest dungeon level reached (for a descend task that succeeded, at
      least its target depth: the zeroed last observation cannot show it);
    - distinct_messages: distinct non-empty captions seen (the reset one included);
    - success: the task reported success (`end_status` TASK_SUCCESSFUL), or on a
      continual staircase task the depth reached its target;
    - extrinsic_return, length: sum of env rewards and steps."""

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._messages: set[str] = set()
        self._score = 0
        self._depth = 0
        self._return = 0.0
        self._length = 0
        self._observe(observation)
        return observation, info

    def _observe(self, observation: dict[str, np.ndarray]) -> None:
        message = caption(observation["message"])
        if message:
            self._messages.add(message)
        blstats = observation["blstats"]
        depth = int(blstats[nethack.NLE_BL_DEPTH])
        if depth > 0:
            self._score = int(blstats[nethack.NLE_BL_SCORE])
            self._depth = max(self._depth, depth)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._observe(observation)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            success = int(int(info.get("end_status", 0)) == TASK_SUCCESSFUL)
            target = getattr(self.env.unwrapped, "target_depth", 0)
            if success:
                self._depth = max(self._depth, target)
            elif isinstance(self.env.unwrapped, NetHackDescendContinual):
                success = int(self._depth >= target)
            info = {
                **info,
                "episode_extrinsic_return": self._return,
                "episode_score": self._score,
                "episode_depth": self._depth,
                "episode_distinct_messages": len(self._messages),
                "episode_length": self._length,
                "episode_success": success,
            }
        return observation, reward, terminated, truncated, info
