"""A cheap latent -> RGB preview for when the full video decode cannot keep up.

Each latent cell's 128 channels go through one fixed linear map to RGB, the result is
upsampled bilinearly, and each latent frame is held for the pixel frames it covers, so
a block's preview has the same frame count and size as its decode. That costs a few
hundred multiply-adds per latent cell instead of the VAE's billions.

It is approximate by construction: a linear map cannot render texture or motion within
a latent's 8 frames, only the coarse colour layout. The stream's preview (the pipeline's
``preview`` decode) uses :meth:`LatentPreview.sketch`, a fixed random projection: a
visual sketch that tells regions apart but not their true colours. Given latents and
their decoded frames, :meth:`LatentPreview.fit` learns the map by least squares, which
gives roughly the right colours. The full VAE decode stays the reference output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import SPATIAL_COMPRESSION, video_pixel_interval


class LatentPreview:
    """RGB = clamp(weight @ latent + bias, 0, 1) per latent cell; ``weight`` is [3, C]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        if weight.dim() != 2 or weight.shape[0] != 3 or bias.shape != (3,):
            raise ValueError(
                "a preview map needs weight [3, channels] and bias [3], "
                f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.weight = weight.float()
        self.bias = bias.float()

    @classmethod
    def sketch(cls, latent_channels: int = 128, *, seed: int = 0) -> "LatentPreview":
        """A fixed random projection around mid-grey: normalized latents give a spread of about +-0.25."""
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(3, latent_channels, generator=generator) * (0.25 / latent_channels**0.5)
        return cls(weight, torch.full((3,), 0.5))

    @classmethod
    def fit(
        cls, latents: torch.Tensor, frames: torch.Tensor, *, first_latent: int = 0, ridge: float = 1e-3
    ) -> "LatentPreview":
        """Least-squares map from latents [1, C, f, H, W] to their decoded frames [n, 32H, 32W, 3].

        Each latent cell's target is the mean colour of the pixels it covers. ``ridge``
        keeps the solve stable when there are fewer cells than channels.
        """
        _, channels, count, height, width = _check_latents(latents).shape
        start = video_pixel_interval(first_latent)[0]
        spans = [video_pixel_interval(first_latent + t) for t in range(count)]
        expected = (spans[-1][1] - start, height * SPATIAL_COMPRESSION, width * SPATIAL_COMPRESSION, 3)
        if tuple(frames.shape) != expected:
            raise ValueError(f"frames for these latents must be {expected}, got {tuple(frames.shape)}")
        pooled = F.avg_pool2d(frames.float().permute(0, 3, 1, 2), SPATIAL_COMPRESSION)  # [n, 3, H, W]
        targets = torch.stack([pooled[a - start:b - start].mean(dim=0) for a, b in spans])  # [f, 3, H, W]
        inputs = latents[0].float().permute(1, 2, 3, 0).reshape(-1, channels)
        inputs = torch.cat((inputs, inputs.new_ones(inputs.shape[0], 1)), dim=1)
        outputs = targets.permute(0, 2, 3, 1).reshape(-1, 3).to(inputs.device)
        gram = inputs.T @ inputs + ridge * torch.eye(channels + 1, device=inputs.device)
        solution = torch.linalg.solve(gram, inputs.T @ outputs)  # [C + 1, 3]
        return cls(solution[:channels].T.contiguous(), solution[channels].contiguous())

    def rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """[1, C, f, H, W] -> one colour per latent cell, [f, H, W, 3] in [0, 1]."""
        latents = _check_latents(latents)
        if latents.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"this preview maps {self.weight.shape[1]} channels, the latents have {latents.shape[1]}"
            )
        if self.weight.device != latents.device:  # moved once: a stream stays on one device
            self.weight, self.bias = self.weight.to(latents.device), self.bias.to(latents.device)
        colours = torch.einsum("cfhw,kc->fhwk", latents[0].float(), self.weight) + self.bias
        return colours.clamp(0.0, 1.0)

    def frames(
        self, latents: torch.Tensor, *, first_latent: int = 0, spatial_scale: int = SPATIAL_COMPRESSION
    ) -> torch.Tensor:
        """Preview frames for latents starting at stream latent ``first_latent``.

        Same frame count as their decode (25 for the released block 0, then 24 per
        block); ``spatial_scale`` below 32 makes smaller, cheaper previews.
        """
        colours = self.rgb(latents).permute(0, 3, 1, 2)  # [f, 3, H, W]
        if spatial_scale != 1:
            colours = F.interpolate(colours, scale_factor=spatial_scale, mode="bilinear", align_corners=False)
        # Each latent's colours held for the frames it covers; the counts are Python ints,
        # so this never waits on the device.
        spans = [video_pixel_interval(first_latent + t) for t in range(colours.shape[0])]
        held = [colours[t:t + 1].expand(end - start, -1, -1, -1) for t, (start, end) in enumerate(spans)]
        return torch.cat(held).permute(0, 2, 3, 1).clamp(0.0, 1.0)


def _check_latents(latents: torch.Tensor) -> torch.Tensor:
    if latents.dim() == 4:
        latents = latents.unsqueeze(0)
    if latents.dim() != 5 or latents.shape[0] != 1 or latents.shape[2] < 1:
        raise ValueError(f"preview one stream's latents, [1, C, frames, H, W], got {tuple(latents.shape)}")
    return latents
