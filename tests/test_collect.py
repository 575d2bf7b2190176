"""Caption collection on real NLE and a local Ray cluster: shard contents, resumption after
SIGKILL, plans."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from maestro.envs.nethack import caption, make_raw_env
from maestro.feedback.collect import (
    CollectConfig,
    CollectError,
    RandomPolicy,
    collect,
    collect_shard,
    field_array,
    load_caption_counts,
    load_dataset,
    manifest_key,
    read_shard,
    shard_bytes,
)
from maestro.store import LocalStore

# Shards long enough that a SIGKILL lands between them.
RESUME_CONFIG = CollectConfig(num_shards=10, episodes_per_shard=1, max_episode_steps=1500)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster with 2 CPUs (joined by the subprocess that gets killed)."""
    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec

    started = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    # Without an address, ray.init joins any cluster `ray start` left on this machine
    # (other tests start some): "local" always starts our own.
    previous = os.environ.setdefault("RAY_ADDRESS", "local")
    try:
        # Ray reads its authentication mode when imported: init_ray settles it first.
        init_ray(ResourcesSpec(num_cpus=2))
    finally:
        if previous == "local":
            del os.environ["RAY_ADDRESS"]
    import ray

    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


class RecordingPolicy(RandomPolicy):
    """Random actions, remembering every observation it was shown and what it did."""

    def __init__(self, num_actions: int):
        self.seen: list[dict] = []
        super().__init__(num_actions)

    def act(self, observation):
        action = super().act(observation)
        self.seen.append({**{k: v.copy() for k, v in observation.items()}, "action": action})
        return action


def test_shard_rows_are_what_the_policy_observed():
    config = CollectConfig(num_shards=1, episodes_per_shard=3, max_episode_steps=150)
    env = make_raw_env("score", max_episode_steps=150, observation_keys=tuple(config.fields))
    policy = RecordingPolicy(env.action_space.n)
    table = collect_shard(env, policy, config, seed=4, shard=0)
    rows = table.to_pydict()

    acted = [i for i, a in enumerate(rows["action"]) if a >= 0]
    assert len(acted) == len(policy.seen)
    fields = {name: field_array(table, name) for name in config.fields}
    assert fields["tty_chars"].shape == (table.num_rows, 24, 80)
    assert fields["blstats"].dtype == np.int64
    for row, seen in zip(acted, policy.seen, strict=True):
        assert rows["action"][row] == seen["action"]
        assert rows["caption"][row] == caption(seen["message"])
        for name in config.fields:
            np.testing.assert_array_equal(fields[name][row], seen[name])

    # Three whole episodes: each starts at step 0 and ends with one observation where
    # nothing is done any more.
    assert rows["step"].count(0) == 3 and sum(rows["done"]) == 3
    assert all(rows["reward"][i] == 0.0 for i, s in enumerate(rows["step"]) if s == 0)
    last = [i for i, d in enumerate(rows["done"]) if d]
    assert all(rows["action"][i] == -1 for i in last)
    assert all(rows["end_status"][i] != 0 for i in last)
    assert all(rows["step"][i] <= 150 for i in last)

    # The shard is a function of (config, seed, shard): replaying it gives the same bytes.
    again = collect_shard(env, RandomPolicy(env.action_space.n), config, seed=4, shard=0)
    assert shard_bytes(again, "zstd") == shard_bytes(table, "zstd")
    other = collect_shard(env, RandomPolicy(env.action_space.n), config, seed=5, shard=0)
    assert not other.equals(table)
    env.close()


