"""Opt-in: the workflow templates run in a real ComfyUI on the CPU, with tiny checkpoints.

Skipped unless ``OMNIFORCING_COMFYUI`` points at a ComfyUI checkout. The server runs under
``OMNIFORCING_COMFYUI_PYTHON`` (default: this interpreter), with ``OMNIFORCING_COMFYUI_PYTHONPATH``
prepended to its PYTHONPATH (e.g. stand-ins for torchvision/torchaudio)::

    OMNIFORCING_COMFYUI=/work/comfyui OMNIFORCING_COMFYUI_PYTHON=/work/comfy-venv/bin/python \\
    OMNIFORCING_COMFYUI_PYTHONPATH=/work/comfy-shims python -m pytest -q tests/test_comfyui_e2e.py

The server is isolated in a temporary ``--base-directory`` (its own custom_nodes, models,
input, output, temp and user folders) on a free loopback port, so packs installed in the
checkout do not load and nothing outside the temp folder is written. It holds this pack and
``tests/comfy_test_pack`` (symlinks) and tiny random checkpoints under the templates' file
names. Each template is converted to an API prompt (``ui_to_api``), its LTX-2 text encoder pair
(Gemma 3 12B, impossible here) is swapped for ``OmniForcingTestContext``, the stream is shrunk
for the CPU, and the prompt goes through ``POST /prompt`` with a websocket listening the way
the web UI does. The websocket client is a small stdlib one, so the test needs nothing beyond
the pack's test requirements. One test also sends the sampler's LATENT through ComfyUI's own
LTX-2 nodes (LTXVSeparateAVLatent, LTXVAudioVAELoader, LTXVAudioVAEDecode) and compares the
native audio decode with the pack's decoders (``OmniForcingTestProbe`` reports the tensors).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_workflows import (
    DEMO_TEMPLATE,
    REAL_MODEL_TEMPLATES,
    REPO,
    TEMPLATES,
    core_snapshot,
    load_template,
    pack_object_info,
    ui_to_api,
    widget_slots,
)

COMFYUI = os.environ.get("OMNIFORCING_COMFYUI")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="set OMNIFORCING_COMFYUI to a ComfyUI checkout to run")

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
WIDTH, HEIGHT = 192, 128  # 6 x 4 latent cells: the smallest sensible frame, fast on a CPU
GENERATOR_FILE = "omniforcing_ltx2_5s_causal.safetensors"  # + .index.json, as the templates name it
BASE_FILE = "ltx-2-19b-dev-fp8.safetensors"


# A websocket client (RFC 6455, client side): what ComfyUI's /ws needs, nothing more ------


class WebSocket:
    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host: str, port: int, path: str, timeout: float = 30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill(time.monotonic() + timeout)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("websocket: no message before the deadline")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("websocket closed by the server")
        self.buffer += chunk

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)  # clients must mask every frame
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_json(self, message: dict) -> None:
        self._send_frame(0x1, json.dumps(message).encode())

    def receive(self, deadline: float) -> str | bytes:
        """The next whole message: str for text, bytes for binary."""
        parts, kind = [], None
        while True:
            first, second = self._take(2, deadline)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._take(2, deadline))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._take(8, deadline))
            payload = self._take(length, deadline)  # server frames are never masked
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode in (0x1, 0x2):
                kind = opcode
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if first & 0x80:
                    data = b"".join(parts)
                    return data.decode() if kind == 0x1 else data

    def close(self) -> None:
        self.sock.close()


# The server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def write_models(models: Path) -> None:
    """Tiny random checkpoints in the real layouts, under the names the templates use: the
    generator sharded behind an .index.json, the base as the LTX-2 checkpoint."""
    from omniforcing_core.checkpoint import save_checkpoint
    from omniforcing_core.demo import tiny_model, write_tiny_checkpoints
    from omniforcing_core.layout import BlockLayout

    generator = tiny_model(seed=0)
    shard_bytes = sum(p.numel() * p.element_size() for p in generator.parameters()) // 2
    written = save_checkpoint(models / "omniforcing" / GENERATOR_FILE, generator, prefix="model.",
                              block_layout=BlockLayout.released(), max_shard_bytes=shard_bytes)
    assert sum(path.name.endswith(".index.json") for path in written) == 1 and len(written) >= 3
    _, base = write_tiny_checkpoints(models / "tiny")
    (models / "checkpoints").mkdir(parents=True)
    base.rename(models / "checkpoints" / BASE_FILE)
    shutil.rmtree(models / "tiny")


@dataclass
class Run:
    prompt_id: str
    messages: list[dict] = field(default_factory=list)  # JSON messages {type, data} of this prompt
    previews: list[dict] = field(default_factory=list)  # binary previews: their metadata and image

    def data(self, message_type: str) -> list[dict]:
        return [message["data"] for message in self.messages if message["type"] == message_type]

    @property
    def outcome(self) -> str:
        return next(message["type"] for message in reversed(self.messages) if message["type"] in FINAL)


FINAL = ("execution_success", "execution_error", "execution_interrupted")


class ComfyServer:
    def __init__(self, checkout: Path, base: Path):
        self.base = base
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = base / "comfyui.log"
        self.object_info: dict[str, dict] = {}
        env = dict(os.environ)
        extra = os.environ.get("OMNIFORCING_COMFYUI_PYTHONPATH")
        if extra:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, env.get("PYTHONPATH")]))
        python = os.environ.get("OMNIFORCING_COMFYUI_PYTHON", sys.executable)
        with open(self.log_path, "wb") as log:  # the server keeps its own handle
            self.process = subprocess.Popen(
                [python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port), "--base-directory", str(base)],
                cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST {path}: HTTP {error.code}: {error.read().decode(errors='replace')}") from None
        return json.loads(text) if text else None

    def refusal(self, prompt: dict) -> dict:
        """POST /prompt for a prompt the server must refuse; returns its node_errors."""
        request = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30).close()
        assert refused.value.code == 400
        return json.loads(refused.value.read())["node_errors"]

    def run(self, prompt: dict, on_message=None, timeout: float = RUN_TIMEOUT_S) -> Run:
        """Queue a prompt as the web UI does and collect what the websocket brings until it ends;
        ``on_message(run, message)`` sees each JSON message as it arrives."""
        client_id = uuid.uuid4().hex
        ws = WebSocket(HOST, self.port, f"/ws?clientId={client_id}")
        try:
            deadline = time.monotonic() + timeout
            # The web UI's first message; the server answers with its own flags once it took them.
            ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            while not (isinstance(message := ws.receive(deadline), str) and json.loads(message)["type"] == "feature_flags"):
                pass
            run = Run(self.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"])
            while True:
                message = ws.receive(deadline)
                if isinstance(message, bytes):
                    run.previews.append(_preview(message))
                    continue
                message = json.loads(message)
                if (message.get("data") or {}).get("prompt_id") not in (run.prompt_id, None):
                    continue
                run.messages.append(message)
                if on_message is not None:
                    on_message(run, message)
                if message["type"] in FINAL and message["data"]["prompt_id"] == run.prompt_id:
                    return run
        finally:
            ws.close()


def _preview(message: bytes) -> dict:
    """A binary PREVIEW_IMAGE_WITH_METADATA message: type 4, metadata length, JSON, image."""
    (kind,) = struct.unpack(">I", message[:4])
    assert kind == 4, f"binary message type {kind}; the client announced supports_preview_metadata"
    (length,) = struct.unpack(">I", message[4:8])
    return {"metadata": json.loads(message[8:8 + length]), "image": message[8 + length:]}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    checkout = Path(COMFYUI)
    assert (checkout / "main.py").is_file(), f"OMNIFORCING_COMFYUI={COMFYUI} is not a ComfyUI checkout"
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "omniforcing").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "omniforcing_test_pack").symlink_to(REPO / "tests" / "comfy_test_pack",
                                                                  target_is_directory=True)
    write_models(base / "models")
    server = ComfyServer(checkout, base)
    try:
        server.wait_ready()
        server.object_info = server.get("/object_info")
        yield server
    finally:
        server.stop()


# Templates as prompts for the CPU -------------------------------------------------------


def definitions_from(comfy) -> tuple[dict, set[str]]:
    frontend_only = core_snapshot()["frontend_only"]
    return {**comfy.object_info, **frontend_only}, set(frontend_only)


def caption_width() -> int:
    from omniforcing_core import ModelConfig

    return ModelConfig.tiny().caption_channels


def cpu_prompt(comfy, name: str, *, seconds: int, seed: int) -> tuple[dict, dict[str, str]]:
    """A template as an API prompt with the test text encoder and a small, short stream;
    returns (prompt, node id by class type)."""
    prompt = ui_to_api(load_template(name), *definitions_from(comfy))
    for key, node in list(prompt.items()):
        if node["class_type"] == "LTXAVTextEncoderLoader":
            del prompt[key]
        elif node["class_type"] == "CLIPTextEncode":
            node["class_type"] = "OmniForcingTestContext"
            node["inputs"] = {"text": node["inputs"]["text"], "width": caption_width(), "tokens": 8}
    ids = {node["class_type"]: key for key, node in prompt.items()}
    sampler = prompt[ids["OmniForcingStreamingSampler"]]["inputs"]
    sampler.update(width=WIDTH, height=HEIGHT, seconds=seconds, seed=seed)
    return prompt, ids


def expected_blocks(seconds: int):
    from omniforcing_core.layout import BlockLayout

    return BlockLayout.released().blocks(seconds)


def executed_outputs(run: Run) -> dict[str, dict]:
    """The UI outputs of the prompt's nodes, by node id, as the websocket announced them."""
    return {message["node"]: message["output"] for message in run.data("executed")}


