"""The NetHack agent as an RLlib (new API stack) torch RLModule.

Four parts (the paper's agent: `screen: crop`, `core: gru`; docs/methods/motif.md):
- screen encoder: the terminal characters (and, optionally, their colours) as learned
  embeddings, then a small stride-2 CNN and a linear layer; over the whole 24x80 screen
  (`screen: full`) or, as in the paper, over a window centred on the player (`screen:
  crop`, 12x12 in the paper, which renders it to pixels: see `crop_around`);
- message encoder: the 256-byte message line as byte embeddings, a 1-d convolution and a
  mean over the message's non-NUL bytes;
- bottom-line stats: the 27 `blstats` numbers, log-scaled (they span 0..10^6), through an
  MLP; where the observation has a `skill` (MaestroMotif's active skill, an index), its
  one-hot joins the stats, as in MaestroMotif's network;
- core: the three codes concatenated and projected, then a recurrent core, an LSTM
  (`core: lstm`) or the paper's GRU (`core: gru`), through RLlib's stateful-module support
  (`max_seq_len` steps per training sequence), or an MLP (`core: mlp`, no state).

A policy head (23 NetHack actions) and a value head (`ValueFunctionAPI`) read the core's
output. For APPO the module also implements `TargetNetworkAPI`: the target network is a
copy of the policy path (encoders, core, policy head).

Sizes live in `AgentConfig`; its defaults are a small CPU agent with the whole screen and
an LSTM; the `full` preset of `jobs/motif/quickstart.yaml` sets the paper's scale.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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
# A blank cell: the space character in colour 0 (the same id with or without colours).
BLANK_CELL = ord(" ")
AGENT_KEY = "nethack_agent"
# The recurrent state each core carries from step to step.
CORE_STATE: dict[str, tuple[str, ...]] = {"lstm": ("h", "c"), "gru": ("h",), "mlp": ()}


class AgentConfig(BaseModel):
    """The NetHack agent's encoders, core and sizes (the defaults: a small CPU agent over the
    whole screen with an LSTM core)."""

    model_config = ConfigDict(extra="forbid")

    screen: Literal["full", "crop"] = Field(
        default="full",
        description="'full': the whole 24x80 terminal; 'crop': a crop_size x crop_size "
        "window centred on the cursor (the player), the paper's (as embedded characters, "
        "where the paper renders pixels)",
    )
    crop_size: int = Field(default=12, ge=1, description="side of the window of `screen: crop`")
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
    message_kernel: int = Field(
        default=5, ge=1, description="odd, so each byte's code is centred on the byte"
    )
    message_dim: int = Field(default=32, ge=1, description="message code size")
    blstats_dim: int = Field(default=32, ge=1, description="bottom-line stats code size")
    core_dim: int = Field(default=128, ge=1, description="core width")
    core: Literal["lstm", "gru", "mlp"] = Field(
        default="lstm",
        description="'lstm', 'gru' (the paper's) or 'mlp' (no recurrent state). The older "
        "key `use_lstm: true|false` is read as 'lstm'|'mlp'; with both keys they must agree",
    )
    max_seq_len: int | None = Field(
        default=None,
        ge=1,
        description="recurrent training sequence length; None: one per rollout fragment",
    )

    @model_validator(mode="before")
    @classmethod
    def read_use_lstm(cls, data: Any) -> Any:
        """`use_lstm` (specs and checkpoints from before `core`) becomes `core`."""
        if not isinstance(data, dict) or "use_lstm" not in data:
            return data
        data = dict(data)
        use_lstm = data.pop("use_lstm")
        if not isinstance(use_lstm, bool):
            raise ValueError(f"use_lstm: expected true or false (got {use_lstm!r})")
        core = "lstm" if use_lstm else "mlp"
        if data.setdefault("core", core) != core:
            raise ValueError(f"use_lstm: {use_lstm} conflicts with core: {data['core']}")
        return data

    @field_validator("message_kernel")
    @classmethod
    def odd_kernel(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"message_kernel: expected an odd width (got {kernel})")
        return kernel

    @property
    def recurrent(self) -> bool:
        """Whether the core carries a state from step to step."""
        return bool(CORE_STATE[self.core])


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): bottom-line numbers (gold, score, turn) on one scale."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def crop_around(cells: torch.Tensor, cursor: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` x `size` windows [N, size, size] of `cells` [N, rows, columns] whose cell
    (size // 2, size // 2) is the `cursor` [N, 2] (row, column) cell; cells off the screen
    are `BLANK_CELL`. One gather over a padded screen, no loop over the batch.

    The paper renders this crop to pixels (its code draws each character in its colour
    with a TrueType font); here the cells are embedded like the whole screen's: NLE 1.3's
    Python API has no glyph-to-pixel renderer without extra assets (a font or tiles), and
    the (character, colour) cells carry the same symbols."""
    n, rows, columns = cells.shape
    before, after = size // 2, size - 1 - size // 2
    padded = nn.functional.pad(cells, (before, after, before, after), value=BLANK_CELL)
    # Clamped: RLlib's dummy batches sample cursors anywhere in the space (0..255).
    row = cursor[:, 0].long().clamp(0, rows - 1)
    column = cursor[:, 1].long().clamp(0, columns - 1)
    # A window's first padded row (column) is the cursor's row (column) on the screen.
    offsets = torch.arange(size, device=cells.device)
    window_rows = (row[:, None] + offsets)[:, :, None]
    window_columns = (column[:, None] + offsets)[:, None, :]
    index = window_rows * padded.shape[2] + window_columns
    return padded.reshape(n, -1).gather(1, index.reshape(n, -1)).reshape(n, size, size)


