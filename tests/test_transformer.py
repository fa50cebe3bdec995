import json

import pytest
import torch

from helpers import DATA, golden_model, golden_vectors, random_model, random_text
from omniforcing_core import AVTransformer, BlockLayout, ModelConfig, TextConditioning, block_causal_masks
from omniforcing_core.attention import av_rope


def test_19b_preset_has_exactly_the_checkpoint_keys():
    reference = json.loads((DATA / "ltx2_19b_transformer_keys.json").read_text())
    expected = {k: v for k, v in reference.items() if "embeddings_connector" not in k}
    with torch.device("meta"):
        model = AVTransformer(ModelConfig.ltx2_19b())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(ours) == len(expected) == 3510
    assert ours == expected
    assert sum(v.numel() for v in model.parameters()) == pytest.approx(18.88e9, rel=0.01)


def _golden_full(masks):
    vectors = golden_vectors()
    model = golden_model()
    text = TextConditioning(vectors["context.video"], vectors["context.audio"])
    video = vectors["full.video_in"].permute(0, 2, 1, 3, 4)
    audio = vectors["full.audio_in"]
    video_sigma, audio_sigma = vectors["full.video_sigma"], vectors["full.audio_sigma"]
    with torch.no_grad():
        video_v, audio_v = model(video, audio, video_sigma, audio_sigma, text, masks=masks)
    video_x0 = (video - video_v * video_sigma[:, None, :, None, None]).permute(0, 2, 1, 3, 4)
    audio_x0 = audio - audio_v * audio_sigma[..., None]
    return vectors, video_x0, audio_x0


def test_golden_causal_forward():
    masks = block_causal_masks(BlockLayout.released(), 5, tokens_per_video_frame=6)
    vectors, video_x0, audio_x0 = _golden_full(masks)
    assert (video_x0 - vectors["full.causal.video_x0"]).abs().max() <= 1e-4
    assert (audio_x0 - vectors["full.causal.audio_x0"]).abs().max() <= 1e-4


def test_golden_bidirectional_forward():
    vectors, video_x0, audio_x0 = _golden_full(None)
    assert (video_x0 - vectors["full.bidirectional.video_x0"]).abs().max() <= 1e-4
    assert (audio_x0 - vectors["full.bidirectional.audio_x0"]).abs().max() <= 1e-4
    # The masks matter: the causal reference differs from the bidirectional one.
    assert (vectors["full.causal.video_x0"] - vectors["full.bidirectional.video_x0"]).abs().max() > 1e-2


def _inputs(config, frames=4, audio_frames=26, seed=3):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(1, 128, frames, 2, 3, generator=generator)
    audio = torch.randn(1, audio_frames, 128, generator=generator)
    sigma_v = torch.full((1, frames), 0.7)
    sigma_a = torch.full((1, audio_frames), 0.7)
    return video, audio, sigma_v, sigma_a, random_text(config)


def test_zero_sink_tokens_is_the_released_model():
    plain = random_model(ModelConfig.tiny())
    assert not any("audio_sink_tokens" in key for key in plain.state_dict())
    with_sinks = AVTransformer(ModelConfig.tiny(audio_sink_tokens=4)).eval()
    missing, unexpected = with_sinks.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["audio_sink_tokens"] and unexpected == []
    inputs = _inputs(plain.config)
    with torch.no_grad():
        reference = plain(*inputs)
        unused = with_sinks(*inputs, sink_tokens=0)
        used = with_sinks(*inputs)
    assert torch.equal(reference[0], unused[0]) and torch.equal(reference[1], unused[1])
    assert (used[1] - reference[1]).abs().max() > 1e-3
    assert used[1].shape == reference[1].shape  # sinks are dropped before the output head


def test_sink_tokens_get_identity_rotation_wherever_the_stream_is():
    config = ModelConfig.tiny(audio_sink_tokens=3)
    early = av_rope(config, 0, 4, (2, 3), 0, 26, 3, "cpu", torch.float32)
    late = av_rope(config, 30, 3, (2, 3), 251, 25, 3, "cpu", torch.float32)
    sink_q = torch.randn(1, 3, config.audio_dim)
    sink_k = torch.randn(1, 3, config.audio_dim)
    for table in (early.audio_self, late.audio_self, early.audio_cross, late.audio_cross):
        padded_q = torch.cat([sink_q, torch.randn(1, table.tokens - 3, config.audio_dim)], dim=1)
        assert torch.equal(table.apply(padded_q)[:, :3], sink_q)
    # A sink's logits against the other sinks do not change when the audio positions move.
    logits = []
    for table in (early.audio_self, late.audio_self):
        q = table.apply(torch.cat([sink_q, torch.zeros(1, table.tokens - 3, config.audio_dim)], dim=1))[:, :3]
        k = table.apply(torch.cat([sink_k, torch.zeros(1, table.tokens - 3, config.audio_dim)], dim=1))[:, :3]
        logits.append(q @ k.transpose(1, 2))
    assert torch.equal(logits[0], logits[1])
    # Ordinary audio tokens do move.
    assert not torch.equal(early.audio_self.cos[:, 3:28], late.audio_self.cos[:, 3:28])


def test_sink_count_outside_the_weights_is_refused():
    model = random_model(ModelConfig.tiny(audio_sink_tokens=2))
    with pytest.raises(ValueError, match="0 to 2 of them, not 5"):
        model.check_sink_count(5)


def test_two_cuda_streams_are_refused_for_a_model_on_the_cpu():
    from omniforcing_core.transformer import use_two_streams

    model = random_model()
    with pytest.raises(ValueError, match="two CUDA streams need the model on a GPU; it is on cpu"):
        use_two_streams(model, True)
    use_two_streams(model, False)
    assert all(layer.audio_stream is None for layer in model.transformer_blocks)
