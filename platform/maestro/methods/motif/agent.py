"""The NetHack agent as an RLlib (new API stack) torch RLModule.

Four parts, as in Motif's agent (the "Chaotic Dwarven GPT-5" NetHack baseline):
- screen encoder: the 24x80 terminal characters (and, optionally, their colours) as
  learned embeddings, then a small stride-2 CNN and a linear layer;
- message encoder: the 256-byte message line as byte embeddings, a 1-d convolution and a
  mean over the message's non-NUL bytes;
- bottom-line stats: the 27 `blstats` numbers, log-scaled (they span 0..10^6), through an
  MLP;
- core: the three codes concatenated and projected, then an LSTM (RLlib's stateful-module
  support: `max_seq_len` steps per training sequence) or, with `use_lstm: false`, an MLP.

A policy head (23 NetHack actions) and a value head (`ValueFunctionAPI`) read the core's
output. For APPO the module also implements `TargetNetworkAPI`: the target network is a
copy of the policy path (encoders, core, policy head).

Sizes live in `AgentConfig`; its defaults are a small CPU agent; the `full` preset of
`jobs/motif/quickstart.yaml` sets the paper's scale (a 512-wide LSTM).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import (
    TARGET_NETWORK_ACTION_DIST_INPUTS,
    TargetNetworkAPI,
    ValueFunctionAPI,
)
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

SCREEN_ROWS, SCREEN_COLUMNS = 24, 80
MESSAGE_BYTES = 256
NUM_COLORS = 32
AGENT_KEY = "nethack_agent"


class AgentConfig(BaseModel):
    """Sizes of the NetHack agent (the defaults are a small CPU agent)."""

    model_config = ConfigDict(extra="forbid")

    char_embedding_dim: int = Field(default=8, ge=1, description="per screen cell")
    use_colors: bool = Field(
        default=True, description="embed (character, colour) pairs, not characters alone"
    )
    screen_channels: list[int] = Field(
        default_factory=lambda: [16, 16], min_length=1, description="stride-2 conv layers"
    )
    screen_dim: int = Field(default=128, ge=1, description="screen code size")
    message_length: int = Field(
        default=128, ge=8, le=MESSAGE_BYTES, description="message bytes read (the rest is cut)"
    )
    message_embedding_dim: int = Field(default=8, ge=1, description="per message byte")
    message_channels: int = Field(default=32, ge=1)
    message_kernel: int = Field(default=5, ge=1)
    message_dim: int = Field(default=32, ge=1, description="message code size")
    blstats_dim: int = Field(default=32, ge=1, description="bottom-line stats code size")
    core_dim: int = Field(default=128, ge=1, description="LSTM (or MLP) width")
    use_lstm: bool = Field(default=True, description="recurrent core; else an MLP core")
    max_seq_len: int | None = Field(
        default=None,
        ge=1,
        description="LSTM training sequence length; None: one per rollout fragment",
    )


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): bottom-line numbers (gold, score, turn) on one scale."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def lookup(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """`embedding(ids)` by `index_select`: its backward (index_add) is much faster on CPU
    than `nn.Embedding`'s dense backward for screen-sized inputs."""
    return embedding.weight.index_select(0, ids.reshape(-1)).reshape(*ids.shape, -1)