def cut_nul_tail(message: torch.Tensor, kernel: int) -> torch.Tensor:
    """`message` [N, L] without the columns after the batch's last non-NUL byte and the
    `kernel`-wide convolution's reach past it: the mean over non-NUL bytes reads none of
    them, and NetHack's messages rarely fill a tenth of their 256 bytes. One column
    stays when every message is empty."""
    used = (message != 0).any(dim=0).nonzero()
    end = int(used[-1]) + 1 + kernel // 2 if len(used) else 1
    return message[:, :end]


def lookup(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """`embedding(ids)` by `index_select`: its backward (index_add) is much faster on CPU
    than `nn.Embedding`'s dense backward for screen-sized inputs."""
    return embedding.weight.index_select(0, ids.reshape(-1)).reshape(*ids.shape, -1)


class NetHackTrunk(nn.Module):
    """Screen, message and stats encoders plus the core: observations -> features."""

    def __init__(self, config: AgentConfig, blstats_size: int, num_skills: int = 0):
        super().__init__()
        self.config = config
        self.num_skills = num_skills
        cells = 256 * (NUM_COLORS if config.use_colors else 1)
        self.cells = nn.Embedding(cells, config.char_embedding_dim)
        screen_in = config.char_embedding_dim
        layers: list[nn.Module] = []
        for channels in config.screen_channels:
            layers += [nn.Conv2d(screen_in, channels, 3, stride=2, padding=1), nn.ELU()]
            screen_in = channels
        self.screen_cnn = nn.Sequential(*layers, nn.Flatten())
        grid = (config.crop_size,) * 2 if config.screen == "crop" else (SCREEN_ROWS, SCREEN_COLUMNS)
        with torch.no_grad():
            channels_first = torch.zeros(1, config.char_embedding_dim, *grid)
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
            nn.Linear(blstats_size + num_skills, config.blstats_dim),
            nn.ELU(),
            nn.Linear(config.blstats_dim, config.blstats_dim),
            nn.ELU(),
        )
        fused = config.screen_dim + config.message_dim + config.blstats_dim
        self.fuse = nn.Sequential(nn.Linear(fused, config.core_dim), nn.ELU())
        if config.core == "lstm":
            self.core = nn.LSTM(config.core_dim, config.core_dim, batch_first=True)
        elif config.core == "gru":
            self.core = nn.GRU(config.core_dim, config.core_dim, batch_first=True)
        else:
            self.core = nn.Sequential(nn.Linear(config.core_dim, config.core_dim), nn.ELU())

    def screen_cells(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The cell ids the screen encoder embeds, [N, rows, columns] of flat observations:
        character + 256 * colour (colour 0 without `use_colors`), over the whole screen or
        the crop around the cursor."""
        cells = obs["tty_chars"].long()
        if self.config.use_colors:
            cells = cells + 256 * obs["tty_colors"].long().clamp(0, NUM_COLORS - 1)
        if self.config.screen == "crop":
            cells = crop_around(cells, obs["tty_cursor"], self.config.crop_size)
        return cells

    def message_code(self, message: torch.Tensor) -> torch.Tensor:
        """Codes [N, message_dim] of message lines [N, 256]: byte embeddings, the 1-d
        convolution, its mean over the message's non-NUL bytes (0 for an empty message)."""
        message = message[:, : self.config.message_length].long()
        message = cut_nul_tail(message, self.config.message_kernel)
        present = (message != 0).unsqueeze(1).float()
        conv = torch.relu(self.message_conv(lookup(self.message_bytes, message).transpose(1, 2)))
        pooled = (conv * present).sum(-1) / present.sum(-1).clamp(min=1.0)
        return self.message_head(pooled)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-step codes [N, core_dim] of flat (no time axis) observations."""
        screen = lookup(self.cells, self.screen_cells(obs)).permute(0, 3, 1, 2)
        screen = self.screen_head(self.screen_cnn(screen))

        message_code = self.message_code(obs["message"])

        stats = signed_log(obs["blstats"].float())
        if self.num_skills:
            skill = nn.functional.one_hot(obs["skill"].long(), self.num_skills)
            stats = torch.cat([stats, skill.float()], dim=-1)
        stats = self.blstats(stats)
        return self.fuse(torch.cat([screen, message_code, stats], dim=-1))

    def forward(
        self, obs: dict[str, torch.Tensor], state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Features and next recurrent state. With a recurrent core, observations are
        [B, T, ...], `state` holds `CORE_STATE[core]` as [B, core_dim] tensors and the
        output is [B, T, core_dim]; with the MLP core, [N, ...] -> [N, core_dim]."""
        if not self.config.recurrent:
            return self.core(self.encode(obs)), {}
        batch, time = obs["message"].shape[:2]
        flat = {k: v.reshape(batch * time, *v.shape[2:]) for k, v in obs.items()}
        codes = self.encode(flat).reshape(batch, time, -1)
        if self.config.core == "gru":
            features, h = self.core(codes, state["h"].unsqueeze(0))
            return features, {"h": h.squeeze(0)}
        h, c = state["h"].unsqueeze(0), state["c"].unsqueeze(0)
        features, (h, c) = self.core(codes, (h, c))
        return features, {"h": h.squeeze(0), "c": c.squeeze(0)}


class NetHackRLModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI):
    """Motif's NetHack actor-critic for RLlib PPO and APPO."""

    def setup(self) -> None:
        self.agent_config = AgentConfig(**self.model_config[AGENT_KEY])
        blstats_size = self.observation_space["blstats"].shape[0]
        skill_space = self.observation_space.spaces.get("skill")
        num_skills = int(skill_space.n) if skill_space is not None else 0
        self.trunk = NetHackTrunk(self.agent_config, blstats_size, num_skills)
        self.pi = nn.Linear(self.agent_config.core_dim, self.action_space.n)
        self.vf = nn.Linear(self.agent_config.core_dim, 1)

    def get_initial_state(self) -> dict[str, np.ndarray]:
        """Zeros for each of the core's state tensors; none (not stateful) for the MLP."""
        size = self.agent_config.core_dim
        return {
            name: np.zeros(size, dtype=np.float32) for name in CORE_STATE[self.agent_config.core]
        }

    def _features(self, batch: dict[str, Any], trunk: NetHackTrunk):
        return trunk(batch[Columns.OBS], batch.get(Columns.STATE_IN))

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, state = self._features(batch, self.trunk)
        out = {Columns.ACTION_DIST_INPUTS: self.pi(features)}
        if state:
            out[Columns.STATE_OUT] = state
        return out

    def forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self.act(batch)

    def forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self.act(batch)

    def act(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`_forward` without autograd, for acting. Unlike TorchRLModule's acting passes it
        does not switch every submodule to eval mode and back on each call (2% of an env
        runner's time): nothing in this module computes differently in the two modes."""
        with torch.inference_mode():
            return self._forward(batch)

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
