"""The prompt encoder trained with a teacher: token ids -> text contexts of both streams.

Id 0 is padding and an all-padding prompt is the null prompt of classifier-free
guidance; both are learned rows like any other token, so no attention row is ever empty.
"""

from __future__ import annotations

import torch
from torch import nn

from ..conditioning import TextConditioning


class TokenPromptEncoder(nn.Module):
    def __init__(self, vocab: int, tokens: int, channels: int):
        super().__init__()
        self.tokens = tokens
        self.video = nn.Embedding(vocab, channels)
        self.audio = nn.Embedding(vocab, channels)
        self.position = nn.Parameter(torch.zeros(tokens, channels))
        nn.init.normal_(self.video.weight, std=1.0)
        nn.init.normal_(self.audio.weight, std=1.0)

    def forward(self, ids: torch.Tensor) -> TextConditioning:
        if ids.ndim != 2 or ids.shape[1] != self.tokens:
            raise ValueError(f"prompt ids must be [batch, {self.tokens}], got {list(ids.shape)}")
        return TextConditioning(self.video(ids) + self.position, self.audio(ids) + self.position)

    def null(self, batch: int, device=None) -> TextConditioning:
        return self(torch.zeros(batch, self.tokens, dtype=torch.long, device=device))
