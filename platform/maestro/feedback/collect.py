"""Collection: rollout actors play NetHack and write captioned observations as Parquet shards.

The dataset under `<prefix>/` in the artifact store:
- `plan.json`: what is being collected (task, seed, shard layout, fields, policy and, for a
  trained agent, the SHA-256 of its checkpoint, NLE version). A rerun with a different plan
  under the same prefix is refused, so shards from two plans never mix.
- `shards/shard-00003-of-00008.parquet`: one row per observation of `episodes_per_shard`
  whole episodes. Shard i is determined by (plan, i): episode e of shard i plays the game
  whose NetHack core and display RNG seeds are drawn from `SeedSequence([seed, i, e])`
  (no reseeding during play), with the policy seeded from it too, and nothing in the game
  comes from the clock: the moon phase, Friday the 13th, night and midnight (NLE's
  `fix_moon_phase`) and the game's birthday, which names the shopkeepers (`pin_birthday`),
  are derived from the seed (`maestro.envs.nethack.start_game`). So every column of every
  row (captions included, byte for byte) is the same whenever, wherever and by however
  many actors the plan is collected, with the NLE version the plan records; so are the
  files, whose bytes also carry the pyarrow version that wrote them. With
  `policy: checkpoint` this assumes the agent's forward pass gives the same numbers,
  i.e. the same torch build and kind of CPU (not checked). Shards are written atomically,
  so a killed collection reruns only the missing ones and ends with the same bytes as an
  uninterrupted run.
- `manifest.json`: written last (the stage's completion mark): every shard with its rows
  and SHA-256, and the caption counts (rows, unique, empty).

Columns: `shard`, `episode` (within the shard), `step` (0 = the observation after reset),
`caption` (the message line, stripped; may be empty), `action` (taken at this observation;
-1 on an episode's last), `reward` (received on arriving here; 0 at step 0), `done` (last
observation of its episode), `end_status` (NLE's: 0 running, -1 aborted at the step limit,
1 death, 2 task success), then one column per observation field (`tty_chars`,
`tty_colors`, `blstats`, `message` by default), each row's array stored as
fixed-size binary with its shape and dtype in the field metadata: `field_array` decodes it.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from maestro.envs.nethack import (
    AGENT_OBSERVATION_KEYS,
    TASKS,
    caption,
    episode_seeds,
    make_raw_env,
    start_game,
)
from maestro.runtime import init_ray
from maestro.store import ArtifactStore, open_store

SCHEMA_VERSION = 1
# The observation fields of Motif's released dataset: enough to render the agent's view and
# to train on captions. Add `tty_cursor` (or any NLE key) through `fields` if needed.
DEFAULT_FIELDS = ("tty_chars", "tty_colors", "blstats", "message")
# Observation keys that are bookkeeping for NLE itself, not data.
EXCLUDED_FIELDS = ("program_state", "internal")


class CollectError(RuntimeError):
    """The collection cannot proceed as asked (the message says why)."""


class CollectConfig(BaseModel):
    """How many captions to collect, from which task, with what."""

    model_config = ConfigDict(extra="forbid")

    task: str = "score"
    num_shards: int = Field(default=8, ge=1)
    episodes_per_shard: int = Field(default=1, ge=1)
    max_episode_steps: int = Field(default=1000, ge=1, description="steps before an abort")
    fields: list[str] = Field(default_factory=lambda: list(DEFAULT_FIELDS))
    policy: str = Field(
        default="random",
        description="'random' (uniform actions), 'checkpoint' (the trained agent at "
        "`checkpoint`), or the name of the policy passed to collect()",
    )
    checkpoint: str | None = Field(
        default=None,
        description="with policy 'checkpoint': a store folder holding a trained Motif agent, "
        "a run (runs/motif/<name>: its first trial's last checkpoint) or one checkpoint",
    )
    character: str = "mon-hum-neu-mal"
    compression: str = "zstd"
    num_actors: int = Field(default=2, ge=1, description="rollout actors (not part of the data)")
    cpus_per_actor: float = Field(default=1.0, gt=0)

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown NetHack task {task!r} (known: {', '.join(TASKS)})")
        return task

    @model_validator(mode="after")
    def _checkpoint_policy(self) -> CollectConfig:
        if (self.policy == "checkpoint") != (self.checkpoint is not None):
            raise ValueError("set checkpoint exactly when policy is 'checkpoint'")
        return self

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        from nle import nethack

        allowed = [k for k in nethack.OBSERVATION_DESC if k not in EXCLUDED_FIELDS]
        unknown = [f for f in fields if f not in allowed]
        if unknown:
            raise ValueError(f"unknown observation fields {unknown} (allowed: {allowed})")
        if len(set(fields)) != len(fields):
            raise ValueError("fields must not repeat")
        return fields

    def plan(self, seed: int) -> dict[str, Any]:
        """Everything that determines the data (not how many actors produce it)."""
        values = self.model_dump(exclude={"num_actors", "cpus_per_actor"})
        return {
            "schema_version": SCHEMA_VERSION,
            "seed": seed,
            "nle": importlib.metadata.version("nle"),
            **values,
        }


def collect_on_the_task(data: dict) -> dict:
    """A config block's data whose dataset is collected on its task unless `collect.task`
    says otherwise."""
    if isinstance(data, dict) and isinstance(data.get("collect", {}), dict):
        collect_block = dict(data.get("collect") or {})
        collect_block.setdefault("task", data.get("task", "score"))
        data = {**data, "collect": collect_block}
    return data


class Policy(Protocol):
    """What a rollout actor asks of a policy. `observation` holds NLE's arrays (valid until
    the next step); `reset` starts an episode with a seed derived from the shard's."""

    def reset(self, seed: int) -> None: ...

    def act(self, observation: dict[str, np.ndarray]) -> int: ...


