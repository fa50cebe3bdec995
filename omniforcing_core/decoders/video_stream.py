"""Streaming video decode: each block's latents become pixel frames as soon as they exist.

The LTX-2 video decoder is non-causal in time: each of its temporal convs looks one
frame ahead at its own rate, and over the 19B decoder's 45 convs and three x2
upsamplers that adds up to :func:`exact_lookahead_latents` = 22 latent frames (7.3 s)
of future that a frame depends on. A stream cannot wait that long, so
:class:`VideoStreamDecoder` decodes each pushed block as a chunk that

- continues exactly from the past: every temporal conv carries its last input frame
  from the previous chunk (one frame per conv, a fixed size however long the stream);
  earlier blocks are never recomputed;
- meets the unknown future the way the whole-clip decoder meets the clip's end: one
  replicated frame per conv.

By default a pushed block yields exactly its own frames at once (released layout: 25,
then 24 per block; paper layout: 1, then 24); how far they are from a whole-clip decode
depends on how much the decoder's look-ahead would have seen of the next block.
``lookahead_latents=L`` holds back the last L latents of what has arrived and decodes
them again with the next block as their real future (the held latents are recomputed:
a 3-latent block costs about (3 + L) / 3 times as much); with
L >= ``exact_lookahead_latents(config)`` the stream equals the whole-clip decode to
float precision. ``flush()`` ends the stream: held latents are decoded against the true
end of the clip.

Measured on the tiny preset with random weights (fp32, 2 x 3 latent cells, 5 seeds,
with and without timestep conditioning; frames in [0, 1] against the whole-clip decode):

    blocks  layout     L=0 mean / p99 / max    L=1 mean / max    L=3 mean / max    L=7
    1       both       0 (bit-identical)       -                 -                 0
    2       released   0.071 / 0.40 / 1.0      0.034 / 0.89      0.0018 / 0.22     < 1e-6
    6       released   0.100 / 0.44 / 1.0      0.050 / 0.77      0.0056 / 0.28     < 1e-6
    6       paper      0.107 / 0.47 / 1.0      0.052 / 0.83      0.0061 / 0.22     < 1e-6

(worst seed per cell; L=5: mean 1e-4, L=6: 3e-6; one CPU thread: 23 ms a block at L=0,
47 ms at L=3, 111 ms at L=7, flat over 30 blocks). With random weights every frame of
the tiny decoder reads 7 latents ahead at full strength, so at L=0 no frame of a block
is exact. When the decoder does not look ahead (future taps zeroed; a test checks this)
the L=0 stream is exact: the carry itself is lossless, and all the error starts at the
unknown future (then travels on in the carried frames). Whether a trained decoder's
far-future influence is smaller must be measured on the real weights. The tests hold
the L=0 stream to this table's worst cells, with a margin.

Decode noise (timestep-conditioned decoders) and injected spatial noise are drawn per
absolute latent frame and per conv from ``seed``, so streamed and whole-clip decodes
add identical noise.
"""

from __future__ import annotations

import torch

from ..layout import video_pixel_interval
from .video_vae import TemporalChunk, VideoVAE, VideoVAEConfig, pixels_to_frames


def exact_lookahead_latents(config: VideoVAEConfig) -> int:
    """Latent frames of future the decoder reads for the last frame of a latent (22 for 19B).

    Walks the decoder backwards from the last pixel frame of latent n: each non-causal
    conv needs one more frame at its rate, each temporal x2 upsample halves the index
    (after the dropped first frame). A streamed decode with this look-ahead is exact.
    """
    if config.causal_decoder:
        return 0
    reach_per_conv = 1
    last_latent = 64  # far from the stream start, where every step is shift-invariant
    needed = config.temporal_upsampling * last_latent
    needed += reach_per_conv  # conv_out
    for block in config.decoder_blocks:  # output side first: the reverse of the decoder's order
        if block.kind == "res_x":
            needed += 2 * block.num_layers * reach_per_conv
            continue
        if block.stride[0] == 2:
            needed = (needed + 1) // 2
        needed += reach_per_conv  # the upsampler's conv runs before depth-to-space
    needed += reach_per_conv  # conv_in
    return needed - last_latent


