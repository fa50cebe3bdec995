"""Rectified-flow helpers of training: noising at per-frame sigmas laid out by block.

x_s = (1 - s) x0 + s eps; the network predicts v = eps - x0; x0 = x_s - s v. Sigmas are
fp32 tensors [B, frames] (per latent frame) or [B, 1] (shared), as the transformer takes.
"""

from __future__ import annotations

import torch

from ..layout import BlockLayout


def per_frame_sigmas(layout: BlockLayout, block_sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block sigmas [B, blocks] -> (video [B, F_v], audio [B, F_a]) sigmas per latent frame.

    Both streams take their block's sigma over the block's own spans (audio by the
    layout's 26 + 25 / 1 + 25 spans, not by a frame ratio)."""
    spans = list(layout.iter_blocks(block_sigmas.shape[1]))
    video_counts = torch.tensor([span.video_frames for span in spans], device=block_sigmas.device)
    audio_counts = torch.tensor([span.audio_frames for span in spans], device=block_sigmas.device)
    return (
        block_sigmas.repeat_interleave(video_counts, dim=1),
        block_sigmas.repeat_interleave(audio_counts, dim=1),
    )


def _video_view(sigma: torch.Tensor) -> torch.Tensor:
    """[B, F] or [B, 1] -> broadcastable over video [B, C, F, h, w]."""
    return sigma[:, None, :, None, None]


def _audio_view(sigma: torch.Tensor) -> torch.Tensor:
    """[B, T] or [B, 1] -> broadcastable over audio tokens [B, T, C]."""
    return sigma[:, :, None]


def add_noise(video, audio, video_noise, audio_noise, video_sigma, audio_sigma):
    """The rectified-flow points of both streams at their per-frame sigmas."""
    sv, sa = _video_view(video_sigma), _audio_view(audio_sigma)
    return (1 - sv) * video + sv * video_noise, (1 - sa) * audio + sa * audio_noise


def x0_of(video, audio, video_v, audio_v, video_sigma, audio_sigma):
    """x0 = x - sigma v for both streams, computed in fp32."""
    sv, sa = _video_view(video_sigma).float(), _audio_view(audio_sigma).float()
    return video.float() - sv * video_v.float(), audio.float() - sa * audio_v.float()