def saved_video(comfy, run: Run, save_id: str) -> Path:
    (entry,) = executed_outputs(run)[save_id]["images"]
    assert entry["type"] == "output" and entry["filename"].endswith(".mp4")
    return comfy.base / "output" / entry["subfolder"] / entry["filename"]


def probe_mp4(path: Path) -> dict:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        facts = {"codec": video.codec_context.name, "size": (video.codec_context.width, video.codec_context.height),
                 "frames": sum(1 for _ in container.decode(video=0))}
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        waveform = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
        facts.update(audio_codec=audio.codec_context.name, sample_rate=audio.codec_context.sample_rate,
                     channels=waveform.shape[0], samples=waveform.shape[1], audio_rms=float(np.sqrt((waveform ** 2).mean())))
    return facts


def block_sheet(comfy, block: dict) -> bytes:
    """The JPEG of a block's frames (one sheet per block, see nodes/events.py)."""
    return (comfy.base / "temp" / block["subfolder"] / block["sheet"]).read_bytes()


def last_frame(comfy, block: dict) -> bytes:
    """A block's last frame, cut from its sheet, as a PNG."""
    from PIL import Image

    (width, height), n = block["cell"], block["frames"] - 1
    left, top = (n % block["columns"]) * width, (n // block["columns"]) * height
    cell = Image.open(io.BytesIO(block_sheet(comfy, block))).crop((left, top, left + width, top + height))
    png = io.BytesIO()
    cell.save(png, format="PNG")
    return png.getvalue()


def mean_difference(jpeg: bytes, reference_jpeg: bytes) -> float:
    """Mean absolute difference in grey levels of two images at a quarter of the reference's
    size (box-averaged, so resampling and JPEG noise mostly cancel)."""
    import numpy as np
    from PIL import Image

    reference = Image.open(io.BytesIO(reference_jpeg)).convert("RGB")
    size = (reference.width // 4, reference.height // 4)
    a, b = (np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.BOX), dtype=np.float32)
            for data in (jpeg, reference_jpeg))
    return float(np.abs(a - b).mean())