def run_in_subprocess(store_root, config, seed, address):
    """`collect` in a separate driver process joined to the test's Ray cluster."""
    script = (
        "import sys\n"
        "from maestro.feedback.collect import CollectConfig, collect\n"
        "from maestro.store import open_store\n"
        "config = CollectConfig.model_validate_json(sys.argv[2])\n"
        "collect(open_store(sys.argv[1]), 'captions', config, seed=int(sys.argv[3]))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(store_root), config.model_dump_json(), str(seed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_killed_collection_resumes_to_the_uninterrupted_dataset(tmp_path, ray_address):
    seed = 21
    reference = LocalStore(tmp_path / "uninterrupted")
    result = collect(reference, "captions", RESUME_CONFIG, seed)
    assert result.shards_written == 10 and result.shards_skipped == 0

    # One actor in the doomed run, so its shards appear one by one.
    resumed = LocalStore(tmp_path / "resumed")
    process = run_in_subprocess(
        resumed.path, RESUME_CONFIG.model_copy(update={"num_actors": 1}), seed, ray_address
    )
    deadline = time.monotonic() + 120
    while len(resumed.list("captions/shards")) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "the subprocess wrote no shards"
        time.sleep(0.02)
    process.kill()
    process.wait()
    written_before_kill = len(resumed.list("captions/shards"))
    assert 2 <= written_before_kill < 10, "the kill came too late to interrupt anything"
    assert not resumed.exists(manifest_key("captions"))

    rerun = collect(resumed, "captions", RESUME_CONFIG, seed)
    assert rerun.shards_skipped >= 2 and rerun.shards_written + rerun.shards_skipped == 10
    assert resumed.list("captions") == reference.list("captions")
    for key in reference.list("captions"):
        assert resumed.get_bytes(key) == reference.get_bytes(key), key
    assert rerun.manifest == result.manifest

    # The manifest's counts are those of the data.
    all_captions = load_dataset(resumed, "captions", ["caption"]).column("caption").to_pylist()
    counts = Counter(all_captions)
    dataset = load_caption_counts(resumed, "captions")
    assert dict(zip(dataset.captions, dataset.counts.tolist(), strict=True)) == dict(counts)
    manifest = rerun.manifest
    assert manifest["rows"] == len(all_captions) > 10
    assert manifest["unique_captions"] == len(counts) > 5
    assert manifest["empty_captions"] == counts[""]
    assert manifest["episodes"] == 10
    assert rerun.caption_counts == dict(counts)
    metrics = rerun.metrics()
    assert metrics["collect/unique_captions"] == len(counts)
    assert load_dataset(resumed, "captions", ["shard"]).column("shard").to_pylist() == sorted(
        load_dataset(resumed, "captions", ["shard"]).column("shard").to_pylist()
    )

    # A finished collection is not redone; a different plan under its prefix is refused.
    again = collect(resumed, "captions", RESUME_CONFIG.model_copy(update={"num_actors": 2}), seed)
    assert again.shards_written == 0 and again.manifest == manifest
    with pytest.raises(CollectError, match="differs in seed"):
        collect(resumed, "captions", RESUME_CONFIG, seed + 1)
    with pytest.raises(CollectError, match="max_episode_steps"):
        collect(resumed, "captions", RESUME_CONFIG.model_copy(update={"max_episode_steps": 9}), 21)


class WaitPolicy:
    """Always searches (waits a turn): a policy that is not the random one."""

    def __init__(self, num_actions: int):
        from nle.env.tasks import TASK_ACTIONS
        from nle.nethack import Command

        self.action = TASK_ACTIONS.index(Command.SEARCH)

    def reset(self, seed: int) -> None:
        pass

    def act(self, observation) -> int:
        return self.action


def test_actors_run_a_given_policy_and_other_tasks(tmp_path, ray_address):
    from ray import cloudpickle

    # Ray's workers need not be able to import this test module: ship WaitPolicy by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    store = LocalStore(tmp_path)
    config = CollectConfig(
        task="staircase_lvl3",
        num_shards=2,
        max_episode_steps=30,
        fields=["blstats", "message", "glyphs"],
        policy="wait",
    )
    shards = []
    result = collect(
        store, "waiting", config, seed=3, policy_factory=WaitPolicy, on_shard=shards.append
    )
    assert sorted(s.shard for s in shards) == [0, 1] and result.shards_written == 2
    # What feeds the rollout env-steps counter: 30 steps each, not the 31 observations.
    assert [(s.rows, s.env_steps) for s in shards] == [(31, 30), (31, 30)]
    table = read_shard(store, shards[0].key)
    assert table.column_names[-3:] == ["blstats", "message", "glyphs"]
    assert "tty_chars" not in table.column_names
    assert field_array(table, "glyphs").shape == (31, 21, 79)
    actions = table.column("action").to_pylist()
    assert set(actions[:-1]) == {WaitPolicy(0).action} and actions[-1] == -1
    # Thirty turns of waiting in place: the clock moves, the position does not.
    blstats = field_array(table, "blstats")
    assert blstats[-2, 20] > blstats[0, 20]
    assert (blstats[:-1, :2] == blstats[0, :2]).all()

    with pytest.raises(CollectError, match="policy"):
        collect(store, "mismatch", config, seed=3)
    with pytest.raises(ValueError, match="unknown observation fields"):
        CollectConfig(fields=["tty_chars", "internal"])
    with pytest.raises(ValueError, match="unknown NetHack task"):
        CollectConfig(task="minetown")


def test_a_trained_agents_checkpoint_plays_the_collection(tmp_path, ray_address):
    """`policy: checkpoint` plays with the stored agent of a run (its first trial's last
    checkpoint), not uniformly: an agent whose policy puts nearly all its mass on one
    action collects that action's games; the plan records the checkpoint's digest."""
    import torch
    from nle import nethack

    from maestro.rl.agent import AgentConfig
    from maestro.rl.checkpoints import algorithm_bytes
    from maestro.rl.training import ALGORITHM, TrainingConfig, algorithm_config
    from maestro.run import checkpoint_files

    store = LocalStore(tmp_path)
    training = TrainingConfig(
        num_env_runners=0, agent=AgentConfig(screen_channels=[4], screen_dim=16, core_dim=16)
    )
    algo = algorithm_config("score", training, seed=0, epoch=0, settings=None).build_algo()
    search = list(make_raw_env("score").actions).index(nethack.Command.SEARCH)
    run = "runs/motif/trained/tune"

    def put_checkpoint(folder: str, algorithm: bytes) -> None:
        """A checkpoint as a trial writes it: the agent's tar, the state, the signature."""
        for name, data in checkpoint_files(1, {"loop": {}, ALGORITHM: algorithm}).items():
            store.put_bytes(f"{run}/{folder}/{name}", data)

    try:
        untouched = algorithm_bytes(algo)
        put_checkpoint("trial_00000_a_00000/checkpoint_000000", untouched)
        put_checkpoint("trial_00001_a_00001/checkpoint_000003", untouched)
        module = algo.learner_group._learner.module["default_policy"]
        with torch.no_grad():
            module.pi.weight.zero_()
            module.pi.bias.fill_(-10.0)
            module.pi.bias[search] = 10.0
        put_checkpoint("trial_00000_a_00000/checkpoint_000001", algorithm_bytes(algo))
    finally:
        algo.stop()

    config = CollectConfig(
        num_shards=2, max_episode_steps=200, policy="checkpoint", checkpoint="runs/motif/trained"
    )
    collect(store, "by_agent", config, seed=4)
    collect(store, "at_random", CollectConfig(num_shards=2, max_episode_steps=200), seed=4)
    played = load_dataset(store, "by_agent", ["action", "caption"])
    random_play = load_dataset(store, "at_random", ["action", "caption"])
    actions = [a for a in played.column("action").to_pylist() if a >= 0]
    assert actions.count(search) / len(actions) > 0.95
    random_actions = [a for a in random_play.column("action").to_pylist() if a >= 0]
    assert random_actions.count(search) / len(random_actions) < 0.1
    # Searching in place shows far fewer distinct messages than wandering at random.
    assert len(set(played.column("caption").to_pylist())) < len(
        set(random_play.column("caption").to_pylist())
    )
    plan = store.get_json("by_agent/plan.json")
    assert plan["policy_sha256"] == store.checksum(
        f"{run}/trial_00000_a_00000/checkpoint_000001/algorithm.tar"
    )
    with pytest.raises(ValueError, match="checkpoint"):
        CollectConfig(policy="checkpoint")
    with pytest.raises(CollectError, match="no trained agent"):
        collect(store, "nothing", config.model_copy(update={"checkpoint": "runs/none"}), seed=4)
