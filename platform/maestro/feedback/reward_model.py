"""Motif's reward model: a caption encoder and an MLP head giving one scalar per caption.

Two encoders (`RewardModelConfig.encoder`):

- `hashed_bag` (the default, for quick runs): a caption's lower-cased words and word bigrams
  hashed into buckets of an `EmbeddingBag` (mean); no tokenizer download, any message.
- `char_cnn` (the paper's): the caption's latin-1 bytes, NUL-padded or cut to the message
  line's 256 bytes, through a byte embedding, 1-D convolutions with ReLUs and max-pooling,
  flattened, then the MLP head. The default sizes are those of Motif's official code (its
  message encoder `lt_cnn`, then 128 -> 256 -> 512 -> 1).

The saved model carries its normalisation (mean and std of its rewards over the captions of
its training draws) and its threshold eps (`reward_training.py`), so a learner loads one
object and gets r(c) as Motif uses it.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


class RewardModelConfig(BaseModel):
    """The caption reward model: its encoder and sizes. Each size field is read by one
    encoder only (named in its description); the other encoder ignores it."""

    model_config = ConfigDict(extra="forbid")

    encoder: Literal["hashed_bag", "char_cnn"] = Field(
        default="hashed_bag",
        description="hashed_bag: hashed words and bigrams (quick); char_cnn: the paper's "
        "character-level CNN over the message bytes",
    )
    buckets: int = Field(default=1 << 15, ge=64, description="hashed_bag: n-gram vocabulary")
    embedding_dim: int = Field(default=64, ge=4, description="hashed_bag: bucket embedding")
    hidden: int = Field(default=128, ge=4, description="hashed_bag: width of the MLP head")
    message_length: int = Field(
        default=256,
        ge=1,
        description="char_cnn: bytes per caption, NUL-padded or cut (paper text: the "
        "256-byte message line)",
    )
    byte_embedding_dim: int = Field(
        default=32, ge=1, description="char_cnn: width of a byte's embedding (paper text: 32)"
    )
    conv_channels: list[PositiveInt] = Field(
        default=[64, 64, 64, 64, 64, 64],
        min_length=1,
        description="char_cnn: output channels of each convolution (not in the paper text; "
        "read from Motif's code: six of 64)",
    )
    conv_kernel_sizes: list[PositiveInt] = Field(
        default=[7, 7, 3, 3, 3, 3],
        min_length=1,
        description="char_cnn: kernel of each convolution, unpadded (not in the paper text; "
        "read from Motif's code)",
    )
    conv_pool_sizes: list[PositiveInt] = Field(
        default=[3, 3, 1, 1, 1, 3],
        min_length=1,
        description="char_cnn: max-pool window (and stride) after each convolution, 1 for "
        "none (paper text: 'with max-pooling'; read from Motif's code: 3 after the 1st, "
        "2nd and 6th)",
    )
    mlp_widths: list[PositiveInt] = Field(
        default=[128, 256, 512],
        min_length=1,
        description="char_cnn: hidden widths of the MLP head on the flattened convolutions, "
        "each with a ReLU, then one output (paper text: 128 -> 256 -> 512 -> 1)",
    )

    @model_validator(mode="after")
    def _convolutions_fit(self) -> RewardModelConfig:
        layers = {len(self.conv_channels), len(self.conv_kernel_sizes), len(self.conv_pool_sizes)}
        if len(layers) != 1:
            raise ValueError(
                "conv_channels, conv_kernel_sizes and conv_pool_sizes need one entry per "
                "convolution"
            )
        conv_output_length(self)
        return self


def caption_features(caption: str, buckets: int) -> list[int]:
    """Bucket ids of the caption's words and word bigrams (plus one marker, so the empty
    caption has a learnable embedding of its own)."""
    words = WORD.findall(caption.lower())
    grams = ["<s>", *words, *(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))]
    return [zlib.crc32(g.encode()) % buckets for g in grams]


def caption_bytes(captions: list[str], length: int) -> np.ndarray:
    """The captions' latin-1 bytes, NUL-padded or cut to `length`: uint8, (N, length).

    A caption decodes a message line as latin-1 (`envs.nethack.caption`), so this gives back
    its bytes; NUL never occurs in one, so it can pad (as on NetHack's message line)."""
    encoded = np.char.encode(np.asarray(captions, dtype=str), "latin-1")
    return encoded.astype(f"S{length}").view(np.uint8).reshape(len(captions), length)


def conv_output_length(config: RewardModelConfig) -> int:
    """Positions left after the char_cnn convolutions (unpadded) and poolings (floor)."""
    length = config.message_length
    for kernel, pool in zip(config.conv_kernel_sizes, config.conv_pool_sizes, strict=True):
        length = (length - kernel + 1) // pool
        if length < 1:
            raise ValueError(
                f"the char_cnn convolutions and poolings leave no position of a "
                f"{config.message_length}-byte caption"
            )
    return length


def byte_convolutions(config: RewardModelConfig) -> nn.Sequential:
    """char_cnn: the convolutions over the byte embeddings, each with a ReLU and its
    max-pooling."""
    layers: list[nn.Module] = []
    channels = config.byte_embedding_dim
    for out, kernel, pool in zip(
        config.conv_channels, config.conv_kernel_sizes, config.conv_pool_sizes, strict=True
    ):
        layers += [nn.Conv1d(channels, out, kernel), nn.ReLU()]
        if pool > 1:
            layers.append(nn.MaxPool1d(pool))
        channels = out
    return nn.Sequential(*layers)


def mlp(inputs: int, widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths, each followed by a ReLU, then one output."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, 1))


class CaptionRewardNet(nn.Module):
    """Caption -> scalar reward, through the encoder the config names."""

    def __init__(self, config: RewardModelConfig):
        super().__init__()
        self.config = config
        if config.encoder == "hashed_bag":
            self.embed = nn.EmbeddingBag(config.buckets, config.embedding_dim, mode="mean")
            self.head = mlp(config.embedding_dim, [config.hidden])
        else:
            # Byte 0 pads: its embedding stays zero, as in Motif's code.
            self.embed = nn.Embedding(256, config.byte_embedding_dim, padding_idx=0)
            self.convolutions = byte_convolutions(config)
            # Flattened, as in Motif's code (not max-pooled over the line): the head sees
            # where in the line a pattern occurs, and the saved sizes stay the paper's.
            flat = config.conv_channels[-1] * conv_output_length(config)
            self.head = mlp(flat, config.mlp_widths)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """hashed_bag: flat bucket ids and offsets for `EmbeddingBag`."""
        ids: list[int] = []
        offsets: list[int] = []
        for caption in captions:
            offsets.append(len(ids))
            ids.extend(caption_features(caption, self.config.buckets))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def forward(self, captions: list[str]) -> torch.Tensor:
        """One reward per caption: shape (len(captions),)."""
        if self.config.encoder == "hashed_bag":
            ids, offsets = self.encode(captions)
            features = self.embed(ids, offsets)
        else:
            codes = torch.from_numpy(caption_bytes(captions, self.config.message_length))
            embedded = self.embed(codes.long()).transpose(1, 2)  # (N, channels, length)
            features = self.convolutions(embedded).flatten(1)
        return self.head(features).squeeze(-1)


@dataclass
class Normalisation:
    """Dataset statistics of the raw rewards, and the threshold on normalised ones."""

    mean: float
    std: float
    threshold: float


class RewardModel:
    """A trained caption reward model with its normalisation: what the learner uses."""

    def __init__(self, net: CaptionRewardNet, norm: Normalisation):
        self.net = net.eval()
        self.norm = norm

    @torch.no_grad()
    def raw(self, captions: list[str], batch_size: int = 4096) -> np.ndarray:
        """Unnormalised rewards."""
        parts = [
            self.net(captions[i : i + batch_size]).numpy()
            for i in range(0, len(captions), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def normalised(self, captions: list[str]) -> np.ndarray:
        """(r - mean) / std with the dataset statistics."""
        return (self.raw(captions) - self.norm.mean) / self.norm.std

    def to_bytes(self) -> bytes:
        """Weights, sizes and normalisation in one file."""
        buffer = io.BytesIO()
        torch.save(
            {
                "state_dict": self.net.state_dict(),
                "config": self.net.config.model_dump(),
                "normalisation": asdict(self.norm),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RewardModel:
        """Inverse of `to_bytes`."""
        saved = torch.load(io.BytesIO(data), weights_only=True)
        net = CaptionRewardNet(RewardModelConfig(**saved["config"]))
        net.load_state_dict(saved["state_dict"])
        return cls(net, Normalisation(**saved["normalisation"]))

    def describe(self) -> str:
        """One JSON line: sizes and normalisation (for logs and MLflow)."""
        return json.dumps({**self.net.config.model_dump(), **asdict(self.norm)})