def check_stream(comfy, run: Run, ids: dict[str, str], seconds: int) -> dict:
    """What every finished stream must show: events, previews, files, the mp4. Returns numbers for the report."""
    assert run.outcome == "execution_success", run.data("execution_error")
    sampler_id = ids["OmniForcingStreamingSampler"]
    blocks = expected_blocks(seconds)

    (start,) = run.data("omniforcing.start")
    assert (start["node"], start["blocks"], start["seconds"]) == (sampler_id, len(blocks), seconds)
    assert (start["fps"], start["sample_rate"], start["width"], start["height"]) == (24, 24000, WIDTH, HEIGHT)
    announced = run.data("omniforcing.block")
    assert [block["index"] for block in announced] == list(range(len(blocks)))
    for block, span in zip(announced, blocks):
        assert block["frames"] == span.pixel_count
        assert block["samples"] == span.sample_count
        assert block["time"] == [span.time_span[0], span.time_span[1]]
        for name in (block["sheet"], block["audio"]):
            assert (comfy.base / "temp" / block["subfolder"] / name).is_file()
    # Two files per block in the stream's temp folder, and the whole sound once for the audio widget.
    (folder,) = {block["subfolder"] for block in announced}
    assert len(list((comfy.base / "temp" / folder).iterdir())) == 2 * len(blocks) + 1
    (end,) = run.data("omniforcing.end")
    assert end == {"node": sampler_id, "prompt_id": run.prompt_id, "blocks_done": len(blocks), "interrupted": False,
                   "error": None, "replay": None}
    # The order on the wire: start, the blocks, end.
    custom = [message["type"] for message in run.messages if message["type"].startswith("omniforcing.")]
    assert custom == ["omniforcing.start", *["omniforcing.block"] * len(blocks), "omniforcing.end"]

    # One live preview per block, shown on the sampler: a JPEG of the block's last frame (at this
    # scale the tiny model's noise frames differ from one another by 10 grey levels or more).
    assert len(run.previews) == len(blocks)
    for preview, block in zip(run.previews, announced):
        assert preview["metadata"]["display_node_id"] == sampler_id
        assert preview["metadata"]["image_type"] == "image/jpeg"
        assert mean_difference(preview["image"], last_frame(comfy, block)) < 4

    (replay,) = executed_outputs(run)[sampler_id]["omniforcing"]
    frames = 24 * seconds + 1
    assert sum(block["frames"] for block in replay["blocks"]) == frames and replay["fps"] == 24
    assert replay["blocks"] == [{key: block[key] for key in ("frames", "sheet", "columns", "audio", "samples")}
                                for block in announced]

    media = probe_mp4(saved_video(comfy, run, ids["SaveVideo"]))
    samples = blocks[-1].sample_interval[1]  # 24000 * seconds + 240
    assert (media["codec"], media["size"], media["frames"]) == ("h264", (WIDTH, HEIGHT), frames)
    assert (media["audio_codec"], media["sample_rate"], media["channels"]) == ("aac", 24000, 2)
    # AAC codes frames of 1024 samples: the last one is padded.
    assert samples <= media["samples"] < samples + 1024, media
    assert media["audio_rms"] > 1e-3, media  # the sound made it through CreateVideo, not silence
    return {"blocks": len(announced), "frames": media["frames"], "samples": media["samples"],
            "expected_samples": samples, "previews": len(run.previews), "messages": len(run.messages),
            "block_s": [block["block_s"] for block in announced]}


