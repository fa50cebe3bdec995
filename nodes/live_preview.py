"""Shows a stream in the UI while it runs: each block's frames and sound go to ComfyUI's
temp folder and are announced to the web extension (see ``events.py``), and the node's
progress bar carries the block's last frame for clients without the extension.

Files are written on a background thread, in block order, so encoding JPEGs and WAVs
overlaps the next block's generation instead of delaying it.
"""

from __future__ import annotations

import uuid
import wave
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omniforcing_core.layout import VIDEO_FPS
from omniforcing_core.media import frames_to_uint8
from omniforcing_core.sampler import StreamBlock

from . import events
from .comfy_bridge import StandaloneBridge

PREVIEW_LONG_SIDE = 768
JPEG_QUALITY = 85


def _file(subfolder: str, name: str) -> dict:
    return {"filename": name, "subfolder": subfolder, "type": "temp"}


def write_wav(path: Path, waveform: torch.Tensor, sample_rate: int) -> None:
    """16-bit PCM WAV of a float waveform [channels, samples] in [-1, 1]."""
    samples = (waveform.clamp(-1, 1).T.contiguous().numpy() * 32767).round().astype(np.int16)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(waveform.shape[0])
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(samples.tobytes())


def preview_image(frame: torch.Tensor) -> Image.Image:
    """A PIL image of a frame [H, W, 3] in [0, 1], at most PREVIEW_LONG_SIDE pixels long."""
    image = Image.fromarray(frames_to_uint8(frame).numpy())
    scale = PREVIEW_LONG_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    return image


class LivePreview:
    def __init__(self, bridge: StandaloneBridge, node_id: str | None, prompt_id: str | None, total_blocks: int | None,
                 width: int, height: int, seconds: int | None, sample_rate: int):
        self.bridge = bridge
        self.node_id = node_id
        self.header = {"node": node_id, "prompt_id": prompt_id}
        self.total_blocks = total_blocks
        self.sample_rate = sample_rate
        self.subfolder = f"omniforcing/{uuid.uuid4().hex[:12]}"
        self.folder = bridge.temp_dir() / self.subfolder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames: list[dict] = []
        self.blocks_done = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniforcing-preview")
        self._published: list[Future] = []
        bridge.send(events.START, {
            **self.header, "blocks": total_blocks, "fps": VIDEO_FPS, "sample_rate": sample_rate,
            "width": width, "height": height, "seconds": seconds,
        })

    def block(self, block: StreamBlock, block_s: float) -> None:
        """Announce one finished, decoded block."""
        frames, waveform = block.decoded.frames, block.decoded.waveform
        index = block.index
        names = [f"b{index:05d}_f{n:02d}.jpg" for n in range(frames.shape[0])]
        self.frames += [_file(self.subfolder, name) for name in names]
        audio_name = f"b{index:05d}.wav"
        payload = {
            **self.header, "index": index, "blocks": self.total_blocks, "time": list(block.time_span),
            "fps": VIDEO_FPS, "sample_rate": self.sample_rate,
            "frames": [_file(self.subfolder, name) for name in names], "audio": _file(self.subfolder, audio_name),
            "samples": waveform.shape[1], "block_s": round(block_s, 4),
        }
        self.blocks_done += 1
        self._published.append(self._writer.submit(self._publish, frames, names, waveform, audio_name, payload))
        # The progress hook may raise an interrupt: only after the block is counted and queued.
        last = preview_image(frames[-1]) if frames.shape[0] else None
        self.bridge.progress(self.node_id, self.blocks_done, self.total_blocks or self.blocks_done, preview=last)

    def _publish(self, frames, names, waveform, audio_name, payload) -> None:
        for frame, name in zip(frames, names):
            preview_image(frame).save(self.folder / name, quality=JPEG_QUALITY)
        write_wav(self.folder / audio_name, waveform, self.sample_rate)
        self.bridge.send(events.BLOCK, payload)

    def end(self, interrupted: bool = False, error: str | None = None) -> None:
        """Wait for the files of every announced block, then close the stream in the UI.

        A block whose files could not be written (a full disk, say) is an error of the
        stream: it is reported here, and raised if the stream otherwise succeeded.
        """
        self._writer.shutdown(wait=True)
        failed = next((f.exception() for f in self._published if f.exception() is not None), None)
        # Only a stream that otherwise ended well raises the write failure: never mask the first error.
        raise_failed = failed is not None and not interrupted and error is None
        if raise_failed:
            error = f"{type(failed).__name__}: {failed}"
        self.bridge.send(events.END, {
            **self.header, "blocks_done": self.blocks_done, "interrupted": interrupted, "error": error,
        })
        if raise_failed:
            raise failed

    def final_ui(self, waveform: torch.Tensor) -> dict:
        """The node's UI output: the whole stream again, for replay after the run."""
        write_wav(self.folder / "stream.wav", waveform, self.sample_rate)
        return {"omniforcing": [{"frames": self.frames, "audio": _file(self.subfolder, "stream.wav"), "fps": VIDEO_FPS}]}
