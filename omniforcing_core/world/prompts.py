"""A small learned text encoder for the world's prompt language, in place of Gemma.

Words of the closed vocabulary (``grammar.VOCABULARY``) are embedded with their
positions, mixed by a few pre-norm transformer layers and projected to the video and
audio text contexts the transformer takes (``TextConditioning``, width
``caption_channels``), padded to a fixed token count with a mask. The empty prompt ""
is the learned null context for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..conditioning import TextConditioning
from ..config import ConfigError
from .grammar import VOCABULARY, words

PAD_ID = 0  # token ids are 1 + the word's index in VOCABULARY
PROMPT_ENCODER_PREFIX = "prompt_encoder."  # its keys in the demo's base file


@dataclass(frozen=True)
class WorldPromptConfig:
    """Architecture of the world prompt encoder (the ``prompt_encoder`` metadata section)."""

    caption_channels: int = 32
    width: int = 64
    num_layers: int = 2
    heads: int = 4
    ffn_mult: int = 4
    max_tokens: int = 16

    def __post_init__(self) -> None:
        for name in ("caption_channels", "width", "num_layers", "heads", "ffn_mult", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"WorldPromptConfig.{name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ConfigError(f"WorldPromptConfig.width={self.width} must be divisible by heads={self.heads}")

    def to_metadata(self) -> dict[str, Any]:
        """The ``prompt_encoder`` section; the vocabulary travels with the weights."""
        return {
            "caption_channels": self.caption_channels,
            "width": self.width,
            "num_layers": self.num_layers,
            "heads": self.heads,
            "ffn_mult": self.ffn_mult,
            "max_tokens": self.max_tokens,
            "vocabulary": list(VOCABULARY),
        }

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any]) -> "WorldPromptConfig":
        """Read the ``prompt_encoder`` section; missing values take the defaults."""
        if not isinstance(section, Mapping):
            raise ConfigError(f"prompt_encoder metadata must be a JSON object, got {type(section).__name__}")
        vocabulary = section.get("vocabulary", list(VOCABULARY))
        if list(vocabulary) != list(VOCABULARY):
            raise ConfigError(
                "prompt_encoder metadata was trained on another vocabulary "
                f"({list(vocabulary)}); this build's world grammar has {list(VOCABULARY)}"
            )
        default = cls()
        try:
            values = {name: int(section.get(name, getattr(default, name)))
                      for name in ("caption_channels", "width", "num_layers", "heads", "ffn_mult", "max_tokens")}
        except (TypeError, ValueError) as error:
            raise ConfigError(f"prompt_encoder metadata holds a value of the wrong type: {error}") from error
        return replace(default, **values)


class WorldPromptEncoder(nn.Module):
    def __init__(self, config: WorldPromptConfig = WorldPromptConfig()) -> None:
        super().__init__()
        self.config = config
        width, channels = config.width, config.caption_channels
        self.token_embedding = nn.Embedding(len(VOCABULARY) + 1, width, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(config.max_tokens, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, config.heads, config.ffn_mult * width, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.video_out = nn.Linear(width, channels)
        self.audio_out = nn.Linear(width, channels)
        self.null_video = nn.Parameter(0.02 * torch.randn(config.max_tokens, channels))
        self.null_audio = nn.Parameter(0.02 * torch.randn(config.max_tokens, channels))

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, max_tokens] (PAD_ID after the prompt) and the mask of real tokens.
        Raises ValueError for a word outside the vocabulary or a prompt too long."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        limit = self.config.max_tokens
        ids = torch.full((len(prompts), limit), PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = words(prompt)
            if len(tokens) > limit:
                raise ValueError(f"the prompt {prompt!r} has {len(tokens)} words; the encoder takes at most {limit}")
            ids[row, : len(tokens)] = torch.tensor([1 + VOCABULARY.index(t) for t in tokens], dtype=torch.long)
        return ids, ids != PAD_ID

    def forward(self, prompts: str | Sequence[str] | torch.Tensor) -> TextConditioning:
        """Contexts of prompts, or of token ids [B, max_tokens] as ``tokenize`` makes them
        (what training data stores; all padding is the null prompt)."""
        ids = prompts if isinstance(prompts, torch.Tensor) else self.tokenize(prompts)[0]
        if ids.ndim != 2 or ids.shape[1] != self.config.max_tokens:
            raise ValueError(f"prompt token ids must be [batch, {self.config.max_tokens}], got {list(ids.shape)}")
        ids = ids.to(self.position_embedding.device)
        mask = ids != PAD_ID
        null = ~mask.any(dim=1)
        hidden = self.token_embedding(ids) + self.position_embedding
        # An empty prompt attends to its first (padding) slot so no row is all masked;
        # its output is replaced by the null context below.
        padding = ~mask
        padding[null, 0] = False
        for layer in self.layers:
            hidden = layer(hidden, src_key_padding_mask=padding)
        hidden = self.norm(hidden)
        keep = mask.unsqueeze(-1).to(hidden.dtype)
        video = self.video_out(hidden) * keep
        audio = self.audio_out(hidden) * keep
        rows = null.view(-1, 1, 1)
        video = torch.where(rows, self.null_video.expand_as(video), video)
        audio = torch.where(rows, self.null_audio.expand_as(audio), audio)
        return TextConditioning(video, audio, mask | null.unsqueeze(1))