class VideoStreamDecoder:
    """Decode one video stream block by block with flat memory and time per block.

    ``push(latents)`` takes the next latents [1, C, f, H, W] (normalized, as the
    transformer yields them) and returns the frames that became final, float32
    [n, 32H, 32W, 3] in [0, 1] on the decoder's device. Frame numbering follows the
    latent clock of ``layout.py``.
    """

    def __init__(self, vae: VideoVAE, *, lookahead_latents: int = 0, seed: int = 0) -> None:
        if not isinstance(lookahead_latents, int) or lookahead_latents < 0:
            raise ValueError(f"lookahead_latents must be an integer >= 0, got {lookahead_latents!r}")
        self.vae = vae
        self.lookahead_latents = lookahead_latents
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push is latent frame 0 of a new clip."""
        self._carried: dict[int, torch.Tensor] = {}
        self._held: torch.Tensor | None = None
        self._committed = 0
        self._received = 0
        self._closed = False

    @property
    def latents_received(self) -> int:
        return self._received

    @property
    def held_latents(self) -> int:
        """Latents received but not yet turned into frames (at most the look-ahead)."""
        return self._received - self._committed

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next block; returns the frames it made final (none while the look-ahead fills)."""
        if self._closed:
            raise RuntimeError("this video stream was flushed; call reset() to start a new one")
        latents = self._check(latents)
        held = latents if self._held is None else torch.cat((self._held, latents), dim=2)
        received = self._received + latents.shape[2]
        return self._decode(held, received, commit_end=received - self.lookahead_latents)

    def flush(self) -> torch.Tensor:
        """End the stream: decode the held latents against the clip's true end."""
        if self._closed:
            raise RuntimeError("this video stream was already flushed; call reset() to start a new one")
        frames = self._decode(self._held, self._received, commit_end=self._received)
        self._closed = True
        return frames

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything carried between pushes: one input frame per temporal conv plus the held latents."""
        state = {f"conv{site}": frames for site, frames in sorted(self._carried.items())}
        if self._held is not None:
            state["held_latents"] = self._held  # [1, C, held_latents, H, W]
        return state

    def _decode(self, held: torch.Tensor | None, received: int, *, commit_end: int) -> torch.Tensor:
        """Turn held latents up to ``commit_end`` into frames; the state changes only on success."""
        if commit_end <= self._committed:
            self._held, self._received = held, received
            return self._no_frames(held)
        chunk = TemporalChunk(
            self._committed,
            held.shape[2],
            commit_end - self._committed,
            past=self._carried,
            keep_state=True,
            seed=self.seed,
        )
        with torch.no_grad():
            pixels = self.vae.decode_chunk(held, chunk)
        start = video_pixel_interval(self._committed)[0]
        end = video_pixel_interval(commit_end - 1)[1]
        self._held = held[:, :, commit_end - self._committed:].clone()
        self._received, self._carried = received, chunk.kept
        self._committed = commit_end
        return pixels_to_frames(pixels[:, :, : end - start])

    def _no_frames(self, held: torch.Tensor | None) -> torch.Tensor:
        height, width = held.shape[-2:] if held is not None else (0, 0)
        scale = self.vae.config.spatial_upsampling
        device = self.vae.decoder.conv_in.conv.weight.device
        return torch.zeros((0, height * scale, width * scale, 3), device=device)

    def _check(self, latents: torch.Tensor) -> torch.Tensor:
        channels = self.vae.config.latent_channels
        if latents.dim() == 4:
            latents = latents.unsqueeze(0)
        if latents.dim() != 5 or tuple(latents.shape[:2]) != (1, channels) or latents.shape[2] < 1:
            raise ValueError(
                f"push one stream's latents, [1, {channels}, frames, H, W] with frames >= 1, "
                f"got {tuple(latents.shape)}"
            )
        if self._held is not None and latents.shape[-2:] != self._held.shape[-2:]:
            stream_grid, grid = tuple(self._held.shape[-2:]), tuple(latents.shape[-2:])
            raise ValueError(f"the stream's latent grid is {stream_grid}, this block has {grid}")
        return latents
