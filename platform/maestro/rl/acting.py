"""How an env runner turns its envs' observations into a batch for the RLModule and the
module's output back into actions: one connector piece each way, in place of RLlib's
default pipelines (seven pieces to the module, six back).

RLlib's defaults keep every column as per-episode lists and walk them with nested-structure
helpers at each piece: on the NetHack agent's env runner they took a quarter of its time
(docs/performance.md). These two do the same work for a single-agent env with a flat
observation (an array or a dict of arrays) and a module with discrete actions, stateful or
not, on whole arrays:

- `EnvToModule`: each episode's last observation, stacked; for a stateful module a time
  axis of one step and `STATE_IN`, the episode's last `STATE_OUT` or the module's initial
  state when it has none yet.
- `ModuleToEnv`: actions drawn from `ACTION_DIST_INPUTS` with the module's exploration
  distribution (its inference distribution made deterministic when not exploring), their
  log-probabilities, the time axis removed, and per-env items for the episodes.

They consume the same random numbers and produce the same values, dtypes and shapes as
RLlib's defaults (`tests/test_rllib_speed.py` samples with both and compares), so training
with them is the same training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns


def stack(items: list[Any]) -> Any:
    """Per-env arrays (or flat dicts of arrays) stacked on a new first axis."""
    if isinstance(items[0], dict):
        return {key: np.stack([item[key] for item in items]) for key in items[0]}
    return np.stack(items)


def to_tensor(batch: Any) -> Any:
    """Arrays (or a flat dict of arrays) as torch tensors sharing their memory."""
    if isinstance(batch, dict):
        return {key: torch.from_numpy(value) for key, value in batch.items()}
    return torch.from_numpy(batch)


def add_time_axis(tensors: Any) -> Any:
    """[B, ...] -> [B, 1, ...], for a tensor or a flat dict of them."""
    if isinstance(tensors, dict):
        return {key: value.unsqueeze(1) for key, value in tensors.items()}
    return tensors.unsqueeze(1)


class EnvToModule(ConnectorV2):
    """The module's acting batch from the env runner's ongoing episodes (see the module
    docstring)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        obs = to_tensor(stack([episode.get_observations(-1) for episode in episodes]))
        if not rl_module.is_stateful():
            batch[Columns.OBS] = obs
            return batch
        batch[Columns.OBS] = add_time_axis(obs)
        initial = rl_module.get_initial_state()
        states = [
            episode.get_extra_model_outputs(key=Columns.STATE_OUT, indices=-1)
            if Columns.STATE_OUT in episode.extra_model_outputs
            and not (episode.t_started == 0 and len(episode) == 0)
            else initial
            for episode in episodes
        ]
        batch[Columns.STATE_IN] = to_tensor(stack(states))
        return batch


class ModuleToEnv(ConnectorV2):
    """Actions for the envs and per-env outputs for the episodes from the module's output
    (see the module docstring)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        logits = batch[Columns.ACTION_DIST_INPUTS]
        if explore:
            distribution = rl_module.get_exploration_action_dist_cls().from_logits(logits)
        else:
            distribution = rl_module.get_inference_action_dist_cls().from_logits(logits)
            distribution = distribution.to_deterministic()
        actions = distribution.sample()
        logp = distribution.logp(actions)
        if rl_module.is_stateful():  # drop the time axis of one step
            logits, actions, logp = logits[:, 0], actions[:, 0], logp[:, 0]
        out = {
            # int32 and float32, as RLlib's TensorToNumpy makes them.
            Columns.ACTIONS: actions.numpy().astype(np.int32),
            Columns.ACTION_LOGP: list(logp.numpy()),
            Columns.ACTION_DIST_INPUTS: list(logits.numpy()),
        }
        if Columns.STATE_OUT in batch:
            state = {key: value.numpy() for key, value in batch[Columns.STATE_OUT].items()}
            out[Columns.STATE_OUT] = [
                {key: value[i] for key, value in state.items()} for i in range(len(episodes))
            ]
        others = set(batch) - set(out)
        if others:
            raise ValueError(
                f"ModuleToEnv passes on actions, log-probabilities, action distribution "
                f"inputs and state only; the module's acting output also has {sorted(others)}"
            )
        return out


# The factories `AlgorithmConfig.env_runners` takes (functions of the env, its spaces and
# the device), named so that a pickled config refers to them.
def env_to_module(env=None, spaces=None, device=None) -> EnvToModule:
    return EnvToModule()


def module_to_env(env=None, spaces=None) -> ModuleToEnv:
    return ModuleToEnv()
