"""The prompt as the transformer sees it: one text context per stream."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        for name, tensor in (("video", self.video), ("audio", self.audio)):
            # One NaN in the context spreads through every block's cross-attention: refuse it here.
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                raise ConditioningError(
                    f"the {name} text context holds {int((~finite).sum())} NaN/Inf value(s) of {tensor.numel()}: the "
                    "text encoder's output is broken (an fp16 overflow in the encoder, or a damaged prompt context "
                    "file); encode the prompt again, in bf16 or fp32"
                )

    def to(self, device: torch.device | str) -> "TextConditioning":
        mask = None if self.mask is None else self.mask.to(device)
        return TextConditioning(self.video.to(device), self.audio.to(device), mask)

    def lerp(self, other: "TextConditioning", weight: float) -> "TextConditioning":
        """Blend towards ``other`` (prompt switching over several blocks)."""
        if self.video.shape != other.video.shape:
            raise ConditioningError(
                f"cannot blend text contexts of shapes {tuple(self.video.shape)} and {tuple(other.video.shape)}"
            )
        # A token stays visible while either prompt still weighs on it.
        mask = None if self.mask is None or other.mask is None else self.mask.bool() | other.mask.bool()
        return TextConditioning(torch.lerp(self.video, other.video, weight), torch.lerp(self.audio, other.audio, weight), mask)


def save_text_conditioning(path: str | Path, text: TextConditioning) -> None:
    """Save a prompt's contexts (e.g. from ComfyUI's LTX-2 text encoder) for the standalone command."""
    from safetensors.torch import save_file

    tensors = {"video": text.video.contiguous().cpu(), "audio": text.audio.contiguous().cpu()}
    if text.mask is not None:
        tensors["mask"] = text.mask.contiguous().cpu()
    save_file(tensors, str(path))


def load_text_conditioning(path: str | Path, caption_channels: int) -> TextConditioning:
    """Read a file written by ``save_text_conditioning`` (or one joint ``context`` tensor
    [B, tokens, 2 * width] in ComfyUI's LTX-2 layout)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ConditioningError(f"could not read the prompt context file {path}: {exc}") from exc
    if "context" in tensors:
        text = TextConditioning.from_joint(tensors["context"].float(), caption_channels, tensors.get("mask"))
    elif {"video", "audio"} <= tensors.keys():
        text = TextConditioning(tensors["video"].float(), tensors["audio"].float(), tensors.get("mask"))
    else:
        raise ConditioningError(
            f"{path} holds {sorted(tensors)}; a prompt context file needs 'video' and 'audio' "
            "tensors (or one joint 'context' tensor)"
        )
    text.validate(caption_channels)
    return text
