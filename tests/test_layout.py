import pytest
import torch

from omniforcing_core import BlockLayout, LayoutError
from omniforcing_core.layout import (
    audio_latent_time,
    check_seconds,
    tokens_per_video_frame,
    video_latent_time,
)


def spans(layout, seconds):
    return [(b.video_start, b.video_end, b.audio_start, b.audio_end) for b in layout.blocks(seconds)]


def test_released_layout_five_seconds():
    layout = BlockLayout.released()
    blocks = layout.blocks(5)
    assert len(blocks) == 5
    assert layout.latent_lengths(5) == (16, 126)
    assert spans(layout, 5) == [(0, 4, 0, 26), (4, 7, 26, 51), (7, 10, 51, 76), (10, 13, 76, 101), (13, 16, 101, 126)]


def test_paper_layout_five_seconds_has_a_prefix_block():
    layout = BlockLayout.paper()
    assert layout.num_blocks(5) == 6
    assert layout.latent_lengths(5) == (16, 126)
    assert spans(layout, 5)[:3] == [(0, 1, 0, 1), (1, 4, 1, 26), (4, 7, 26, 51)]
    assert spans(layout, 5)[-1] == (13, 16, 101, 126)


@pytest.mark.parametrize("seconds", [1, 2, 7, 60])
def test_both_layouts_cover_the_same_latents(seconds):
    expected = (3 * seconds + 1, 25 * seconds + 1)
    assert BlockLayout.released().latent_lengths(seconds) == expected
    assert BlockLayout.paper().latent_lengths(seconds) == expected


def test_token_counts_at_512x768():
    layout = BlockLayout.released()
    assert tokens_per_video_frame(512, 768) == 384
    assert layout.block_tokens(0, 512, 768) == (1536, 26)
    assert [layout.block_tokens(k, 512, 768) for k in range(1, 5)] == [(1152, 25)] * 4


def test_pixel_and_sample_intervals_per_block():
    released = BlockLayout.released()
    assert released.block(0).pixel_interval == (0, 25)
    assert released.block(1).pixel_interval == (25, 49)
    assert released.block(0).sample_interval == (0, 24240)
    assert released.block(1).sample_interval == (24240, 48240)
    paper = BlockLayout.paper()
    assert paper.block(0).pixel_interval == (0, 1)
    assert paper.block(0).sample_interval == (0, 240)
    assert paper.block(1).pixel_interval == (1, 25)


def test_physical_times_at_the_middle_of_each_latent():
    assert video_latent_time(0) == pytest.approx(0.5 / 24)
    assert [video_latent_time(k) for k in (1, 4, 15)] == pytest.approx([(8 * k - 3) / 24 for k in (1, 4, 15)])
    assert audio_latent_time(0) == pytest.approx(0.005)
    assert [audio_latent_time(j) for j in (1, 26, 125)] == pytest.approx([(4 * j - 1) / 100 for j in (1, 26, 125)])
    frames = torch.arange(16, dtype=torch.float32)
    assert torch.allclose(video_latent_time(frames), torch.tensor([video_latent_time(k) for k in range(16)]))


def test_block_time_spans_are_one_second_after_block_zero():
    layout = BlockLayout.released()
    starts = [layout.block(k).time_span for k in range(1, 4)]
    assert [end - start for start, end in starts] == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("height", "width", "fragment"),
    [(500, 768, "height must be a positive multiple of 32"), (512, 770, "width must be a positive multiple of 32"), (0, 768, "height")],
)
def test_resolution_not_divisible_by_32_is_refused(height, width, fragment):
    with pytest.raises(LayoutError, match=fragment):
        tokens_per_video_frame(height, width)


def test_bad_durations_are_refused():
    with pytest.raises(LayoutError, match="whole number of seconds"):
        check_seconds(2.5)
    with pytest.raises(LayoutError, match="at least 1 second"):
        BlockLayout.released().blocks(0)
    with pytest.raises(LayoutError, match="at least one block"):
        list(BlockLayout.paper().iter_blocks(0))
    with pytest.raises(LayoutError, match="unknown block layout"):
        BlockLayout.named("diagonal")


def test_blocks_holding_counts_whole_blocks_only():
    for layout in (BlockLayout.released(), BlockLayout.paper()):
        for seconds in (1, 3, 7):
            assert layout.blocks_holding(layout.latent_lengths(seconds)[0]) == layout.num_blocks(seconds)
        with pytest.raises(LayoutError, match="not whole blocks"):
            layout.blocks_holding(layout.latent_lengths(2)[0] + 1)
