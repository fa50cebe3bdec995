"""The prompt as the transformer sees it: one text context per stream."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ConditioningError(ValueError):
    """A text context of the wrong shape for the model."""


@dataclass(frozen=True)
class TextConditioning:
    """Video and audio text contexts [B, tokens, caption_channels], before the caption
    projections, and an optional padding mask [B, tokens] (True = a real token)."""

    video: torch.Tensor
    audio: torch.Tensor
    mask: torch.Tensor | None = None

    @classmethod
    def from_joint(cls, context: torch.Tensor, caption_channels: int, mask: torch.Tensor | None = None) -> "TextConditioning":
        """Split ComfyUI's LTX-2 context [B, tokens, 2 * width] into its video and audio halves."""
        if context.ndim != 3 or context.shape[-1] != 2 * caption_channels:
            raise ConditioningError(
                f"expected an LTX-2 text context [batch, tokens, {2 * caption_channels}] "
                f"(video and audio contexts of width {caption_channels} side by side, as "
                f"LTXAVTextEncoderLoader + CLIPTextEncode produce), got shape {tuple(context.shape)}"
            )
        return cls(context[..., :caption_channels], context[..., caption_channels:], mask)

    def validate(self, caption_channels: int, batch: int | None = None) -> None:
        for name, tensor in (("video", self.video), ("audio", self.audio)):
            if tensor.ndim != 3 or tensor.shape[-1] != caption_channels:
                raise ConditioningError(
                    f"{name} text context must be [batch, tokens, {caption_channels}], got {tuple(tensor.shape)}"
                )
        if self.video.shape[:2] != self.audio.shape[:2]:
            raise ConditioningError(
                f"video and audio text contexts differ in batch or length: "
                f"{tuple(self.video.shape)} vs {tuple(self.audio.shape)}"
            )
        if batch is not None and self.video.shape[0] not in (1, batch):
            raise ConditioningError(f"text context batch {self.video.shape[0]} does not fit a batch of {batch}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.video.shape[:2]):
            raise ConditioningError(
                f"text mask must be [batch, tokens] = {tuple(self.video.shape[:2])}, got {tuple(self.mask.shape)}"
            )

    def lerp(self, other: "TextConditioning", weight: float) -> "TextConditioning":
        """Blend towards ``other`` (prompt switching over several blocks)."""
        if self.video.shape != other.video.shape:
            raise ConditioningError(
                f"cannot blend text contexts of shapes {tuple(self.video.shape)} and {tuple(other.video.shape)}"
            )
        return TextConditioning(
            torch.lerp(self.video, other.video, weight), torch.lerp(self.audio, other.audio, weight), other.mask
        )
