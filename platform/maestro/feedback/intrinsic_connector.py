"""Motif's intrinsic reward on the learner: an RLlib learner connector (ConnectorV2).

Episodes reach the learner as fragments (APPO cuts them every `rollout_fragment_length`
steps; PPO cuts them at the end of each sample call). For each fragment, this connector
reads the captions (message lines) of the observations each action was taken from,
computes r_int with `IntrinsicReward` (the reward model runs once per distinct caption,
cached), and overwrites the fragment's rewards with the combination of `intrinsic.combine`.
It runs first in the
learner pipeline, so the rewards that GAE (PPO) or v-trace (APPO) see are already the
combined ones.

N_episode(c), the count of caption c so far in the episode, spans fragments: the counts of
each open episode are kept here, keyed by the episode id, and continued when the episode's
next fragment (`t_started` equal to where the last one ended) arrives. That is exact when
every fragment of an episode passes through this connector in order, which holds for one
learner (`num_learners` 0 or 1) without aggregator actors: RLlib sends each EnvRunner's
sample results, in order, to the learner's `update`, which runs this pipeline before
anything is queued or dropped. With several learners (or aggregator actors) an episode's
fragments are spread over processes; a fragment whose predecessor was not seen here starts
fresh counts (counted in `fragments_without_predecessor`) and its episode's returns are
not reported.

Per finished episode it adds up the intrinsic return (sum of r_int) and the extrinsic
return (sum of r_ext), with an episode count, until the driver drains the sums
(`drain_stats` on the learner): exact per-episode means per iteration
(`intrinsic_metrics`). The learner classes that run it (APPO and PPO) are here too.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2

from maestro.envs.nethack import captions
from maestro.feedback.intrinsic import IntrinsicReward, IntrinsicRewardConfig, combine
from maestro.feedback.reward_model import RewardModel
from maestro.rl.appo import MaestroAPPOLearner
from maestro.rl.results import finite

# Where the connector's settings travel in `config.learner_config_dict`.
SETTINGS_KEY = "motif_intrinsic_reward"
# Open episodes kept at once: far above envs in flight; bounds memory if fragments stop.
MAX_OPEN_EPISODES = 100_000
# What `drain` reports that is a size, not a sum: the largest over learners is kept
# (`maestro.rl.results.learner_stats`).
MAXIMA = ("distinct_captions",)


@dataclass
class OpenEpisode:
    """What the learner carries for an episode between its fragments."""

    counts: Counter = field(default_factory=Counter)
    next_t: int = 0
    intrinsic_return: float = 0.0
    extrinsic_return: float = 0.0
    complete: bool = True


@dataclass
class FinishedEpisode:
    """Returns of an episode whose last fragment was shaped."""

    intrinsic_return: float
    extrinsic_return: float


class FragmentShaper:
    """Combined rewards for episode fragments, with per-episode caption counts carried
    from one fragment to the next (no RLlib types: the connector feeds it)."""

    def __init__(
        self,
        intrinsic: IntrinsicReward,
        mix: IntrinsicRewardConfig,
        max_open_episodes: int = MAX_OPEN_EPISODES,
    ):
        self.intrinsic = intrinsic
        self.mix = mix
        self.max_open_episodes = max_open_episodes
        self.open: OrderedDict[str, OpenEpisode] = OrderedDict()
        self.fragments_without_predecessor = 0

    def _episode(self, episode_id: str, t_started: int) -> OpenEpisode:
        """The carried state of `episode_id` if this fragment continues it, else fresh."""
        carried = self.open.pop(episode_id, None)
        if t_started == 0:
            return OpenEpisode()
        if carried is not None and carried.next_t == t_started:
            return carried
        self.fragments_without_predecessor += 1
        return OpenEpisode(next_t=t_started, complete=False)

    def shape(
        self,
        episode_id: str,
        t_started: int,
        step_captions: list[str],
        extrinsic: np.ndarray,
        done: bool,
    ) -> tuple[np.ndarray, np.ndarray, FinishedEpisode | None]:
        """(combined rewards, r_int, the finished episode if `done` and seen whole) for
        one fragment: `step_captions[i]` is the caption of the observation action i was
        taken from, `extrinsic[i]` its env reward."""
        state = self._episode(episode_id, t_started)
        r_int = self.intrinsic.episode_rewards(step_captions, state.counts)
        extrinsic = np.asarray(extrinsic, dtype=np.float64)
        state.intrinsic_return += float(r_int.sum())
        state.extrinsic_return += float(extrinsic.sum())
        state.next_t = t_started + len(step_captions)
        finished = None
        if done:
            if state.complete:
                finished = FinishedEpisode(state.intrinsic_return, state.extrinsic_return)
        else:
            self.open[episode_id] = state
            while len(self.open) > self.max_open_episodes:
                self.open.popitem(last=False)
        combined = combine(r_int, extrinsic, self.mix)
        return combined, r_int, finished


class IntrinsicRewardConnector(ConnectorV2):
    """Learner connector piece: rewards <- Motif's combination (see module docs);
    `intrinsic` is an `IntrinsicRewardConfig` as a dict; the rest goes to
    `intrinsic_reward`: `reward_model` (`RewardModel.to_bytes`) and `threshold` eps (None:
    the reward model's own)."""

    def __init__(
        self,
        input_observation_space=None,
        input_action_space=None,
        *,
        intrinsic: dict[str, Any],
        **reward: Any,
    ):
        super().__init__(input_observation_space, input_action_space)
        mix = IntrinsicRewardConfig.model_validate(intrinsic)
        self.shaper = FragmentShaper(self.intrinsic_reward(mix, **reward), mix)
        self.totals: Counter = Counter()

    def intrinsic_reward(
        self, mix: IntrinsicRewardConfig, *, reward_model: bytes, threshold: float | None = None
    ) -> IntrinsicReward:
        """r_int of captions: the model's normalised reward, thresholded at eps."""
        model = RewardModel.from_bytes(reward_model)
        eps = model.norm.threshold if threshold is None else threshold
        return IntrinsicReward(model.normalised, eps, mix.beta)

    def __call__(
        self,
        *,
        rl_module,
        batch: dict[str, Any],
        episodes: list,
        explore: bool | None = None,
        shared_data: dict | None = None,
        metrics=None,
        **kwargs: Any,
    ) -> Any:
        start = time.perf_counter()
        finished: list[FinishedEpisode] = []
        steps = 0
        intrinsic_sum = 0.0
        before = self.shaper.fragments_without_predecessor
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            if len(episode) == 0:
                continue
            # Actions 0..T-1 of the fragment were taken from its observations 0..T-1 (T is
            # where the next fragment starts).
            observations = episode.get_observations(slice(0, len(episode)))
            combined, r_int, done = self.shaper.shape(
                episode.id_,
                episode.t_started,
                self.step_captions(observations),
                episode.get_rewards(),
                episode.is_done,
            )
            rewards = episode.rewards
            if isinstance(rewards.data, np.ndarray) and not rewards.data.flags.writeable:
                # Fragments from other processes arrive as read-only views of Ray's
                # object store: give the episode its own reward array to write into.
                rewards.data = rewards.data.copy()
            episode.set_rewards(new_data=combined.astype(rewards.data.dtype))
            self.count_shaped(observations, r_int)
            steps += len(r_int)
            intrinsic_sum += float(r_int.sum())
            if done is not None:
                finished.append(done)
        totals = self.totals
        totals["episodes"] += len(finished)
        totals["intrinsic_return_sum"] += sum(e.intrinsic_return for e in finished)
        totals["extrinsic_return_sum"] += sum(e.extrinsic_return for e in finished)
        totals["steps"] += steps
        totals["intrinsic_reward_sum"] += intrinsic_sum
        totals["fragments_without_predecessor"] += (
            self.shaper.fragments_without_predecessor - before
        )
        totals["seconds"] += time.perf_counter() - start
        return batch

    def step_captions(self, observations: dict[str, np.ndarray]) -> list[str]:
        """What the reward model reads of each of a fragment's observations (batched by
        key): Motif's caption, the message line."""
        return captions(observations["message"])

    def count_shaped(self, observations: dict[str, np.ndarray], r_int: np.ndarray) -> None:
        """Add what a subclass measures of a shaped fragment to `totals` (Motif: nothing
        more; MaestroMotif: r_int per skill)."""

    def drain(self) -> dict[str, float]:
        """The sums since the last call (then reset), with the cache size."""
        totals, self.totals = self.totals, Counter()
        return {**totals, "distinct_captions": len(self.shaper.intrinsic.cache)}


class IntrinsicRewardLearnerMixin:
    """Puts `IntrinsicRewardConnector` first in the learner's connector pipeline, ahead
    of the pieces the algorithm adds when it builds (APPO and PPO both prepend
    `AddOneTsToEpisodesAndTruncate`, which must see the combined rewards, not the raw
    ones), and counts gradient updates. Settings come from
    `config.learner_config_dict[SETTINGS_KEY]`, the connector's keyword arguments (and,
    under `connector_class`, a subclass to build instead: MaestroMotif's per-skill
    rewards); without them the learner trains on the env reward."""

    def build(self) -> None:
        super().build()
        self.gradient_updates = 0
        settings = dict(self.config.learner_config_dict.get(SETTINGS_KEY) or {})
        self.intrinsic_reward_connector = None
        if settings and self._learner_connector is not None:
            connector_class = settings.pop("connector_class", IntrinsicRewardConnector)
            self.intrinsic_reward_connector = connector_class(**settings)
            self._learner_connector.prepend(self.intrinsic_reward_connector)

    def apply_gradients(self, gradients_dict) -> None:
        super().apply_gradients(gradients_dict)
        self.gradient_updates += 1

    def drain_stats(self) -> dict[str, float]:
        """Gradient updates and the connector's sums since the last call. Read by the
        driver every iteration: RLlib's own learner metrics reach the driver late under
        APPO (its learner thread reports once per replayed batch, the driver reads one
        report per update), so per-iteration figures are taken here instead."""
        updates, self.gradient_updates = self.gradient_updates, 0
        stats = {"gradient_updates": updates}
        if self.intrinsic_reward_connector is not None:
            stats.update(self.intrinsic_reward_connector.drain())
        return stats


class IntrinsicRewardAPPOLearner(IntrinsicRewardLearnerMixin, MaestroAPPOLearner):
    """Maestro's APPO torch learner (`maestro.rl.appo`) with Motif's reward."""


class IntrinsicRewardPPOLearner(IntrinsicRewardLearnerMixin, PPOTorchLearner):
    """RLlib's PPO torch learner with Motif's reward."""


def learner_settings(
    reward_model: RewardModel, intrinsic: IntrinsicRewardConfig, threshold: float | None = None
) -> dict[str, Any]:
    """The `learner_config_dict` entry that turns the connector on."""
    return {
        SETTINGS_KEY: {
            "reward_model": reward_model.to_bytes(),
            "intrinsic": intrinsic.model_dump(),
            "threshold": threshold,
        }
    }


def intrinsic_metrics(learner: dict[str, float]) -> dict[str, float]:
    """Tracker metrics of the connector's sums over one iteration (`learner`: from
    `maestro.rl.results.learner_stats`): per-episode means over the episodes whose last
    fragment was shaped, r_int per step, and the connector's cost and cache size."""
    metrics: dict[str, float] = {}
    if learner.get("episodes"):
        metrics["train/intrinsic_return"] = learner["intrinsic_return_sum"] / learner["episodes"]
        metrics["train/learner_extrinsic_return"] = (
            learner["extrinsic_return_sum"] / learner["episodes"]
        )
    if learner.get("steps"):
        metrics["train/intrinsic_reward_per_step"] = (
            learner["intrinsic_reward_sum"] / learner["steps"]
        )
        metrics["intrinsic/seconds_per_1k_steps"] = 1000 * learner["seconds"] / learner["steps"]
        metrics["intrinsic/fragments_without_predecessor"] = learner.get(
            "fragments_without_predecessor", 0
        )
        metrics["intrinsic/distinct_captions"] = learner.get("distinct_captions", 0)
    return finite(metrics)