PolicyFactory = Callable[[int], Policy]  # number of actions -> policy


class RandomPolicy:
    """Uniformly random actions over the task's action set."""

    BLOCK = 4096

    def __init__(self, num_actions: int):
        self.num_actions = num_actions
        self.reset(0)

    def reset(self, seed: int) -> None:
        """Restart the action stream from `seed`."""
        self._rng = np.random.default_rng(seed)
        self._actions = self._rng.integers(self.num_actions, size=self.BLOCK)
        self._next = 0

    def act(self, observation: dict[str, np.ndarray]) -> int:
        """The next random action (drawn in blocks: one NumPy draw per step would cost a
        few microseconds, a visible share of an NLE step)."""
        if self._next == self.BLOCK:
            self._actions = self._rng.integers(self.num_actions, size=self.BLOCK)
            self._next = 0
        action = int(self._actions[self._next])
        self._next += 1
        return action


@dataclass(frozen=True)
class CheckpointPolicy:
    """Builds, in each rollout actor, the policy of the trained agent whose
    `algorithm.tar` is at `key` in the store at `store_uri` (`evaluate.AgentPolicy`)."""

    store_uri: str
    key: str

    def __call__(self, num_actions: int) -> Policy:
        from maestro.rl.checkpoints import learner_rl_module
        from maestro.rl.evaluate import AgentPolicy
        from maestro.rl.training import load_stored_agent

        agent = load_stored_agent(open_store(self.store_uri), self.key)
        return AgentPolicy(learner_rl_module(agent))


# ---------------------------------------------------------------- one shard


def shard_key(prefix: str, index: int, total: int) -> str:
    """The store key of shard `index` of `total`."""
    return f"{prefix}/shards/shard-{index:05d}-of-{total:05d}.parquet"


