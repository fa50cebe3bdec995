"""Writing a stream to an mp4 (H.264 + AAC) as its blocks arrive, for the standalone command.

PyAV is imported lazily: inside ComfyUI, core ``SaveVideo`` writes the file instead.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import torch

from .layout import AUDIO_SAMPLE_RATE, VIDEO_FPS


class MediaError(RuntimeError):
    """The mp4 could not be written."""


def free_path(path: str | Path) -> Path:
    """``path``, or ``name_2.ext``, ``name_3.ext``... beside it: earlier files are kept."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    return candidate


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1] as 8-bit pixels on the CPU."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class Mp4StreamWriter:
    """Append decoded blocks (frames [F, H, W, 3] in [0, 1], waveform [channels, samples])."""

    def __init__(self, path: str | Path, *, fps: int = VIDEO_FPS, sample_rate: int = AUDIO_SAMPLE_RATE, overwrite: bool = False):
        try:
            import av
        except ImportError as exc:
            raise MediaError("writing mp4 needs PyAV: pip install av") from exc
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise MediaError(f"{self.path} already exists; choose another --out or pass --overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._av = av
        self._partial = self.path.with_name(self.path.name + ".partial.mp4")
        self._container = av.open(str(self._partial), mode="w")
        self._fps = fps
        self._sample_rate = sample_rate
        self._video = None
        self._audio = None
        self._samples_written = 0

    def _open_streams(self, height: int, width: int, channels: int) -> None:
        self._video = self._container.add_stream("libx264", rate=self._fps)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        self._audio = self._container.add_stream("aac", rate=self._sample_rate)
        self._audio.layout = "stereo" if channels == 2 else "mono"

    def write(self, frames: torch.Tensor, waveform: torch.Tensor) -> None:
        if self._video is None:
            self._open_streams(frames.shape[1], frames.shape[2], waveform.shape[0])
        pixels = frames_to_uint8(frames).numpy()
        for image in pixels:
            frame = self._av.VideoFrame.from_ndarray(image, format="rgb24")
            self._container.mux(self._video.encode(frame))
        samples = waveform.float().clamp(-1, 1).cpu().contiguous().numpy()
        audio_frame = self._av.AudioFrame.from_ndarray(samples, format="fltp", layout=self._audio.layout.name)
        audio_frame.sample_rate = self._sample_rate
        audio_frame.pts = self._samples_written
        audio_frame.time_base = Fraction(1, self._sample_rate)
        self._samples_written += samples.shape[1]
        self._container.mux(self._audio.encode(audio_frame))

    def abort(self) -> None:
        """Drop the unfinished file (an interrupted or failed stream)."""
        self._container.close()
        self._partial.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish the file and move it into place (``abort`` drops an unfinished one instead)."""
        if self._video is not None:
            self._container.mux(self._video.encode(None))
            self._container.mux(self._audio.encode(None))
        self._container.close()
        self._partial.replace(self.path)
        return self.path