class NetHackTrunk(nn.Module):
    """Screen, message and stats encoders plus the core: observations -> features."""

    def __init__(self, config: AgentConfig, blstats_size: int):
        super().__init__()
        self.config = config
        cells = 256 * (NUM_COLORS if config.use_colors else 1)
        self.cells = nn.Embedding(cells, config.char_embedding_dim)
        screen_in = config.char_embedding_dim
        layers: list[nn.Module] = []
        for channels in config.screen_channels:
            layers += [nn.Conv2d(screen_in, channels, 3, stride=2, padding=1), nn.ELU()]
            screen_in = channels
        self.screen_cnn = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            channels_first = torch.zeros(1, config.char_embedding_dim, SCREEN_ROWS, SCREEN_COLUMNS)
            flat = self.screen_cnn(channels_first).shape[1]
        self.screen_head = nn.Sequential(nn.Linear(flat, config.screen_dim), nn.ELU())

        self.message_bytes = nn.Embedding(256, config.message_embedding_dim)
        self.message_conv = nn.Conv1d(
            config.message_embedding_dim,
            config.message_channels,
            config.message_kernel,
            padding=config.message_kernel // 2,
        )
        self.message_head = nn.Sequential(
            nn.Linear(config.message_channels, config.message_dim), nn.ELU()
        )

        self.blstats = nn.Sequential(
            nn.Linear(blstats_size, config.blstats_dim),
            nn.ELU(),
            nn.Linear(config.blstats_dim, config.blstats_dim),
            nn.ELU(),
        )
        fused = config.screen_dim + config.message_dim + config.blstats_dim
        self.fuse = nn.Sequential(nn.Linear(fused, config.core_dim), nn.ELU())
        if config.use_lstm:
            self.core = nn.LSTM(config.core_dim, config.core_dim, batch_first=True)
        else:
            self.core = nn.Sequential(nn.Linear(config.core_dim, config.core_dim), nn.ELU())

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-step codes [N, core_dim] of flat (no time axis) observations."""
        cells = obs["tty_chars"].long()
        if self.config.use_colors:
            cells = cells + 256 * obs["tty_colors"].long().clamp(0, NUM_COLORS - 1)
        screen = lookup(self.cells, cells).permute(0, 3, 1, 2)
        screen = self.screen_head(self.screen_cnn(screen))

        message = obs["message"][:, : self.config.message_length].long()
        present = (message != 0).unsqueeze(1).float()
        conv = torch.relu(self.message_conv(lookup(self.message_bytes, message).transpose(1, 2)))
        # Mean over the message's bytes, NULs (padding) left out; an empty message gives 0.
        pooled = (conv * present).sum(-1) / present.sum(-1).clamp(min=1.0)
        message_code = self.message_head(pooled)

        stats = self.blstats(signed_log(obs["blstats"].float()))
        return self.fuse(torch.cat([screen, message_code, stats], dim=-1))

    def forward(
        self, obs: dict[str, torch.Tensor], state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Features and next recurrent state. With the LSTM, observations are [B, T, ...]
        and the output [B, T, core_dim]; without it, [N, ...] -> [N, core_dim]."""
        if not self.config.use_lstm:
            return self.core(self.encode(obs)), {}
        batch, time = obs["message"].shape[:2]
        flat = {k: v.reshape(batch * time, *v.shape[2:]) for k, v in obs.items()}
        codes = self.encode(flat).reshape(batch, time, -1)
        h, c = state["h"].unsqueeze(0), state["c"].unsqueeze(0)
        features, (h, c) = self.core(codes, (h, c))
        return features, {"h": h.squeeze(0), "c": c.squeeze(0)}


class NetHackRLModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI):
    """Motif's NetHack actor-critic for RLlib PPO and APPO."""

    def setup(self) -> None:
        self.agent_config = AgentConfig(**self.model_config[AGENT_KEY])
        blstats_size = self.observation_space["blstats"].shape[0]
        self.trunk = NetHackTrunk(self.agent_config, blstats_size)
        self.pi = nn.Linear(self.agent_config.core_dim, self.action_space.n)
        self.vf = nn.Linear(self.agent_config.core_dim, 1)

    def get_initial_state(self) -> dict[str, np.ndarray]:
        if not self.agent_config.use_lstm:
            return {}
        zeros = np.zeros(self.agent_config.core_dim, dtype=np.float32)
        return {"h": zeros, "c": zeros.copy()}

    def _features(self, batch: dict[str, Any], trunk: NetHackTrunk):
        return trunk(batch[Columns.OBS], batch.get(Columns.STATE_IN))

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, state = self._features(batch, self.trunk)
        out = {Columns.ACTION_DIST_INPUTS: self.pi(features)}
        if state:
            out[Columns.STATE_OUT] = state
        return out

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, state = self._features(batch, self.trunk)
        out = {Columns.ACTION_DIST_INPUTS: self.pi(features), Columns.EMBEDDINGS: features}
        if state:
            out[Columns.STATE_OUT] = state
        return out

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings, _ = self._features(batch, self.trunk)
        return self.vf(embeddings).squeeze(-1)

    def make_target_networks(self) -> None:
        self.target_trunk = make_target_network(self.trunk)
        self.target_pi = make_target_network(self.pi)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.trunk, self.target_trunk), (self.pi, self.target_pi)]

    def forward_target(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, _ = self._features(batch, self.target_trunk)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self.target_pi(features)}


def module_spec(config: AgentConfig, rollout_fragment_length: int) -> RLModuleSpec:
    """The RLModuleSpec that builds this agent (spaces come from the env). Without an
    explicit `max_seq_len`, a training sequence spans a whole fragment plus the bootstrap
    step RLlib appends, so sequences are not split and padded to twice their length."""
    max_seq_len = config.max_seq_len or rollout_fragment_length + 1
    return RLModuleSpec(
        module_class=NetHackRLModule,
        model_config={AGENT_KEY: config.model_dump(), "max_seq_len": max_seq_len},
    )
