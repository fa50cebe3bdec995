"""The LTX-2 audio-video diffusion transformer, with block-causal streaming support.

Parameter names and shapes equal the LTX-2 checkpoint's transformer keys, so the 19B
weights load as they are. Two entry points share every layer:

- ``forward``: the whole sequence at once, with the four-way block-causal masks (the
  causal student) or none (the bidirectional teacher);
- ``forward_block``: one block, attending to the past through a :class:`StreamKVCache`.

Per layer: video self-attention, video text cross-attention, the same for audio, then
audio->video and video->audio attention (both from the pre-update norms), then the two
feed-forward networks. Each sub-block is modulated by AdaLN-single values of the token's
own timestep. The network predicts velocity; x0 = x - sigma * v.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AUDIO_SELF, AUDIO_TO_VIDEO, VIDEO_SELF, VIDEO_TO_AUDIO, AttentionKind, AVRope, av_rope
from .conditioning import TextConditioning
from .config import ModelConfig
from .kv_cache import CachedBlock, TextKV
from .layout import BlockSpan
from .masks import AVMasks
from .rope import RotaryTable
from .timestep import TimestepEmbedder


class AdaLayerNormSingle(nn.Module):
    """Timestep -> ``coefficient`` modulation vectors (and the embedding itself)."""

    def __init__(self, dim: int, coefficient: int):
        super().__init__()
        self.coefficient = coefficient
        self.emb = TimestepEmbedder(dim)
        self.linear = nn.Linear(dim, coefficient * dim)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """timesteps [B, n] -> modulation [B, n, coefficient, dim], embedding [B, n, dim]."""
        batch, count = timesteps.shape
        embedded = self.emb(timesteps.flatten(), dtype)
        modulation = self.linear(F.silu(embedded))
        return (
            modulation.view(batch, count, self.coefficient, -1),
            embedded.view(batch, count, -1),
        )


class CaptionProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(caption), approximate="tanh"))


class _GeluProjection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        # The Identity keeps the checkpoint's key for the output layer: net.2.
        self.net = nn.Sequential(_GeluProjection(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """q/k/v projections with RMS q/k norms over the inner width; RoPE before the head split."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(query_dim, inner)
        self.to_k = nn.Linear(context_dim, inner)
        self.to_v = nn.Linear(context_dim, inner)
        self.q_norm = nn.RMSNorm(inner, eps=eps)
        self.k_norm = nn.RMSNorm(inner, eps=eps)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def query(self, x: torch.Tensor, rope: RotaryTable | None = None) -> torch.Tensor:
        q = self.q_norm(self.to_q(x))
        return self._split_heads(rope.apply(q) if rope is not None else q)

    def key_value(self, context: torch.Tensor, rope: RotaryTable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.k_norm(self.to_k(context))
        k = rope.apply(k) if rope is not None else k
        return self._split_heads(k), self._split_heads(self.to_v(context))

    def output(self, heads_out: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](heads_out.transpose(1, 2).flatten(2))


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


# Per-forward inputs shared by every layer -------------------------------------------


@dataclass(frozen=True)
class TextContext:
    """Projected text contexts [B, tokens, width] of both streams; each layer computes its
    own text keys/values when it runs. This is the training path: FSDP2 shards each
    layer's weights, so nothing may read them outside that layer's own call."""

    video: torch.Tensor
    audio: torch.Tensor
    mask: torch.Tensor | None  # [B, 1, 1, tokens], True = attend

    def keys_values(self, stream: str, layer: int, attention: "Attention") -> tuple[torch.Tensor, torch.Tensor]:
        return attention.key_value(self.video if stream == "video" else self.audio)


@dataclass(frozen=True)
class _Modulation:
    """AdaLN outputs per token (or broadcast over tokens when the timestep is shared)."""

    video: torch.Tensor  # [B, Lv|1, 6, Dv]
    audio: torch.Tensor  # [B, La|1, 6, Da]
    video_cross: torch.Tensor  # [B, Lv|1, 4, Dv]
    video_cross_gate: torch.Tensor  # [B, Lv|1, 1, Dv]
    audio_cross: torch.Tensor
    audio_cross_gate: torch.Tensor


class KeyValueRouter(Protocol):
    """Where self- and cross-modal attention find their keys: the sequence itself
    (full forward, optionally masked) or the stream's KV cache (one block at a time)."""

    def attend(self, kind: AttentionKind, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class SequenceAttention:
    """Full-sequence attention; ``masks`` None is the bidirectional teacher."""

    def __init__(self, masks: AVMasks | None):
        self.masks = masks

    def attend(self, kind, layer, q, k, v):
        mask = self.masks[kind] if self.masks is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# The transformer ------------------------------------------------------------------


class AVTransformerLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        eps = config.norm_eps
        vd, ad = config.video_dim, config.audio_dim
        self.eps = eps
        self.attn1 = Attention(vd, vd, config.video_heads, config.video_head_dim, eps)
        self.attn2 = Attention(vd, vd, config.video_heads, config.video_head_dim, eps)
        self.ff = FeedForward(vd, config.ffn_mult)
        self.scale_shift_table = nn.Parameter(torch.randn(6, vd) / vd**0.5)
        self.audio_attn1 = Attention(ad, ad, config.audio_heads, config.audio_head_dim, eps)
        self.audio_attn2 = Attention(ad, ad, config.audio_heads, config.audio_head_dim, eps)
        self.audio_ff = FeedForward(ad, config.ffn_mult)
        self.audio_scale_shift_table = nn.Parameter(torch.randn(6, ad) / ad**0.5)
        # Both cross-modal attentions use the audio heads.
        self.audio_to_video_attn = Attention(vd, ad, config.audio_heads, config.audio_head_dim, eps)
        self.video_to_audio_attn = Attention(ad, vd, config.audio_heads, config.audio_head_dim, eps)
        self.scale_shift_table_a2v_ca_audio = nn.Parameter(torch.randn(5, ad) / ad**0.5)
        self.scale_shift_table_a2v_ca_video = nn.Parameter(torch.randn(5, vd) / vd**0.5)
        self.audio_stream: torch.cuda.Stream | None = None  # see use_two_streams

    @staticmethod
    def _values(table: torch.Tensor, modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (table.to(modulation.dtype) + modulation).unbind(dim=2)

    def _text_attention(self, attention: Attention, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        mask) -> torch.Tensor:
        q = attention.query(rms_norm(x, self.eps))
        return attention.output(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))

    def forward(
        self,
        index: int,
        vx: torch.Tensor,
        ax: torch.Tensor,
        mod: _Modulation,
        rope: AVRope,
        text: TextKV | TextContext,
        router: KeyValueRouter,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.eps
        v_shift, v_scale, v_gate, v_shift_ff, v_scale_ff, v_gate_ff = self._values(self.scale_shift_table, mod.video)
        a_shift, a_scale, a_gate, a_shift_ff, a_scale_ff, a_gate_ff = self._values(
            self.audio_scale_shift_table, mod.audio
        )

        def video_attention(vx: torch.Tensor) -> torch.Tensor:
            normed = rms_norm(vx, eps) * (1 + v_scale) + v_shift
            q = self.attn1.query(normed, rope.video_self)
            k, v = self.attn1.key_value(normed, rope.video_self)
            vx = vx + self.attn1.output(router.attend(VIDEO_SELF, index, q, k, v)) * v_gate
            return vx + self._text_attention(self.attn2, vx, *text.keys_values("video", index, self.attn2), text.mask)

        def audio_attention(ax: torch.Tensor) -> torch.Tensor:
            normed = rms_norm(ax, eps) * (1 + a_scale) + a_shift
            q = self.audio_attn1.query(normed, rope.audio_self)
            k, v = self.audio_attn1.key_value(normed, rope.audio_self)
            ax = ax + self.audio_attn1.output(router.attend(AUDIO_SELF, index, q, k, v)) * a_gate
            return ax + self._text_attention(
                self.audio_attn2, ax, *text.keys_values("audio", index, self.audio_attn2), text.mask
            )

        vx, ax = self._side_by_side(video_attention, vx, audio_attention, ax)

        # Cross-modal rows: scale/shift for a2v, then for v2a, then the gate.
        video_ca = self._values(self.scale_shift_table_a2v_ca_video[:4], mod.video_cross)
        (v_gate_a2v,) = self._values(self.scale_shift_table_a2v_ca_video[4:], mod.video_cross_gate)
        audio_ca = self._values(self.scale_shift_table_a2v_ca_audio[:4], mod.audio_cross)
        (a_gate_v2a,) = self._values(self.scale_shift_table_a2v_ca_audio[4:], mod.audio_cross_gate)
        v_scale_a2v, v_shift_a2v, v_scale_v2a, v_shift_v2a = video_ca
        a_scale_a2v, a_shift_a2v, a_scale_v2a, a_shift_v2a = audio_ca
        vn, an = rms_norm(vx, eps), rms_norm(ax, eps)

        q = self.audio_to_video_attn.query(vn * (1 + v_scale_a2v) + v_shift_a2v, rope.video_cross)
        k, v = self.audio_to_video_attn.key_value(an * (1 + a_scale_a2v) + a_shift_a2v, rope.audio_cross)
        a2v = self.audio_to_video_attn.output(router.attend(AUDIO_TO_VIDEO, index, q, k, v))

        q = self.video_to_audio_attn.query(an * (1 + a_scale_v2a) + a_shift_v2a, rope.audio_cross)
        k, v = self.video_to_audio_attn.key_value(vn * (1 + v_scale_v2a) + v_shift_v2a, rope.video_cross)
        v2a = self.video_to_audio_attn.output(router.attend(VIDEO_TO_AUDIO, index, q, k, v))
        vx = vx + a2v * v_gate_a2v
        ax = ax + v2a * a_gate_v2a

        return self._side_by_side(
            lambda vx: vx + self.ff(rms_norm(vx, eps) * (1 + v_scale_ff) + v_shift_ff) * v_gate_ff, vx,
            lambda ax: ax + self.audio_ff(rms_norm(ax, eps) * (1 + a_scale_ff) + a_shift_ff) * a_gate_ff, ax,
        )

    def _side_by_side(self, video_fn, vx: torch.Tensor, audio_fn, ax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two streams' independent parts of the layer: one after the other, or with
        ``audio_stream`` set (``use_two_streams``), the audio part on that CUDA stream while
        the video part runs on the current one."""
        side = self.audio_stream
        if side is None:
            return video_fn(vx), audio_fn(ax)
        main = torch.cuda.current_stream(vx.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            ax = audio_fn(ax)
        vx = video_fn(vx)
        main.wait_stream(side)
        ax.record_stream(main)
        return vx, ax


def use_two_streams(model: "AVTransformer", on: bool) -> None:
    """Run each layer's audio self/text attention and feed-forward on a second CUDA stream,
    beside the video's (they only meet in the cross-modal attention). A GPU lever: the
    audio side is small, so on a GPU the video's kernels hide it; off on the CPU."""
    device = next(model.parameters()).device
    if on and device.type != "cuda":
        raise ValueError(f"two CUDA streams need the model on a GPU; it is on {device}")
    side = torch.cuda.Stream(device) if on else None
    for layer in model.transformer_blocks:
        layer.audio_stream = side


class AVTransformer(nn.Module):
    """LTX-2 AV transformer; latents in, velocity out.

    Video latents are [B, C, F, H, W] (the VAE's layout, one token per latent cell,
    frame-major), audio latents are tokens [B, T, C] (8 latent channels x 16 mel bins).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        vd, ad = config.video_dim, config.audio_dim
        self.patchify_proj = nn.Linear(config.video_in_channels, vd)
        self.audio_patchify_proj = nn.Linear(config.audio_in_channels, ad)
        self.adaln_single = AdaLayerNormSingle(vd, 6)
        self.audio_adaln_single = AdaLayerNormSingle(ad, 6)
        self.caption_projection = CaptionProjection(config.caption_channels, vd)
        self.audio_caption_projection = CaptionProjection(config.caption_channels, ad)
        self.av_ca_video_scale_shift_adaln_single = AdaLayerNormSingle(vd, 4)
        self.av_ca_audio_scale_shift_adaln_single = AdaLayerNormSingle(ad, 4)
        self.av_ca_a2v_gate_adaln_single = AdaLayerNormSingle(vd, 1)
        self.av_ca_v2a_gate_adaln_single = AdaLayerNormSingle(ad, 1)
        self.transformer_blocks = nn.ModuleList(AVTransformerLayer(config) for _ in range(config.num_layers))
        self.scale_shift_table = nn.Parameter(torch.randn(2, vd) / vd**0.5)
        self.proj_out = nn.Linear(vd, config.video_out_channels)
        self.audio_scale_shift_table = nn.Parameter(torch.randn(2, ad) / ad**0.5)
        self.audio_proj_out = nn.Linear(ad, config.audio_out_channels)
        if config.audio_sink_tokens:
            self.audio_sink_tokens = nn.Parameter(torch.randn(1, config.audio_sink_tokens, ad) * 0.02)

    # Inputs ------------------------------------------------------------------------

    def check_sink_count(self, sink_tokens: int | None) -> int:
        available = self.config.audio_sink_tokens
        count = available if sink_tokens is None else sink_tokens
        if not 0 <= count <= available:
            raise ValueError(
                f"this model has {available} learned audio sink tokens; a stream can use 0 to "
                f"{available} of them, not {count}"
            )
        return count

    def project_text(self, text: TextConditioning) -> TextContext:
        """The prompt through the caption projections; layers take their keys from it."""
        text.validate(self.config.caption_channels)
        weight = self.patchify_proj.weight
        video_ctx = self.caption_projection(text.video.to(weight.device, weight.dtype))
        audio_ctx = self.audio_caption_projection(text.audio.to(weight.device, weight.dtype))
        mask = None if text.mask is None else text.mask.to(weight.device).bool()[:, None, None, :]
        return TextContext(video_ctx, audio_ctx, mask)

    def encode_text(self, text: TextConditioning, into: TextKV | None = None) -> TextKV:
        """Project the prompt and compute every layer's text keys and values once.

        ``into``: the keys/values of the previous prompt; when the shapes match they are
        overwritten in place (prompt switches and blends reuse the memory).
        """
        context = self.project_text(text)
        batch, tokens = context.video.shape[:2]
        c = self.config
        shapes = (
            (c.num_layers, 2, batch, c.video_heads, tokens, c.video_head_dim),
            (c.num_layers, 2, batch, c.audio_heads, tokens, c.audio_head_dim),
        )
        if into is not None and (tuple(into.video.shape), tuple(into.audio.shape)) == shapes:
            video, audio = into.video, into.audio
        else:
            video = context.video.new_empty(shapes[0])
            audio = context.audio.new_empty(shapes[1])
        for index, layer in enumerate(self.transformer_blocks):
            for target, stream, attention in ((video, "video", layer.attn2), (audio, "audio", layer.audio_attn2)):
                keys, values = context.keys_values(stream, index, attention)
                target[index, 0].copy_(keys)
                target[index, 1].copy_(values)
        return TextKV(video, audio, context.mask)

    def _modulation(
        self, video_sigma: torch.Tensor, audio_sigma: torch.Tensor, tokens_per_frame: int, dtype: torch.dtype
    ) -> tuple[_Modulation, torch.Tensor, torch.Tensor]:
        """AdaLN values from each token's own sigma ([B, frames] or [B, 1] = shared)."""
        scale = self.config.timestep_scale_multiplier
        gate_scale = self.config.av_ca_timestep_scale_multiplier

        def per_token(values: torch.Tensor) -> torch.Tensor:
            return values.repeat_interleave(tokens_per_frame, dim=1) if values.shape[1] > 1 else values

        video_t, audio_t = video_sigma * scale, audio_sigma * scale
        video_mod, video_embedded = self.adaln_single(video_t, dtype)
        audio_mod, audio_embedded = self.audio_adaln_single(audio_t, dtype)
        video_cross, _ = self.av_ca_video_scale_shift_adaln_single(video_t, dtype)
        audio_cross, _ = self.av_ca_audio_scale_shift_adaln_single(audio_t, dtype)
        video_gate, _ = self.av_ca_a2v_gate_adaln_single(video_sigma * gate_scale, dtype)
        audio_gate, _ = self.av_ca_v2a_gate_adaln_single(audio_sigma * gate_scale, dtype)
        mod = _Modulation(
            video=per_token(video_mod),
            audio=audio_mod,
            video_cross=per_token(video_cross),
            video_cross_gate=per_token(video_gate),
            audio_cross=audio_cross,
            audio_cross_gate=audio_gate,
        )
        return mod, per_token(video_embedded), audio_embedded

    # Forward passes ----------------------------------------------------------------

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        video_sigma: torch.Tensor,
        audio_sigma: torch.Tensor,
        text: TextConditioning | TextKV | TextContext,
        masks: AVMasks | None = None,
        sink_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-sequence velocity; sigmas are per latent frame [B, F] or shared [B, 1].

        Text given as a prompt is projected here and each layer computes its own keys, so
        this path also runs on a model sharded layer by layer (training)."""
        video, audio = self._compute_dtype(video, audio)
        _, _, frames, height, width = video.shape
        sinks = self.check_sink_count(sink_tokens)
        rope = av_rope(self.config, 0, frames, (height, width), 0, audio.shape[1], sinks, video.device, video.dtype)
        if isinstance(text, TextConditioning):
            text = self.project_text(text)
        return self.run(video, audio, video_sigma, audio_sigma, rope, text, SequenceAttention(masks), sinks)

    def forward_span(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        sigma: torch.Tensor,
        span: BlockSpan,
        text: TextConditioning | TextContext,
        router: KeyValueRouter,
        sink_tokens: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity of one block at a shared ``sigma`` [B, 1] with its true stream positions,
        keys routed by ``router`` (the training rollout's history); sinks ride in block 0.
        A prompt is projected inside the call, as a sharded model needs."""
        video, audio = self._compute_dtype(video, audio)
        if isinstance(text, TextConditioning):
            text = self.project_text(text)
        sinks = sink_tokens if span.index == 0 else 0
        rope = av_rope(
            self.config, span.video_start, span.video_frames, tuple(video.shape[-2:]),
            span.audio_start, span.audio_frames, sinks, video.device, video.dtype,
        )
        return self.run(video, audio, sigma, sigma, rope, text, router, sinks)

    def _compute_dtype(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents in the weights' dtype (sigmas stay fp32): under FSDP2 mixed precision the
        weights are cast and the inputs are not."""
        dtype = self.patchify_proj.weight.dtype
        return video.to(dtype), audio.to(dtype)

    def forward_block(
        self, video: torch.Tensor, audio: torch.Tensor, sigma: float, block: CachedBlock, text: TextKV
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity of one block at a shared ``sigma``, attending to the past through the cache."""
        shared = torch.full((video.shape[0], 1), sigma, device=video.device, dtype=torch.float32)
        return self.run(video, audio, shared, shared, block.rope, text, block.router, block.sink_tokens)

    def run(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        video_sigma: torch.Tensor,
        audio_sigma: torch.Tensor,
        rope: AVRope,
        text: TextKV | TextContext,
        router: KeyValueRouter,
        sink_tokens: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared body of both paths; ``router`` decides where keys come from."""
        batch, _, frames, height, width = video.shape
        dtype = video.dtype
        vx = self.patchify_proj(video.flatten(2).transpose(1, 2))
        ax = self.audio_patchify_proj(audio)
        if sink_tokens:
            # Sinks ride in block 0 with audio frame 0's timestep.
            ax = torch.cat([self.audio_sink_tokens[:, :sink_tokens].expand(batch, -1, -1).to(ax.dtype), ax], dim=1)
            if audio_sigma.shape[1] > 1:
                audio_sigma = torch.cat([audio_sigma[:, :1].expand(-1, sink_tokens), audio_sigma], dim=1)
        mod, video_embedded, audio_embedded = self._modulation(video_sigma, audio_sigma, height * width, dtype)

        for index, layer in enumerate(self.transformer_blocks):
            vx, ax = layer(index, vx, ax, mod, rope, text, router)

        if sink_tokens:
            ax = ax[:, sink_tokens:]
            if audio_embedded.shape[1] > 1:
                audio_embedded = audio_embedded[:, sink_tokens:]
        video_out = self._output(vx, video_embedded, self.scale_shift_table, self.proj_out)
        audio_out = self._output(ax, audio_embedded, self.audio_scale_shift_table, self.audio_proj_out)
        video_out = video_out.view(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)
        return video_out, audio_out

    def _output(self, x: torch.Tensor, embedded: torch.Tensor, table: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        shift, scale = (table.to(embedded.dtype) + embedded.unsqueeze(2)).unbind(dim=2)
        x = F.layer_norm(x, (x.shape[-1],), eps=self.config.norm_eps)
        return projection(x * (1 + scale) + shift)