# Tests ------------------------------------------------------------------------------------


def test_server_definitions_match_what_ci_validates_against(comfy):
    """The CI checks use the pack's INPUT_TYPES and a snapshot of the core nodes: both must be
    what this ComfyUI serves, slot for slot."""
    served = comfy.object_info
    for name, info in {**pack_object_info(), **core_snapshot()["object_info"]}.items():
        assert [(slot.input.name, slot.input.type, slot.control) for slot in widget_slots(served[name])] == \
               [(slot.input.name, slot.input.type, slot.control) for slot in widget_slots(info)], name
        assert served[name]["output"] == list(info["output"]), name
        assert served[name]["input_order"] == info["input_order"], name
    templates = comfy.get("/workflow_templates")
    assert sorted(templates["omniforcing"]) == sorted(TEMPLATES)
    for name in TEMPLATES:
        assert comfy.get(f"/api/workflow_templates/omniforcing/{name}.json") == load_template(name)
        # The thumbnail the template browser asks for.
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/omniforcing/{name}.jpg", timeout=30) as image:
            assert image.headers["Content-Type"] == "image/jpeg" and image.read(3) == b"\xff\xd8\xff"


@pytest.mark.parametrize("name", REAL_MODEL_TEMPLATES)
def test_templates_as_shipped_pass_validation_but_for_the_missing_gemma_file(comfy, name):
    """The server's own /prompt validation of the unchanged templates: the only complaint is the
    text encoder file, the one model file this server does not have."""
    prompt = ui_to_api(load_template(name), *definitions_from(comfy))
    errors = comfy.refusal(prompt)
    (encoder_id,) = [key for key, node in prompt.items() if node["class_type"] == "LTXAVTextEncoderLoader"]
    assert list(errors) == [encoder_id]
    assert [(error["type"], error["extra_info"]["input_name"]) for error in errors[encoder_id]["errors"]] == [
        ("value_not_in_list", "text_encoder")
    ]


def test_text_to_audio_video_template(comfy, record_property):
    prompt, ids = cpu_prompt(comfy, "omniforcing_t2av_5s", seconds=3, seed=1)
    started = time.monotonic()
    run = comfy.run(prompt)
    numbers = check_stream(comfy, run, ids, seconds=3)
    record_property("t2av", {**numbers, "wall_s": round(time.monotonic() - started, 2)})


def test_realtime_template(comfy, record_property):
    prompt, ids = cpu_prompt(comfy, "omniforcing_realtime_3step", seconds=2, seed=2)
    assert prompt[ids["OmniForcingStreamSettings"]]["inputs"]["schedule"] == "realtime-3step"
    started = time.monotonic()
    run = comfy.run(prompt)
    numbers = check_stream(comfy, run, ids, seconds=2)
    record_property("realtime", {**numbers, "wall_s": round(time.monotonic() - started, 2)})


