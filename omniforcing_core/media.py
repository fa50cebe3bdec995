"""Writing a stream to a video file (H.264 + AAC) as its blocks arrive, for the standalone command.

The blocks go into a private temporary file beside the output; only a finished stream takes
the output's name, and (unless asked to overwrite) never a name that another file holds.
PyAV is imported lazily: inside ComfyUI, core ``SaveVideo`` writes the file instead.
"""

from __future__ import annotations

import os
import secrets
from fractions import Fraction
from pathlib import Path

import torch

from .layout import AUDIO_SAMPLE_RATE, VIDEO_FPS


class MediaError(RuntimeError):
    """The video file could not be written."""


# Output extensions and their container formats: each holds H.264 video with AAC sound.
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a video file name, or a MediaError: a folder or an unknown extension."""
    text = os.fspath(path)
    result = Path(text)
    if text.endswith(("/", os.sep)) or result.is_dir():
        raise MediaError(f"{text} is a folder; give a file name, e.g. {result / 'stream.mp4'}")
    if result.suffix.lower() not in CONTAINERS:
        raise MediaError(
            f"cannot write {text!r}: the output is H.264 video with AAC sound in a "
            f"{', '.join(list(CONTAINERS)[:-1])} or {list(CONTAINERS)[-1]} file; end the name with one of those"
        )
    return result


def _numbered(path: Path, number: int) -> Path:
    """``path`` for 1, ``name_2.ext``, ``name_3.ext``... beside it for the next ones."""
    return path if number == 1 else path.with_name(f"{path.stem}_{number}{path.suffix}")


def _free_number(path: Path, start: int = 1) -> int:
    number = start
    while _numbered(path, number).exists():
        number += 1
    return number


def free_path(path: str | Path) -> Path:
    """``path``, or ``name_2.ext``, ``name_3.ext``... beside it: earlier files are kept."""
    path = Path(path)
    return _numbered(path, _free_number(path))


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1] as 8-bit pixels on the CPU."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _create_exclusively(path: Path) -> bool:
    """Create ``path`` empty (mode from the umask); False if the name is taken."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return False
    return True


def _partial_path(path: Path) -> Path:
    """A new, empty file of this writer's own beside ``path`` (hidden, same extension)."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")
        if _create_exclusively(candidate):
            return candidate


def _move_to_free_name(source: Path, path: Path, number: int) -> Path:
    """Give ``source`` the first free name from ``_numbered(path, number)`` on, never
    replacing a file: a hard link fails on a taken name, where a rename would replace it."""
    while True:
        candidate = _numbered(path, number)
        try:
            os.link(source, candidate)
        except FileExistsError:
            number += 1
            continue
        except OSError:
            # No hard links here (FAT, some network shares): claim the name first, then
            # rename onto the empty file that is ours.
            if not _create_exclusively(candidate):
                number += 1
                continue
            os.replace(source, candidate)
            return candidate
        source.unlink()
        return candidate


class Mp4StreamWriter:
    """Append decoded blocks (frames [F, H, W, 3] in [0, 1], waveform [channels, samples])
    to ``path`` (.mp4, .mkv or .mov: the container follows the extension).

    The blocks go into a temporary file of this writer's own beside ``path``; ``close``
    gives it the name. With ``overwrite`` it replaces ``path``; without, it takes the first
    free name among ``path``, ``name_2.ext``... at that moment, so a file that appeared
    during the stream is kept. ``target`` is the name it would take now.
    """

    def __init__(self, path: str | Path, *, fps: int = VIDEO_FPS, sample_rate: int = AUDIO_SAMPLE_RATE, overwrite: bool = False):
        try:
            import av
        except ImportError as exc:
            raise MediaError("writing a video file needs PyAV: pip install av") from exc
        self._av = av
        self.path = check_output_path(path)
        self.overwrite = overwrite
        self._number = 1 if overwrite else _free_number(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial = _partial_path(self.path)
        except OSError as exc:
            raise MediaError(
                f"cannot write into the folder {self.path.parent.resolve()}: {exc.strerror or exc}; "
                "choose another --out"
            ) from exc
        self._container = None
        self._fps = fps
        self._sample_rate = sample_rate
        self._video = None
        self._audio = None
        self._samples_written = 0

    @property
    def target(self) -> Path:
        return _numbered(self.path, self._number)

    def _open(self, height: int, width: int, channels: int) -> None:
        self._container = self._av.open(str(self.partial), mode="w", format=CONTAINERS[self.path.suffix.lower()])
        self._video = self._container.add_stream("libx264", rate=self._fps)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        self._audio = self._container.add_stream("aac", rate=self._sample_rate)
        self._audio.layout = "stereo" if channels == 2 else "mono"

    def write(self, frames: torch.Tensor, waveform: torch.Tensor) -> None:
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2], waveform.shape[0])
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
        try:
            if self._container is not None:
                self._container.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish the file and give it its name (``abort`` drops an unfinished one instead)."""
        if self._container is None:
            self.abort()
            raise MediaError(f"nothing was streamed, so nothing was written to {self.path}")
        self._container.mux(self._video.encode(None))
        self._container.mux(self._audio.encode(None))
        self._container.close()
        try:
            if self.overwrite:
                os.replace(self.partial, self.path)
                return self.path
            return _move_to_free_name(self.partial, self.path, self._number)
        except OSError as exc:
            raise MediaError(
                f"could not name the finished stream {self.target}: {exc.strerror or exc}; "
                f"it is kept as {self.partial}"
            ) from exc
