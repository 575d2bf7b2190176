"""Motif's reward model: a caption encoder and an MLP head giving one scalar per caption.

The encoder hashes a caption's lower-cased words and word bigrams into buckets of an
`EmbeddingBag` (mean), so it needs no tokenizer download and handles any NetHack message.
The saved model carries its normalisation (mean and std of its rewards over the collected
dataset) and its threshold eps, so a learner loads one object and gets r(c) as Motif uses it.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


class RewardModelConfig(BaseModel):
    """Sizes of the caption reward model."""

    model_config = ConfigDict(extra="forbid")

    buckets: int = Field(default=1 << 15, ge=64, description="hashed n-gram vocabulary")
    embedding_dim: int = Field(default=64, ge=4)
    hidden: int = Field(default=128, ge=4)


def caption_features(caption: str, buckets: int) -> list[int]:
    """Bucket ids of the caption's words and word bigrams (plus one marker, so the empty
    caption has a learnable embedding of its own)."""
    words = WORD.findall(caption.lower())
    grams = ["<s>", *words, *(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))]
    return [zlib.crc32(g.encode()) % buckets for g in grams]


class CaptionRewardNet(nn.Module):
    """Caption -> scalar reward."""

    def __init__(self, config: RewardModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.EmbeddingBag(config.buckets, config.embedding_dim, mode="mean")
        self.head = nn.Sequential(
            nn.Linear(config.embedding_dim, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1),
        )

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat bucket ids and offsets for `EmbeddingBag`."""
        ids: list[int] = []
        offsets: list[int] = []
        for caption in captions:
            offsets.append(len(ids))
            ids.extend(caption_features(caption, self.config.buckets))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def forward(self, captions: list[str]) -> torch.Tensor:
        ids, offsets = self.encode(captions)
        return self.head(self.embed(ids, offsets)).squeeze(-1)


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