def test_long_stream_template_with_window_and_prompt_switch(comfy, record_property):
    """The 60 s template at a tenth of the scale: 6 s through a 2 s window (so blocks are
    evicted and positions rebased), the prompt switching at second 3 over 2 s."""
    prompt, ids = cpu_prompt(comfy, "omniforcing_long_stream_60s", seconds=6, seed=3)
    settings = prompt[ids["OmniForcingStreamSettings"]]["inputs"]
    assert (settings["window_seconds"], settings["position_mode"]) == (8, "rebased")
    settings["window_seconds"] = 2
    switch = prompt[ids["OmniForcingPromptSchedule"]]["inputs"]
    assert (switch["at_second"], switch["blend_seconds"]) == (30, 2)
    switch["at_second"] = 3
    contexts = [node for node in prompt.values() if node["class_type"] == "OmniForcingTestContext"]
    assert len(contexts) == 2 and contexts[0]["inputs"]["text"] != contexts[1]["inputs"]["text"]
    started = time.monotonic()
    run = comfy.run(prompt)
    numbers = check_stream(comfy, run, ids, seconds=6)
    record_property("long", {**numbers, "wall_s": round(time.monotonic() - started, 2)})

    # The same stream without the switch: identical up to second 3 (the stream is causal and the
    # noise is the seed's), different from there on.
    del prompt[ids["OmniForcingStreamingSampler"]]["inputs"]["prompt_schedule"]
    switch_context = prompt.pop(ids["OmniForcingPromptSchedule"])["inputs"]["conditioning"][0]
    del prompt[switch_context]
    unswitched = comfy.run(prompt)
    assert unswitched.outcome == "execution_success"
    same = [block_sheet(comfy, a) == block_sheet(comfy, b)
            for a, b in zip(run.data("omniforcing.block"), unswitched.data("omniforcing.block"), strict=True)]
    assert same == [True, True, True, False, False, False]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def test_the_60s_template_at_its_size_keeps_each_frame_once(comfy, record_property):
    """The whole 60 s template at 576x384 (tiny weights): the server's peak memory during the
    run stays within 1.2x of what the outputs hold (IMAGE + AUDIO) plus what it held before."""
    prompt, ids = cpu_prompt(comfy, "omniforcing_long_stream_60s", seconds=60, seed=3)
    prompt[ids["OmniForcingStreamingSampler"]]["inputs"].update(width=576, height=384)
    Path(f"/proc/{comfy.process.pid}/clear_refs").write_text("5")  # resets the peak to now
    before = _peak_rss(comfy.process.pid)
    run = comfy.run(prompt, timeout=1800)
    assert run.outcome == "execution_success", run.data("execution_error")
    peak = _peak_rss(comfy.process.pid)
    outputs = 1441 * 384 * 576 * 3 * 4 + 2 * 1440240 * 4
    record_property("memory_60s", {"peak_gib": round(peak / 2**30, 2), "before_gib": round(before / 2**30, 2),
                                   "outputs_gib": round(outputs / 2**30, 2),
                                   "ratio": round((peak - before) / outputs, 3)})
    assert peak - before <= 1.2 * outputs, (peak, before, outputs)


def test_the_demo_template_runs_as_shipped_with_no_demo_file_in_the_model_folders(comfy, record_property):
    """The demo template unchanged but for its length: the built-in demo model from the pack's own
    files, prompted by OmniForcing Demo Prompt, into CreateVideo + SaveVideo."""
    from omniforcing_core.demo_model import DEMO_GENERATOR, DEMO_HEIGHT, DEMO_WIDTH, demo_available
    from omniforcing_core.layout import BlockLayout

    if not demo_available():
        pytest.skip("the built-in demo's files are not in omniforcing_core/assets/demo")
    assert not list((comfy.base / "models").rglob(DEMO_GENERATOR))
    prompt = ui_to_api(load_template(DEMO_TEMPLATE), *definitions_from(comfy))
    ids = {node["class_type"]: key for key, node in prompt.items()}
    prompt[ids["OmniForcingStreamingSampler"]]["inputs"]["seconds"] = 2
    started = time.monotonic()
    run = comfy.run(prompt)
    assert run.outcome == "execution_success", run.data("execution_error")
    blocks = BlockLayout.paper().blocks(2)
    assert [block["index"] for block in run.data("omniforcing.block")] == list(range(len(blocks)))
    media = probe_mp4(saved_video(comfy, run, ids["SaveVideo"]))
    assert (media["size"], media["frames"], media["sample_rate"]) == ((DEMO_WIDTH, DEMO_HEIGHT), 49, 24000)
    record_property("demo", {"wall_s": round(time.monotonic() - started, 2),
                             "block_s": [block["block_s"] for block in run.data("omniforcing.block")]})