def field_spec(name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one observation field, as NLE declares them."""
    from nle import nethack

    desc = nethack.OBSERVATION_DESC[name]
    return tuple(desc["shape"]), np.dtype(desc["dtype"])


class ObservationRecorder:
    """Copies observation fields, row by row, into preallocated arrays.

    At 10,000-20,000 NLE steps/s per core, per-row overhead decides the collection's
    throughput: the copies go through byte memoryviews (measured cheaper than NumPy row
    assignment), and a recorder is meant to be reused for shard after shard, so its memory
    is paged in once rather than faulted in again, 4 KiB at a time, for every shard. NLE
    returns the same arrays every step, so each source's view is made once (again only if
    NLE hands out another array).
    """

    def __init__(self, names: list[str], capacity: int):
        self.names = names
        self.capacity = capacity
        self.arrays = []
        for name in names:
            shape, dtype = field_spec(name)
            self.arrays.append(np.empty((capacity, *shape), dtype=dtype))
        # Per field: name, flat byte view of its array, row width, [source, source view].
        self._plan = [
            (name, memoryview(array.reshape(-1)).cast("B"), array[0].nbytes, [None, None])
            for name, array in zip(names, self.arrays, strict=True)
        ]

    def record(self, observation: dict[str, np.ndarray], row: int) -> None:
        """Copy `observation`'s fields into row `row`."""
        for name, target, width, source in self._plan:
            array = observation[name]
            if array is not source[0]:
                source[0] = array
                source[1] = memoryview(np.ascontiguousarray(array)).cast("B")
            start = row * width
            target[start : start + width] = source[1]

    def field(self, name: str, rows: int) -> np.ndarray:
        """The first `rows` rows recorded for field `name`."""
        return self.arrays[self.names.index(name)][:rows]


def new_recorder(config: CollectConfig) -> ObservationRecorder:
    """A recorder big enough for one shard of `config`."""
    capacity = config.episodes_per_shard * (config.max_episode_steps + 1)
    return ObservationRecorder(list(dict.fromkeys([*config.fields, "message"])), capacity)


def collect_shard(
    env: Any,
    policy: Policy,
    config: CollectConfig,
    seed: int,
    shard: int,
    recorder: ObservationRecorder | None = None,
) -> pa.Table:
    """Play `config.episodes_per_shard` episodes of shard `shard` on `env` (a raw NLE env
    from `make_raw_env` returning the fields, and `message`) and return its rows.

    The table shares memory with `recorder` (made afresh if not given): it is valid until
    the recorder records again."""
    recorder = recorder or new_recorder(config)
    record = recorder.record
    act = policy.act
    step_env = env.step
    limit = config.max_episode_steps
    # Per-step values go to lists (cheaper than numpy item writes) and become columns below.
    actions: list[int] = []
    rewards: list[float] = []
    final_statuses: list[int] = []
    lengths: list[int] = []

    row = 0
    for episode in range(config.episodes_per_shard):
        core, disp, policy_seed = episode_seeds(np.random.SeedSequence([seed, shard, episode]))
        observation, _ = start_game(env, core, disp)
        policy.reset(policy_seed)
        step = 0
        done = False
        while True:
            record(observation, row)
            row += 1
            if done:
                break
            action = act(observation)
            actions.append(action)
            observation, reward, terminated, truncated, info = step_env(action)
            step += 1
            rewards.append(reward)
            done = terminated or truncated or step >= limit
        lengths.append(step + 1)
        # Earlier steps are all "running": NLE ends the game on any other status.
        final_statuses.append(int(info["end_status"]))

    episode_col = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    step_col = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    last = step_col == np.repeat(np.asarray(lengths, np.int32) - 1, lengths)
    first = step_col == 0
    action_col = np.full(row, -1, np.int16)
    action_col[~last] = actions
    reward_col = np.zeros(row, np.float32)
    reward_col[~first] = rewards
    status_col = np.zeros(row, np.int8)
    status_col[last] = final_statuses

    columns = {
        "shard": pa.array(np.full(row, shard, np.int32)),
        "episode": pa.array(episode_col),
        "step": pa.array(step_col),
        "caption": pa.array([caption(m) for m in recorder.field("message", row)], pa.string()),
        "action": pa.array(action_col),
        "reward": pa.array(reward_col),
        "done": pa.array(last),
        "end_status": pa.array(status_col),
    }
    schema_fields = [pa.field(name, array.type) for name, array in columns.items()]
    for name in config.fields:
        shape, dtype = field_spec(name)
        columns[name] = fixed_binary(recorder.field(name, row))
        metadata = {"shape": ",".join(map(str, shape)), "dtype": dtype.str}
        schema_fields.append(pa.field(name, columns[name].type, metadata=metadata))
    metadata = {
        "maestro.collect": json.dumps(
            {"schema_version": SCHEMA_VERSION, "task": config.task, "seed": seed, "shard": shard}
        )
    }
    return pa.Table.from_arrays(
        list(columns.values()), schema=pa.schema(schema_fields, metadata=metadata)
    )


