"""Shows a stream in the UI while it runs: each block goes to ComfyUI's temp folder as two
files, its frames as one sheet (a JPEG grid) and its sound as one WAV, and is announced to
the web extension (see ``events.py``); the node's progress bar carries the block's last
frame for clients without the extension.

Files are written on a background thread, in block order, so encoding them overlaps the
next block's generation instead of delaying it.
"""

from __future__ import annotations

import math
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
from .errors import plain_message

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


def preview_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) of a frame's preview: at most PREVIEW_LONG_SIDE pixels long."""
    scale = min(1.0, PREVIEW_LONG_SIDE / max(height, width))
    return round(width * scale), round(height * scale)


def preview_image(frame: torch.Tensor) -> Image.Image:
    """A PIL image of a frame [H, W, 3] in [0, 1], at most PREVIEW_LONG_SIDE pixels long."""
    image = Image.fromarray(frames_to_uint8(frame).numpy())
    size = preview_size(image.height, image.width)
    return image if size == image.size else image.resize(size, Image.BILINEAR)


def sheet_layout(frames: int, height: int, width: int) -> dict:
    """Where each of a block's frames lies in its sheet: left to right, row by row, in
    ``columns`` cells of ``width`` x ``height``. Nearly square, so neither side nears JPEG's
    65535-pixel limit however many frames a block carries (a decode look-ahead hands the
    last block up to 216)."""
    cell_w, cell_h = preview_size(height, width)
    columns = max(1, min(frames, math.ceil(math.sqrt(frames * cell_h / cell_w))))
    return {"columns": columns, "width": cell_w, "height": cell_h}


def frame_sheet(frames: torch.Tensor, layout: dict) -> Image.Image:
    """A block's frames [n, H, W, 3] in [0, 1] as one image, laid out as ``sheet_layout`` says."""
    columns, width, height = layout["columns"], layout["width"], layout["height"]
    sheet = Image.new("RGB", (columns * width, math.ceil(frames.shape[0] / columns) * height))
    for n, frame in enumerate(frames):
        sheet.paste(preview_image(frame), ((n % columns) * width, (n // columns) * height))
    return sheet


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
        self.blocks: list[dict] = []  # what each announced block's files hold: the replay's playlist
        self.cell: list[int] | None = None  # [width, height] of a frame in the sheets
        self.seconds_shown = 0.0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniforcing-preview")
        self._published: list[Future] = []
        bridge.send(events.START, {
            **self.header, "blocks": total_blocks, "fps": VIDEO_FPS, "sample_rate": sample_rate,
            "width": width, "height": height, "seconds": seconds,
        })

    @property
    def blocks_done(self) -> int:
        return len(self.blocks)

    def block(self, block: StreamBlock, block_s: float) -> None:
        """Announce one finished, decoded block."""
        frames, waveform = block.decoded.frames, block.decoded.waveform
        name = f"b{block.index:05d}"
        layout = sheet_layout(*frames.shape[:3]) if frames.shape[0] else None
        if layout is not None:
            self.cell = [layout["width"], layout["height"]]
        entry = {"frames": frames.shape[0], "sheet": f"{name}.jpg" if layout else None,
                 "columns": layout["columns"] if layout else 0, "audio": f"{name}.wav", "samples": waveform.shape[1]}
        self.blocks.append(entry)
        self.seconds_shown = block.time_span[1]
        payload = {**self.header, "index": block.index, "blocks": self.total_blocks, "time": list(block.time_span),
                   "fps": VIDEO_FPS, "sample_rate": self.sample_rate, "subfolder": self.subfolder, "cell": self.cell,
                   "block_s": round(block_s, 4), **entry}
        self._published.append(self._writer.submit(self._publish, frames, waveform, layout, payload))
        # The progress hook may raise an interrupt: only after the block is counted and queued.
        last = preview_image(frames[-1]) if frames.shape[0] else None
        self.bridge.progress(self.node_id, self.blocks_done, self.total_blocks or self.blocks_done, preview=last)

    def _publish(self, frames, waveform, layout, payload) -> None:
        if layout is not None:
            frame_sheet(frames, layout).save(self.folder / payload["sheet"], quality=JPEG_QUALITY)
        write_wav(self.folder / payload["audio"], waveform, self.sample_rate)
        self.bridge.send(events.BLOCK, payload)

    def end(self, interrupted: bool = False, error: str | None = None) -> None:
        """Wait for the files of every announced block, then close the stream in the UI.

        A stream that did not finish hands the UI the blocks it showed, for replay (its
        outputs go nowhere: ComfyUI passes nothing on from an interrupted or failed node).
        A block whose files could not be written (a full disk, say) is an error of the
        stream: it is reported here, and raised if the stream otherwise succeeded.
        """
        self._writer.shutdown(wait=True)
        failed = next((f.exception() for f in self._published if f.exception() is not None), None)
        # Only a stream that otherwise ended well raises the write failure: never mask the first error.
        raise_failed = failed is not None and not interrupted and error is None
        if raise_failed:
            error = plain_message(str(failed))
        unfinished = interrupted or error is not None
        self.bridge.send(events.END, {
            **self.header, "blocks_done": self.blocks_done, "interrupted": interrupted, "error": error,
            "replay": self.replay() if unfinished and failed is None and self.blocks else None,
        })
        if raise_failed:
            raise failed

    def replay(self) -> dict:
        """The announced blocks, in order: what the player replays."""
        return {"subfolder": self.subfolder, "cell": self.cell, "fps": VIDEO_FPS, "sample_rate": self.sample_rate,
                "seconds": self.seconds_shown, "blocks": self.blocks}

    def final_ui(self, waveform: torch.Tensor) -> dict:
        """The node's UI output: the stream again for the player's replay, and the whole sound
        as one WAV for the audio widget (to scrub and save)."""
        write_wav(self.folder / "stream.wav", waveform, self.sample_rate)
        return {"omniforcing": [{**self.replay(), "stream_audio": _file(self.subfolder, "stream.wav")}]}
