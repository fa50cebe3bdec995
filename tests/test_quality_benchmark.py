"""The colour-blind blob measures of the quality benchmark read what they claim to."""

import numpy as np

from benchmarks.quality import blob_scores, boundaries
from omniforcing_core import BlockLayout
from omniforcing_core.world import Scene, render_clip


def test_blob_seam_ratio_sees_a_jump_at_the_seams_and_not_in_a_rendered_clip():
    clip = render_clip(Scene.sample(0, 3.0, (128, 192)))
    seams = boundaries(BlockLayout.released(), clip.frames.shape[0])
    assert seams == [25, 49]
    smooth = blob_scores(clip.frames, seams)
    assert 0.01 < smooth["blob.foreground_share"] < 0.1 and smooth["blob.seam_ratio"] < 1.5
    # Every block after the first drawn 8 px further right: the track jumps at each seam.
    shifted = clip.frames.copy()
    for start in seams:
        shifted[start:] = np.roll(shifted[start:], 8, axis=2)
    assert blob_scores(shifted, seams)["blob.seam_ratio"] > 4


def test_paper_layout_seams_follow_its_blocks():
    assert boundaries(BlockLayout.paper(), 73) == [1, 25, 49]