def test_the_model_loads_once_and_shows_what_it_detected(comfy):
    """The loader's info text reaches the UI when it loads; a second run reuses the loaded model."""
    prompt, ids = cpu_prompt(comfy, "omniforcing_t2av_5s", seconds=1, seed=6)
    prompt[ids["OmniForcingModelLoader"]]["inputs"]["weight_dtype"] = "fp32"  # inputs no other test uses
    first = comfy.run(prompt)
    assert first.outcome == "execution_success"
    assert ids["OmniForcingModelLoader"] not in first.data("execution_cached")[0]["nodes"]
    info = executed_outputs(first)[ids["OmniForcingModelLoader"]]["text"][0].splitlines()
    assert info[:3] == ["layout: released", "audio sink tokens: 0", "layers: 2"]

    prompt[ids["OmniForcingStreamingSampler"]]["inputs"]["seed"] = 7
    second = comfy.run(prompt)
    assert second.outcome == "execution_success"
    (cached,) = second.data("execution_cached")
    assert ids["OmniForcingModelLoader"] in cached["nodes"] and ids["OmniForcingStreamingSampler"] not in cached["nodes"]
    assert len(second.data("omniforcing.block")) == 1


def test_interrupt_stops_the_stream_and_the_next_run_succeeds(comfy, record_property):
    prompt, ids = cpu_prompt(comfy, "omniforcing_t2av_5s", seconds=600, seed=4)
    clicked = []

    def interrupt_after_first_block(run, message):
        if message["type"] == "omniforcing.block" and message["data"]["index"] == 0:
            clicked.append(time.monotonic())
            comfy.post("/interrupt", {"prompt_id": run.prompt_id})
        if message["type"] == "omniforcing.end":
            clicked.append(time.monotonic())

    started = time.monotonic()
    run = comfy.run(prompt, on_message=interrupt_after_first_block)
    interrupted_after_s = time.monotonic() - started
    assert run.outcome == "execution_interrupted"
    (interrupted,) = run.data("execution_interrupted")
    assert interrupted["node_id"] == ids["OmniForcingStreamingSampler"]
    (end,) = run.data("omniforcing.end")
    announced = run.data("omniforcing.block")
    # Nothing new is shown after the click: the block generated ahead meanwhile is dropped.
    assert end["interrupted"] is True and [block["index"] for block in announced] == [0]
    assert end["blocks_done"] == 1
    # What streamed stays replayable in the player (the node's outputs go nowhere).
    replay = end["replay"]
    assert replay["blocks"] == [{key: block[key] for key in ("frames", "sheet", "columns", "audio", "samples")}
                                for block in announced]
    assert all((comfy.base / "temp" / replay["subfolder"] / block[kind]).is_file()
               for block in replay["blocks"] for kind in ("sheet", "audio"))
    assert ids["SaveVideo"] not in executed_outputs(run)

    again, ids = cpu_prompt(comfy, "omniforcing_t2av_5s", seconds=2, seed=5)
    numbers = check_stream(comfy, comfy.run(again), ids, seconds=2)
    record_property("interrupt", {"blocks_announced": len(announced), "blocks_done": end["blocks_done"],
                                  "click_to_end_s": round(clicked[1] - clicked[0], 3),
                                  "interrupted_after_s": round(interrupted_after_s, 2), "next_run": numbers})


def test_a_bad_sigma_list_is_refused_once_under_its_own_name(comfy):
    prompt, ids = cpu_prompt(comfy, "omniforcing_realtime_3step", seconds=1, seed=0)
    prompt[ids["OmniForcingStreamSettings"]]["inputs"].update(schedule="custom", custom_sigmas="1000, 500, 700, 0")
    errors = comfy.refusal(prompt)
    assert list(errors) == [ids["OmniForcingStreamSettings"]]
    (error,) = errors[ids["OmniForcingStreamSettings"]]["errors"]
    assert error["type"] == "custom_validation_failed" and error["extra_info"]["input_name"] == "custom_sigmas"
    assert "strictly decrease" in error["details"]