def fixed_binary(values: np.ndarray) -> pa.Array:
    """Each row of `values` as one fixed-size binary value (zero-copy)."""
    values = np.ascontiguousarray(values)
    width = values.dtype.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(values)]
    )


def field_array(table: pa.Table, name: str) -> np.ndarray:
    """An observation field of a shard table as an array of shape (rows, *field shape)."""
    metadata = table.schema.field(name).metadata or {}
    if b"shape" not in metadata:
        raise CollectError(f"column {name!r} is not an observation field")
    shape = tuple(int(x) for x in metadata[b"shape"].decode().split(",") if x)
    dtype = np.dtype(metadata[b"dtype"].decode())
    column = table.column(name).combine_chunks()
    width = column.type.byte_width
    data = np.frombuffer(
        column.buffers()[1], np.uint8, count=len(column) * width, offset=column.offset * width
    )
    return data.view(dtype).reshape(len(column), *shape)


def shard_bytes(table: pa.Table, compression: str) -> bytes:
    """A shard table as Parquet bytes (deterministic: same table, same bytes)."""
    small = [name for name in table.column_names if not table.schema.field(name).metadata]
    sink = io.BytesIO()
    # Statistics and dictionaries only pay off on the small columns; on the screen fields
    # they would cost more time than NLE takes to step.
    pq.write_table(
        table,
        sink,
        compression=compression,
        use_dictionary=small,
        write_statistics=small,
    )
    return sink.getvalue()


def read_shard(store: ArtifactStore, key: str, columns: list[str] | None = None) -> pa.Table:
    """One shard (or some of its columns)."""
    return pq.read_table(io.BytesIO(store.get_bytes(key)), columns=columns)


def caption_counts(table: pa.Table) -> dict[str, int]:
    """How often each caption occurs in a table."""
    counts = pc.value_counts(table.column("caption")).flatten()
    return dict(zip(counts[0].to_pylist(), counts[1].to_pylist(), strict=True))


@dataclass
class ShardStats:
    """What writing one shard produced."""

    shard: int
    key: str
    rows: int
    episodes: int
    sha256: str
    caption_counts: dict[str, int]
    seconds: float = 0.0

    @property
    def env_steps(self) -> int:
        """Environment steps (actions) taken: an episode's rows are its first observation
        and one per step."""
        return self.rows - self.episodes


class RolloutWorker:
    """Plays shards on one NLE env and writes them to the store (a Ray actor's body)."""

    def __init__(
        self,
        store_uri: str,
        prefix: str,
        config: CollectConfig,
        seed: int,
        policy_factory: PolicyFactory | None = None,
    ):
        self.store = open_store(store_uri)
        self.prefix = prefix
        self.config = config
        self.seed = seed
        # A trained agent reads its own observation fields besides the dataset's.
        agent = AGENT_OBSERVATION_KEYS if config.policy == "checkpoint" else ()
        env_fields = tuple(dict.fromkeys([*config.fields, "message", *agent]))
        self.env = make_raw_env(
            config.task,
            max_episode_steps=config.max_episode_steps,
            observation_keys=env_fields,
            character=config.character,
        )
        self.policy = (policy_factory or RandomPolicy)(int(self.env.action_space.n))
        self.recorder = new_recorder(config)

    def run_shard(self, shard: int) -> ShardStats:
        """Collect shard `shard`, write it, and say what it holds."""
        start = time.perf_counter()
        table = collect_shard(self.env, self.policy, self.config, self.seed, shard, self.recorder)
        key = shard_key(self.prefix, shard, self.config.num_shards)
        digest = self.store.put_bytes(key, shard_bytes(table, self.config.compression))
        return ShardStats(
            shard=shard,
            key=key,
            rows=table.num_rows,
            episodes=self.config.episodes_per_shard,
            sha256=digest,
            caption_counts=caption_counts(table),
            seconds=time.perf_counter() - start,
        )


