"""The stream writer's output files: never lost, never replaced, in the container their name asks for."""

import errno

import pytest
import torch

from omniforcing_core import media
from omniforcing_core.media import MediaError, Mp4StreamWriter

av = pytest.importorskip("av")


def frames_in(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0)), container.format.name


def block(frames=24):
    return torch.rand(frames, 64, 96, 3), torch.zeros(2, 1000 * frames)


def test_two_streams_to_the_same_out_keep_both(tmp_path):
    out = tmp_path / "clip.mp4"
    first, second = Mp4StreamWriter(out), Mp4StreamWriter(out)
    assert first.partial != second.partial and first.partial.parent == tmp_path
    first.write(*block(25))
    second.write(*block(24))
    second.write(*block(24))
    assert (first.close(), second.close()) == (out, tmp_path / "clip_2.mp4")
    assert frames_in(out)[0] == 25 and frames_in(tmp_path / "clip_2.mp4")[0] == 48
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4", "clip_2.mp4"]


def test_overwrite_replaces_out_at_the_end(tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old")
    writer = Mp4StreamWriter(out, overwrite=True)
    writer.write(*block())
    assert out.read_bytes() == b"old"  # until the stream is finished
    assert writer.close() == out and frames_in(out)[0] == 24


def test_without_hard_links_the_name_is_claimed_before_the_rename(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(media.os, "link", no_links)
    out = tmp_path / "clip.mp4"
    writer = Mp4StreamWriter(out)
    writer.write(*block())
    out.write_bytes(b"appeared")
    assert writer.close() == tmp_path / "clip_2.mp4"
    assert out.read_bytes() == b"appeared" and frames_in(tmp_path / "clip_2.mp4")[0] == 24


def test_a_finished_stream_that_cannot_be_named_is_kept_and_said_where(tmp_path, monkeypatch):
    writer = Mp4StreamWriter(tmp_path / "clip.mp4", overwrite=True)
    writer.write(*block())
    monkeypatch.setattr(media.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(MediaError, match=f"it is kept as {writer.partial}"):
        writer.close()
    assert frames_in(writer.partial)[0] == 24