def test_the_sampler_alone_runs_and_a_cached_rerun_hands_the_player_its_stream(comfy):
    """No save node: the sampler is an output node. Queued again unchanged, nothing runs, and the
    player gets the stream again (ComfyUI resends a cached output node's UI output)."""
    prompt, ids = cpu_prompt(comfy, "omniforcing_t2av_5s", seconds=1, seed=11)
    for class_type in ("CreateVideo", "SaveVideo"):
        del prompt[ids[class_type]]
    sampler = ids["OmniForcingStreamingSampler"]
    first = comfy.run(prompt)
    assert first.outcome == "execution_success", first.data("execution_error")
    (replay,) = executed_outputs(first)[sampler]["omniforcing"]
    assert len(replay["blocks"]) == 1 == len(first.data("omniforcing.block"))

    again = comfy.run(prompt)
    assert again.outcome == "execution_success"
    (cached,) = again.data("execution_cached")
    assert sampler in cached["nodes"] and not again.data("omniforcing.block")
    assert executed_outputs(again)[sampler]["omniforcing"] == [replay]


def read_probe(comfy, run: Run, probe_id: str) -> tuple[dict, dict]:
    """What OmniForcingTestProbe saw: (its description of the inputs, the tensors by name)."""
    from safetensors.torch import load_file

    (probe,) = executed_outputs(run)[probe_id]["probe"]
    return probe["inputs"], load_file(comfy.base / "output" / probe["file"])