# ---------------------------------------------------------------- the stage


@dataclass
class CollectResult:
    """A finished collection: the manifest's counts and what this call did."""

    manifest: dict[str, Any]
    shards_written: int
    shards_skipped: int
    seconds: float
    captions_per_s: float
    caption_counts: dict[str, int] = field(repr=False, default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow."""
        m = self.manifest
        return {
            "collect/rows": m["rows"],
            "collect/episodes": m["episodes"],
            "collect/unique_captions": m["unique_captions"],
            "collect/empty_caption_fraction": m["empty_captions"] / max(m["rows"], 1),
            "collect/shards_written": self.shards_written,
            "collect/shards_skipped": self.shards_skipped,
            "collect/captions_per_s": self.captions_per_s,
        }


def plan_key(prefix: str) -> str:
    """Where the plan of the collection under `prefix` lives."""
    return f"{prefix}/plan.json"


def manifest_key(prefix: str) -> str:
    """Where the manifest (completion mark) of the collection under `prefix` lives."""
    return f"{prefix}/manifest.json"


def collect(
    store: ArtifactStore,
    prefix: str,
    config: CollectConfig,
    seed: int,
    policy_factory: PolicyFactory | None = None,
    progress: Callable[..., Any] | None = None,
    on_shard: Callable[[ShardStats], None] | None = None,
) -> CollectResult:
    """Collect the dataset under `prefix` on Ray rollout actors, skipping shards already
    stored; returns the manifest and this call's throughput.

    `policy_factory(num_actions)` builds each actor's policy (default: `RandomPolicy`, or
    for `policy: checkpoint` the stored agent's; a custom one needs `config.policy` to name
    it). `progress(total, desc, unit=...)` makes a tqdm-like bar (e.g.
    `RunContext.progress`); `on_shard` is called for each new shard."""
    if (policy_factory is None) != (config.policy in ("random", "checkpoint")):
        raise CollectError(
            "config.policy must be 'random' or 'checkpoint' exactly when no policy_factory "
            f"is given (policy={config.policy!r}, factory={'given' if policy_factory else 'none'})"
        )
    plan = config.plan(seed)
    if config.policy == "checkpoint":
        from maestro.rl.training import stored_agent

        try:
            key = stored_agent(store, config.checkpoint)
        except FileNotFoundError as exc:
            raise CollectError(f"collect.checkpoint: {exc}") from None
        policy_factory = CheckpointPolicy(store.root, key)
        plan["policy_sha256"] = store.checksum(key)
    if store.exists(plan_key(prefix)):
        stored = store.get_json(plan_key(prefix))
        if stored != plan:
            changed = sorted(k for k in {*plan, *stored} if plan.get(k) != stored.get(k))
            raise CollectError(
                f"{store.uri(prefix)} holds a collection with a different plan "
                f"(differs in {', '.join(changed)}); use another run name or prefix"
            )
    else:
        store.put_json(plan_key(prefix), plan)
    if store.exists(manifest_key(prefix)):
        manifest = store.get_json(manifest_key(prefix))
        return CollectResult(manifest, 0, config.num_shards, 0.0, 0.0)

    start = time.perf_counter()
    keys = [shard_key(prefix, i, config.num_shards) for i in range(config.num_shards)]
    present = set(store.list(f"{prefix}/shards"))
    todo = [i for i, key in enumerate(keys) if key not in present]
    stats: dict[int, ShardStats] = {}
    bar = progress(config.num_shards, "collect shards", unit="shard") if progress else None
    if bar is not None:
        bar.update(config.num_shards - len(todo))
    new_rows = 0
    if todo:
        # Ray reads its authentication mode when imported: init_ray settles it first.
        init_ray()
        import ray

        actor_class = ray.remote(
            num_cpus=config.cpus_per_actor, max_restarts=2, max_task_retries=2
        )(RolloutWorker)
        actors = [
            actor_class.remote(store.root, prefix, config, seed, policy_factory)
            for _ in range(min(config.num_actors, len(todo)))
        ]
        queue = list(reversed(todo))
        running = {actor.run_shard.remote(queue.pop()): actor for actor in actors if queue}
        try:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(done[0])
                shard_stats: ShardStats = ray.get(done[0])
                stats[shard_stats.shard] = shard_stats
                new_rows += shard_stats.rows
                if queue:
                    running[actor.run_shard.remote(queue.pop())] = actor
                if bar is not None:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(captions_per_s=f"{new_rows / elapsed:.0f}", refresh=False)
                    bar.update(1)
                if on_shard is not None:
                    on_shard(shard_stats)
        finally:
            for actor in actors:
                ray.kill(actor)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start

    for i, key in enumerate(keys):
        if i not in stats:
            table = read_shard(store, key, ["caption", "done"])
            stats[i] = ShardStats(
                shard=i,
                key=key,
                rows=table.num_rows,
                episodes=int(np.count_nonzero(table.column("done").to_numpy())),
                sha256=store.checksum(key),
                caption_counts=caption_counts(table),
            )
    counts = merge_counts(stats[i].caption_counts for i in range(config.num_shards))
    manifest = {
        "plan": plan,
        "rows": sum(s.rows for s in stats.values()),
        "episodes": sum(s.episodes for s in stats.values()),
        "unique_captions": len(counts),
        "empty_captions": counts.get("", 0),
        "shards": [
            {"key": s.key, "rows": s.rows, "sha256": s.sha256}
            for s in (stats[i] for i in range(config.num_shards))
        ],
    }
    store.put_json(manifest_key(prefix), manifest)
    return CollectResult(
        manifest=manifest,
        shards_written=len(todo),
        shards_skipped=config.num_shards - len(todo),
        seconds=seconds,
        captions_per_s=new_rows / seconds if todo else 0.0,
        caption_counts=dict(counts),
    )


def merge_counts(counts: Iterable[dict[str, int]]) -> Counter:
    """The sum of several caption counts."""
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return total


def load_dataset(store: ArtifactStore, prefix: str, columns: list[str] | None = None) -> pa.Table:
    """The finished collection under `prefix` (shards in order), or some of its columns."""
    if not store.exists(manifest_key(prefix)):
        raise CollectError(f"no finished collection at {store.uri(prefix)} (no manifest.json)")
    manifest = store.get_json(manifest_key(prefix))
    return pa.concat_tables(read_shard(store, s["key"], columns) for s in manifest["shards"])


@dataclass(frozen=True)
class CaptionCounts:
    """A dataset's distinct captions (sorted) and how many of its rows show each: what
    pairs are drawn from, a row's worth of memory per distinct caption, not per row."""

    captions: list[str]
    counts: np.ndarray  # int64, one per caption

    @classmethod
    def of(cls, counts: dict[str, int]) -> CaptionCounts:
        captions = sorted(counts)
        return cls(captions, np.array([counts[c] for c in captions], dtype=np.int64))

    @property
    def rows(self) -> int:
        return int(self.counts.sum())


def load_caption_counts(store: ArtifactStore, prefix: str) -> CaptionCounts:
    """The caption counts of the finished collection under `prefix`, read one shard's
    caption column at a time."""
    if not store.exists(manifest_key(prefix)):
        raise CollectError(f"no finished collection at {store.uri(prefix)} (no manifest.json)")
    shards = store.get_json(manifest_key(prefix))["shards"]
    counts = merge_counts(caption_counts(read_shard(store, s["key"], ["caption"])) for s in shards)
    return CaptionCounts.of(counts)