def read_flac(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, codec = stream.codec_context.sample_rate, stream.codec_context.name
        channels = stream.codec_context.channels
        frames = []
        for frame in container.decode(audio=0):
            data = frame.to_ndarray()  # planar: [channels, n]; packed: [1, n * channels], interleaved
            frames.append(data if frame.format.is_planar else data.reshape(-1, channels).T)
    waveform = np.concatenate(frames, axis=-1)
    if waveform.dtype.kind == "i":  # FLAC holds integers (s16 here)
        waveform = waveform / float(np.iinfo(waveform.dtype).max + 1)
    return codec, rate, waveform


def test_sampler_latent_decodes_with_the_native_ltx2_nodes(comfy, record_property):
    """The sampler's LATENT output (ComfyUI's LTX-2 audio+video layout, a NestedTensor) goes
    through ComfyUI's own nodes: LTXVSeparateAVLatent splits it, LTXVAudioVAELoader loads the
    audio VAE + vocoder of the base checkpoint (the file the pack's loader reads too) and
    LTXVAudioVAEDecode decodes the audio latent; SaveAudio writes it. The native decode must
    agree with the pack's own decoders: exactly (to float rounding) with a whole-clip decode of
    the same latent, and with the sampler's streamed AUDIO everywhere except around the block
    seam, where the stream (lookahead 0) extrapolates the next block and crossfades."""
    import numpy as np
    import torch

    from omniforcing_core import load_decoders
    from omniforcing_core.decoders.audio_stream import (
        DEFAULT_CROSSFADE_SAMPLES,
        decode_audio_clip,
    )

    seconds = 2
    prompt, ids = cpu_prompt(comfy, "omniforcing_t2av_5s", seconds=seconds, seed=8)
    sampler = ids["OmniForcingStreamingSampler"]
    assert comfy.object_info[prompt[sampler]["class_type"]]["output"][3] == "LATENT"
    for name in ("LTXVSeparateAVLatent", "LTXVAudioVAELoader", "LTXVAudioVAEDecode", "SaveAudio"):
        assert name in comfy.object_info, f"{name} is not served by this ComfyUI"
    ckpt_name = comfy.object_info["LTXVAudioVAELoader"]["input"]["required"]["ckpt_name"]  # a V3 combo
    assert BASE_FILE in (ckpt_name[1]["options"] if ckpt_name[0] == "COMBO" else ckpt_name[0]), ckpt_name
    separate, loader, decode, save, probe = "901", "902", "903", "904", "905"
    assert not {separate, loader, decode, save, probe} & set(prompt)
    prompt.update({
        separate: {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": [sampler, 3]}},
        loader: {"class_type": "LTXVAudioVAELoader", "inputs": {"ckpt_name": BASE_FILE}},
        decode: {"class_type": "LTXVAudioVAEDecode", "inputs": {"samples": [separate, 1], "audio_vae": [loader, 0]}},
        save: {"class_type": "SaveAudio", "inputs": {"audio": [decode, 0], "filename_prefix": "audio/native_ltx2"}},
        probe: {"class_type": "OmniForcingTestProbe", "inputs": {
            "label": "native_ltx2", "av_latent": [sampler, 3], "video_latent": [separate, 0],
            "audio_latent": [separate, 1], "native_audio": [decode, 0], "sampler_audio": [sampler, 1]}},
    })
    started = time.monotonic()
    run = comfy.run(prompt)
    wall_s = time.monotonic() - started
    assert run.outcome == "execution_success", run.data("execution_error")

    blocks = expected_blocks(seconds)
    frames, latents = blocks[-1].video_end, blocks[-1].audio_end  # 7 video, 51 audio latents for 2 s
    video_shape, audio_shape = [1, 128, frames, HEIGHT // 32, WIDTH // 32], [1, 8, latents, 16]
    samples = 240 * (4 * latents - 3)
    assert samples == blocks[-1].sample_interval[1]

    # The LATENT as the sampler gives it, and LTXVSeparateAVLatent's two halves.
    described, tensors = read_probe(comfy, run, probe)
    assert described["av_latent"]["keys"] == ["samples"]
    assert described["av_latent"]["samples"] == {"nested": True, "type": "NestedTensor",
                                                 "shapes": [video_shape, audio_shape]}
    assert described["video_latent"]["samples"] == {"nested": False, "shape": video_shape, "dtype": "torch.float32"}
    assert described["audio_latent"]["samples"] == {"nested": False, "shape": audio_shape, "dtype": "torch.float32"}
    assert torch.equal(tensors["video_latent.samples"], tensors["av_latent.samples.0"])
    assert torch.equal(tensors["audio_latent.samples"], tensors["av_latent.samples.1"])
    audio_latent = tensors["audio_latent.samples"]
    assert audio_latent.abs().max() > 0.1  # a real latent, not zeros

    # The native decode: 24 kHz stereo, 240 samples per mel frame, 4T - 3 mel frames.
    assert described["native_audio"]["sample_rate"] == 24000
    assert described["native_audio"]["waveform"]["shape"] == [1, 2, samples]
    assert described["sampler_audio"]["sample_rate"] == 24000
    assert described["sampler_audio"]["waveform"]["shape"] == [1, 2, samples]
    native, streamed = tensors["native_audio.waveform"][0], tensors["sampler_audio.waveform"][0]
    assert native.abs().max() > 1e-2  # not silence

    # Our decoders on the same latent, read from the same base file, decoding the whole clip.
    decoders = load_decoders(comfy.base / "models" / "checkpoints" / BASE_FILE)
    ours = decode_audio_clip(decoders.audio_vae, decoders.vocoder, audio_latent).waveform[0]
    assert ours.shape == native.shape
    whole_clip_diff = float((native - ours).abs().max())
    assert whole_clip_diff < 1e-4, whole_clip_diff

    # The streamed AUDIO: exact but for the samples whose vocoder window reaches past a block's
    # end (the last `right` mel frames) and the crossfade after the seam.
    right = decoders.vocoder.config.receptive_field_frames[1]
    seams = np.zeros(samples, dtype=bool)
    for block in blocks[:-1]:
        seam = block.sample_interval[1]
        seams[seam - right * 240:seam + DEFAULT_CROSSFADE_SAMPLES] = True
    difference = (native - streamed).abs().amax(dim=0).numpy()
    stream_exact_diff, stream_seam_diff = float(difference[~seams].max()), float(difference[seams].max())
    assert stream_exact_diff < 1e-4, stream_exact_diff
    assert stream_seam_diff < 2.0  # both in [-1, 1]; recorded for the report

    # SaveAudio's file holds the native decode.
    (entry,) = executed_outputs(run)[save]["audio"]
    codec, rate, saved = read_flac(comfy.base / "output" / entry["subfolder"] / entry["filename"])
    assert (codec, rate, saved.shape) == ("flac", 24000, (2, samples)), (codec, rate, saved.shape)
    flac_diff = float(np.abs(saved - native.numpy()).max())
    assert flac_diff < 1e-3, flac_diff  # 16-bit quantization

    record_property("native_ltx2", {
        "video_latent": video_shape, "audio_latent": audio_shape, "samples": samples,
        "max_diff_native_vs_our_whole_clip": whole_clip_diff,
        "max_diff_native_vs_stream_outside_seams": stream_exact_diff,
        "max_diff_native_vs_stream_at_seams": stream_seam_diff,
        "seam_samples": int(seams.sum()), "max_diff_flac_vs_native": flac_diff,
        "native_peak": float(native.abs().max()), "wall_s": round(wall_s, 2),
    })
