"""Every node, run the way ComfyUI runs it, without ComfyUI: a recording bridge stands in
for its folders, progress bar, websocket and interrupt flag."""

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from nodes import comfy_bridge, events
from nodes.comfy_bridge import StandaloneBridge
from nodes.demo_prompt import DEMO_PROMPT_KEY, demo_prompt_encoder
from nodes.model import BUILT_IN_BASE, DEMO_GENERATOR
from nodes.settings import NodeStreamSettings
from omniforcing_core.checkpoint import load_prompt_encoder
from omniforcing_core.conditioning import TextConditioning, load_text_conditioning
from omniforcing_core.demo import TINY_BASE_FILE, TINY_GENERATOR_FILE, write_tiny_checkpoints
from omniforcing_core.decoders.video_stream import exact_lookahead_latents
from omniforcing_core.demo_model import DEMO_BASE, DEMO_PROMPT
from omniforcing_core.world.grammar import VOCABULARY

ROOT = Path(__file__).resolve().parents[1]


class Interrupted(BaseException):
    """Like ComfyUI's InterruptProcessingException: a BaseException, not an Exception."""


class RecordingBridge(StandaloneBridge):
    def __init__(self, models_dir, temp_dir, output_dir):
        super().__init__(models_dir)
        self._temp, self._output = temp_dir, output_dir
        self.events, self.progress_calls, self.releases = [], [], 0
        self.interrupt_after_blocks = None

    def temp_dir(self):
        return self._temp

    def output_dir(self):
        return self._output

    def send(self, event, payload):
        self.events.append((event, payload))

    def progress(self, node_id, value, total, preview=None):
        self.progress_calls.append((node_id, value, total, None if preview is None else preview.size))

    def check_interrupt(self):
        if self.interrupt_after_blocks is not None and len(self.progress_calls) >= self.interrupt_after_blocks:
            raise Interrupted(f"interrupted after {len(self.progress_calls)} blocks")

    def release_memory(self):
        self.releases += 1

    def event_names(self):
        return [event for event, _ in self.events]


@pytest.fixture
def bridge(tmp_path):
    models = tmp_path / "models"
    generator, base = write_tiny_checkpoints(tmp_path / "written")
    (models / "omniforcing").mkdir(parents=True)
    (models / "checkpoints").mkdir(parents=True)
    generator.rename(models / "omniforcing" / generator.name)
    base.rename(models / "checkpoints" / base.name)
    recording = RecordingBridge(models, tmp_path / "temp", tmp_path / "output")
    comfy_bridge.use_bridge(recording)
    yield recording
    comfy_bridge.use_bridge(None)


def node(name):
    return nodes.NODE_CLASS_MAPPINGS[name]()


def conditioning(seed=0, tokens=16, width=64, extra=None):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, width, generator=generator), dict(extra or {"pooled_output": None})]]


def load_tiny(weight_dtype="auto"):
    result = node("OmniForcingModelLoader").load(TINY_GENERATOR_FILE, TINY_BASE_FILE, weight_dtype)
    return result["result"][0], result["ui"]


SETTINGS_INPUTS = dict(audio_sink_tokens=-1, window_seconds=8, retained_start_blocks=1, schedule="quality-4step",
                       custom_sigmas="1000, 909, 725, 421, 0", context_noise=0.0, position_mode="absolute",
                       decode_lookahead=0)


def settings(**changes):
    return node("OmniForcingStreamSettings").build(**{**SETTINGS_INPUTS, **changes})[0]


BLOCK_ENTRY = ("frames", "sheet", "columns", "audio", "samples")  # what a replay keeps of each block event


def run_sampler(model, seconds=2, decode="full", **kwargs):
    return node("OmniForcingStreamingSampler").sample(
        model, conditioning(), width=96, height=64, seconds=seconds, seed=3, decode=decode, unique_id="7", **kwargs
    )


# Definitions ----------------------------------------------------------------------


def test_pack_loads_like_comfyui_loads_it():
    spec = importlib.util.spec_from_file_location("omniforcing_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["omniforcing_pack"] = pack
    try:
        spec.loader.exec_module(pack)
    finally:
        sys.modules.pop("omniforcing_pack")
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS) == {
        "OmniForcingModelLoader", "OmniForcingStreamSettings", "OmniForcingStreamingSampler",
        "OmniForcingPromptSchedule", "OmniForcingSavePromptContext", "OmniForcingDemoPrompt",
    }
    assert all(name.startswith("OmniForcing ") for name in pack.NODE_DISPLAY_NAME_MAPPINGS.values())
    assert pack.WEB_DIRECTORY == "./web"


def test_input_definitions(bridge):
    loader = nodes.NODE_CLASS_MAPPINGS["OmniForcingModelLoader"].INPUT_TYPES()["required"]
    # The built-in demo first (the default), its "(built in)" base last: a real generator defaults to a real base.
    assert loader["generator"][0] == [DEMO_GENERATOR, TINY_GENERATOR_FILE]
    assert loader["base"][0] == [TINY_BASE_FILE, BUILT_IN_BASE]
    assert loader["weight_dtype"][0] == ["auto", "bf16", "fp16", "fp32", "fp8"]
    sampler = nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamingSampler"]
    required = sampler.INPUT_TYPES()["required"]
    assert [required[k][1]["step"] for k in ("width", "height")] == [32, 32]
    assert required["seconds"][1]["min"] == 1
    assert sampler.RETURN_TYPES == ("IMAGE", "AUDIO", "FLOAT", "LATENT")
    stream = nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamSettings"].INPUT_TYPES()["required"]
    assert stream["schedule"][0] == ["quality-4step", "realtime-3step", "custom"]
    assert stream["context_noise"][1]["round"] == 0.001  # the frontend would round to 0.1 otherwise


def test_every_input_and_output_has_a_tooltip(bridge):
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for key, spec in inputs.get(section, {}).items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{name}.{key}"
        assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES), name
    sampler = nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamingSampler"]
    fps, latent = sampler.OUTPUT_TOOLTIPS[2:]
    assert "always 24" in fps and "CreateVideo" in fps
    assert "[1, 128, frames, height/32, width/32]" in latent and "[1, 8, 25 x seconds + 1, 16]" in latent


def test_the_sampler_is_an_output_node():
    # ComfyUI runs a graph only from output nodes, and resends only their UI output on a cached run.
    assert nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamingSampler"].OUTPUT_NODE is True


# Loader ---------------------------------------------------------------------------


def test_loader_detects_and_shows_the_architecture(bridge):
    model, ui = load_tiny()
    info = ui["text"][0]
    assert "layout: released" in info and "audio sink tokens: 0" in info and "layers: 2" in info
    assert model.pipeline.transformer.patchify_proj.weight.dtype == torch.float32  # auto on the CPU
    assert model.pipeline.transformer.config.caption_channels == 32


def test_loader_fp8_keeps_block_weights_in_fp8(bridge):
    model, _ = load_tiny("fp8")
    dtypes = {p.dtype for n, p in model.pipeline.transformer.named_parameters() if n.endswith("to_q.weight")}
    assert dtypes == {torch.float8_e4m3fn}


def test_a_broken_model_file_is_reported_problem_first_with_its_name(bridge):
    broken = bridge.models_dir / "omniforcing" / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(Exception) as refused:
        node("OmniForcingModelLoader").load("broken.safetensors", TINY_BASE_FILE, "auto")
    # ComfyUI's toast shows "<type>: <message>": a builtin type, the file's name early, its folder at the end.
    assert type(refused.value) is ValueError
    message = str(refused.value)
    assert message.startswith("broken.safetensors: ") and "header" in message
    assert message.endswith(f"(in {broken.parent})") and message.count(str(broken.parent)) == 1


def test_missing_model_file_names_the_folders(bridge):
    with pytest.raises(FileNotFoundError, match="omniforcing"):
        node("OmniForcingModelLoader").load("nope.safetensors", TINY_BASE_FILE, "auto")


# Sampler --------------------------------------------------------------------------


def test_sampler_streams_images_audio_and_latent(bridge):
    model, _ = load_tiny()
    result = run_sampler(model, seconds=2, settings=settings())
    images, audio, fps, latent = result["result"]
    assert images.shape == (49, 64, 96, 3) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert audio["sample_rate"] == 24000 and tuple(audio["waveform"].shape) == (1, 2, 48240)
    assert fps == 24.0
    video_latent, audio_latent = latent["samples"]
    assert tuple(video_latent.shape) == (1, 128, 7, 2, 3) and tuple(audio_latent.shape) == (1, 8, 51, 16)
    assert bridge.event_names() == [events.START, events.BLOCK, events.BLOCK, events.END]
    start, first, second, end = (payload for _, payload in bridge.events)
    assert start["blocks"] == 2 and start["fps"] == 24 and start["node"] == "7"
    assert [first["index"], second["index"]] == [0, 1]
    assert [first["frames"], second["frames"]] == [25, 24]
    assert [first["samples"], second["samples"]] == [24240, 24000]
    assert end == {"node": "7", "prompt_id": None, "blocks_done": 2, "interrupted": False, "error": None,
                   "replay": None}
    assert (first["fps"], first["sample_rate"]) == (24, 24000)
    # Each block is two files: its frames as one sheet, its sound as one WAV.
    folder = bridge.temp_dir() / first["subfolder"]
    assert (folder / first["audio"]).stat().st_size == 44 + 24240 * 2 * 2  # 16-bit stereo WAV
    assert (first["columns"], first["cell"], second["columns"]) == (5, [96, 64], 4)
    sheet = Image.open(folder / first["sheet"])
    assert sheet.size == (5 * 96, 5 * 64) and Image.open(folder / second["sheet"]).size == (4 * 96, 6 * 64)
    # The sheet's cells are the frames: frame 22 in column 2, row 4 (compared over 8 x 8 averages:
    # JPEG blurs the tiny model's pixel noise).
    def coarse(pixels):
        return pixels.reshape(8, 8, 12, 8, 3).mean(axis=(1, 3))

    cell = np.asarray(sheet.crop((2 * 96, 4 * 64, 3 * 96, 5 * 64)), dtype=np.float32)
    errors = [np.abs(coarse(cell) - coarse(images[n].numpy() * 255)).mean() for n in (21, 22, 23)]
    assert errors[1] < 3 and min(errors[0], errors[2]) > 3 * errors[1]
    assert sorted(path.name for path in folder.iterdir()) == ["b00000.jpg", "b00000.wav", "b00001.jpg", "b00001.wav",
                                                                "stream.wav"]
    assert [call[1:3] for call in bridge.progress_calls] == [(1, 2), (2, 2)]
    assert bridge.progress_calls[0][3] == (96, 64)  # the preview image of the block's last frame
    (replay,) = result["ui"]["omniforcing"]
    assert (replay["fps"], replay["sample_rate"], replay["seconds"]) == (24, 24000, 49 / 24)
    assert (replay["subfolder"], replay["cell"]) == (first["subfolder"], [96, 64])
    assert replay["blocks"] == [{key: block[key] for key in BLOCK_ENTRY} for block in (first, second)]
    stream_audio = replay["stream_audio"]
    assert (bridge.temp_dir() / stream_audio["subfolder"] / stream_audio["filename"]).exists()


def test_the_history_entry_of_a_long_stream_stays_small(bridge):
    model, _ = load_tiny()
    ui = run_sampler(model, seconds=12)["ui"]
    # One entry per block (not per frame): ComfyUI keeps it in the history and sends it to the browser.
    assert len(ui["omniforcing"][0]["blocks"]) == 12 and len(json.dumps(ui)) < 150 * 12


def test_fast_preview_streams_sketches_and_still_returns_the_full_decode(bridge, monkeypatch):
    from nodes import live_preview

    model, _ = load_tiny()
    full = run_sampler(model, seconds=2)["result"]
    shown = []
    block = live_preview.LivePreview.block
    monkeypatch.setattr(live_preview.LivePreview, "block", lambda self, b, s: shown.append(b.decoded.frames) or block(self, b, s))
    preview = run_sampler(model, seconds=2, decode="fast preview")["result"]
    sketches = torch.cat(shown)
    expected = model.pipeline.decoder(preview=True).preview.frames(preview[3]["samples"][0], first_latent=0)
    assert sketches.shape == full[0].shape and torch.allclose(sketches, expected, atol=1e-6)
    assert (sketches - full[0]).abs().max() > 0.05  # the stream showed sketches, not the VAE decode
    assert torch.equal(full[0], preview[0])
    assert torch.equal(full[1]["waveform"], preview[1]["waveform"])


def test_an_interrupt_asked_mid_block_stops_within_a_pass(bridge, monkeypatch):
    model, _ = load_tiny()
    asked = []
    requested = lambda: asked.append(1) or len(asked) > 7  # noqa: E731  (block 1's third pass)

    def check_interrupt():  # ComfyUI's check raises once the request stands
        if len(asked) > 7:
            raise Interrupted("interrupted")

    monkeypatch.setattr(bridge, "interrupt_requested", requested)
    monkeypatch.setattr(bridge, "check_interrupt", check_interrupt)
    with pytest.raises(Interrupted):
        run_sampler(model, seconds=4)
    # Block 0 asks before each of its 5 passes; the worker generating block 1 ahead stops at
    # the pass the request lands on (or earlier, when the check after block 0 already sees it).
    assert 6 <= len(asked) <= 8
    # Block 0 is shown unless the request landed while it decoded (the worker asks meanwhile).
    assert bridge.events[-1][1]["blocks_done"] <= 1 and bridge.events[-1][1]["interrupted"] is True


def test_a_failing_preview_write_fails_the_stream_with_its_error(bridge, monkeypatch):
    from nodes import live_preview

    model, _ = load_tiny()

    def full_disk(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(live_preview, "write_wav", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        run_sampler(model, seconds=2)
    end = bridge.events[-1][1]
    assert end["error"] == "No space left on device" and end["interrupted"] is False and end["replay"] is None


@pytest.mark.parametrize("seconds", [1, 3, 6])
def test_every_decode_lookahead_streams_through_the_node(bridge, seconds):
    model, _ = load_tiny()
    vae = model.pipeline.video_vae
    exact = exact_lookahead_latents(vae.config)
    frames = 24 * seconds + 1
    for lookahead in (1, 2, 3, exact):
        bridge.events.clear()
        images, audio, _, latent = run_sampler(model, seconds=seconds, settings=settings(decode_lookahead=lookahead))["result"]
        assert images.shape[0] == frames and audio["waveform"].shape[-1] == 24000 * seconds + 240
        shown = sum(payload["frames"] for name, payload in bridge.events if name == events.BLOCK)
        assert shown == frames, lookahead
    whole_clip = vae.decode_frames(latent["samples"][0], seed=3)
    assert (images - whole_clip).abs().max() <= 1e-5


def test_an_interrupt_during_the_decode_of_the_block_generated_ahead_does_not_show_it(bridge, monkeypatch):
    from omniforcing_core.decoders.av_stream import AVStreamDecoder

    model, _ = load_tiny()
    asked = []
    push = AVStreamDecoder.push

    def push_then_interrupt(self, span, *args, **kwargs):
        decoded = push(self, span, *args, **kwargs)
        if span.index == 1:  # the click lands while block 1 decodes
            asked.append(span.index)
        return decoded

    def check_interrupt():
        if asked:
            raise Interrupted("interrupted")

    monkeypatch.setattr(AVStreamDecoder, "push", push_then_interrupt)
    monkeypatch.setattr(bridge, "interrupt_requested", lambda: bool(asked))
    monkeypatch.setattr(bridge, "check_interrupt", check_interrupt)
    with pytest.raises(Interrupted):
        run_sampler(model, seconds=4)
    assert bridge.event_names() == [events.START, events.BLOCK, events.END]
    assert len(bridge.progress_calls) == 1  # nor on the progress bar
    end = bridge.events[-1][1]
    assert end["blocks_done"] == 1 and end["interrupted"] is True


def test_an_interrupted_stream_hands_the_player_what_it_showed(bridge):
    model, _ = load_tiny()
    bridge.interrupt_after_blocks = 2
    with pytest.raises(Interrupted):
        run_sampler(model, seconds=4)
    blocks = [payload for name, payload in bridge.events if name == events.BLOCK]
    replay = bridge.events[-1][1]["replay"]
    assert (replay["fps"], replay["sample_rate"], replay["seconds"]) == (24, 24000, 49 / 24)
    assert replay["blocks"] == [{key: block[key] for key in BLOCK_ENTRY} for block in blocks]
    folder = bridge.temp_dir() / replay["subfolder"]
    assert all((folder / block[kind]).is_file() for block in replay["blocks"] for kind in ("sheet", "audio"))


def test_a_prompt_switch_past_the_stream_is_refused_in_seconds_before_streaming(bridge):
    model, _ = load_tiny()
    schedule = node("OmniForcingPromptSchedule").schedule(conditioning(seed=9), at_second=3, blend_seconds=0)[0]
    with pytest.raises(ValueError, match=r"^the prompt schedule switches at second 3, but the stream is 3 s long "
                                         r"\(seconds 0 to 2\): set at_second below 3 or stream longer$"):
        run_sampler(model, seconds=3, prompt_schedule=schedule)
    assert bridge.events == []


def test_the_prompt_schedule_default_falls_inside_the_sampler_default():
    at_second = nodes.NODE_CLASS_MAPPINGS["OmniForcingPromptSchedule"].INPUT_TYPES()["required"]["at_second"][1]
    seconds = nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamingSampler"].INPUT_TYPES()["required"]["seconds"][1]
    assert at_second["min"] <= at_second["default"] < seconds["default"]


def test_interrupt_frees_the_stream_and_the_next_run_works(bridge):
    model, _ = load_tiny()
    bridge.interrupt_after_blocks = 1
    with pytest.raises(Interrupted):
        run_sampler(model, seconds=4)
    assert bridge.event_names() == [events.START, events.BLOCK, events.END]
    assert bridge.events[-1][1]["interrupted"] is True and bridge.events[-1][1]["blocks_done"] == 1
    assert bridge.events[-1][1]["error"] is None
    assert bridge.releases == 1
    bridge.interrupt_after_blocks = None
    bridge.events.clear()
    images = run_sampler(model, seconds=2)["result"][0]
    assert images.shape[0] == 49 and bridge.event_names()[-1] == events.END


def test_a_failure_mid_stream_is_reported_as_an_error(bridge, monkeypatch):
    model, _ = load_tiny()
    def fail_once_a_block_is_shown():
        if bridge.progress_calls:
            raise RuntimeError("disk full")

    monkeypatch.setattr(bridge, "check_interrupt", fail_once_a_block_is_shown)
    with pytest.raises(RuntimeError, match="disk full"):
        run_sampler(model, seconds=3)
    end = bridge.events[-1][1]
    assert end["interrupted"] is False and end["error"] == "disk full" and end["blocks_done"] == 1
    assert len(end["replay"]["blocks"]) == 1  # what streamed before the failure can be replayed


def test_prompt_schedule_switches_from_its_second(bridge):
    model, _ = load_tiny()
    schedule = node("OmniForcingPromptSchedule").schedule(conditioning(seed=9), at_second=2, blend_seconds=0)[0]
    plain = run_sampler(model, seconds=3)["result"][3]["samples"][0]
    switched = run_sampler(model, seconds=3, prompt_schedule=schedule)["result"][3]["samples"][0]
    assert torch.equal(plain[:, :, :7], switched[:, :, :7])  # blocks 0 and 1
    assert (plain[:, :, 7:] - switched[:, :, 7:]).abs().max() > 1e-4  # block 2 on


def test_chained_prompt_switches_are_ordered_and_distinct():
    schedule = nodes.NODE_CLASS_MAPPINGS["OmniForcingPromptSchedule"]()
    first = schedule.schedule(conditioning(1), at_second=8, blend_seconds=1)[0]
    both = schedule.schedule(conditioning(2), at_second=3, blend_seconds=0, previous=first)[0]
    assert [change.second for change in both] == [3, 8]
    with pytest.raises(ValueError, match="same second"):
        schedule.schedule(conditioning(3), at_second=3, blend_seconds=0, previous=both)


# Refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("custom_sigmas", "message"),
    [("1000, 500, 700, 0", "strictly decrease"), ("1.0, 0.5", "must end at sigma 0"), ("fast", "could not read")],
)
def test_a_bad_sigma_list_is_refused_at_queue_time_under_its_own_name(custom_sigmas, message):
    validate = nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamSettings"].VALIDATE_INPUTS
    # ComfyUI passes (and reports a failure under) exactly the arguments VALIDATE_INPUTS names.
    assert inspect.getfullargspec(validate).args[1:] == ["custom_sigmas"]
    assert inspect.getfullargspec(validate).varkw is None
    verdict = validate(custom_sigmas=custom_sigmas)
    assert isinstance(verdict, str) and re.search(message, verdict)
    with pytest.raises(ValueError, match=message):
        settings(schedule="custom", custom_sigmas=custom_sigmas)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(schedule="custom", custom_sigmas=" "), "schedule custom needs a list in custom_sigmas"),
        (dict(context_noise=1.5), r"context_noise is a sigma in \[0, 1\)"),
        (dict(retained_start_blocks=0), "retained_start_blocks must be >= 1"),
        (dict(position_mode="sideways"), "position_mode must be one of"),
    ],
)
def test_settings_past_the_widget_ranges_are_refused_when_the_node_runs(changes, message):
    # At queue time ComfyUI refuses these itself (min, max, choices); a prompt sent past it still fails here.
    with pytest.raises(ValueError, match=message):
        settings(**changes)


def test_valid_settings_pass_validation():
    validate = nodes.NODE_CLASS_MAPPINGS["OmniForcingStreamSettings"].VALIDATE_INPUTS
    assert validate(custom_sigmas="") is True and validate(custom_sigmas="1000, 750, 500, 0") is True
    built = settings(window_seconds=0, retained_start_blocks=2, schedule="realtime-3step", custom_sigmas="",
                     context_noise=0.05, position_mode="rebased", decode_lookahead=3)
    assert built.stream.window_blocks is None and built.decode_lookahead == 3


def test_sink_count_beyond_the_weights_is_refused_before_streaming(bridge):
    model, _ = load_tiny()
    with pytest.raises(ValueError, match="0 to 0 of them, not 4"):
        run_sampler(model, settings=settings(audio_sink_tokens=4))
    assert bridge.events == []


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (conditioning(width=7680), r"\[batch, tokens, 64\]"),
        (conditioning(extra={"unprocessed_ltxav_embeds": True}), "LTX-2.3 text encoder"),
        ([], "the prompt is empty"),
    ],
)
def test_wrong_prompts_are_refused_with_a_reason(bridge, prompt, message):
    model, _ = load_tiny()
    with pytest.raises(ValueError, match=message):
        node("OmniForcingStreamingSampler").sample(model, prompt, 96, 64, 2, 0, "full", unique_id="7")
    assert bridge.events == []


def test_bad_resolution_is_refused(bridge):
    model, _ = load_tiny()
    with pytest.raises(ValueError, match="multiple of 32"):
        node("OmniForcingStreamingSampler").sample(model, conditioning(), 100, 64, 2, 0, "full")


# Save prompt context --------------------------------------------------------------


def test_saved_prompt_context_feeds_the_standalone_command(bridge):
    prompt = conditioning(seed=4)
    ui = node("OmniForcingSavePromptContext").save(prompt, "omniforcing/prompt")["ui"]
    saved = bridge.output_dir() / ui["text"][0]
    assert saved.name == "prompt.safetensors"
    text = load_text_conditioning(saved, 32)
    assert torch.equal(text.video, prompt[0][0][..., :32]) and torch.equal(text.audio, prompt[0][0][..., 32:])
    again = node("OmniForcingSavePromptContext").save(prompt, "omniforcing/prompt")["ui"]["text"][0]
    assert again.endswith("prompt_2.safetensors")
    with pytest.raises(ValueError, match="inside the output folder"):
        node("OmniForcingSavePromptContext").save(prompt, "../../etc/prompt")


def test_an_image_output_the_host_cannot_hold_is_refused_before_streaming(bridge, monkeypatch):
    from omniforcing_core import stream_run

    model, _ = load_tiny()
    monkeypatch.setattr(stream_run, "available_host_memory", lambda: 10 * 2**20)
    with pytest.raises(MemoryError, match=r"needs 0\.1 GiB of host memory .* outputs 0\.1 GiB\) but only 0\.0 GiB "
                                          r"is free: keep a shorter window, stream a smaller size \(384x256\) or fewer"):
        node("OmniForcingStreamingSampler").sample(model, conditioning(), 384, 256, 3, 0, "full")
    assert bridge.events == []


# The built-in demo (stand-in files: see demo_support) ----------------------------------


@pytest.fixture
def empty_bridge(tmp_path):
    """A fresh ComfyUI: nothing in the model folders."""
    recording = RecordingBridge(tmp_path / "models", tmp_path / "temp", tmp_path / "output")
    comfy_bridge.use_bridge(recording)
    yield recording
    comfy_bridge.use_bridge(None)


def load_demo(base=BUILT_IN_BASE, weight_dtype="auto"):
    result = node("OmniForcingModelLoader").load(DEMO_GENERATOR, base, weight_dtype)
    return result["result"][0], result["ui"]["text"][0]


def demo_prompt(text=DEMO_PROMPT):
    return node("OmniForcingDemoPrompt").encode(text)[0]


def test_the_demo_is_offered_and_loads_with_empty_model_folders(empty_bridge, use_stand_in_demo):
    required = nodes.NODE_CLASS_MAPPINGS["OmniForcingModelLoader"].INPUT_TYPES()["required"]
    assert required["generator"][0] == [DEMO_GENERATOR] and required["base"][0] == [BUILT_IN_BASE]
    assert "Ignored with the built-in demo" in required["base"][1]["tooltip"]
    model, info = load_demo()
    assert model.demo is True
    assert "built-in demo model" in info and "layout: paper" in info and "audio sink tokens: 4" in info
    assert "ignored" not in info
    assert model.pipeline.transformer.patchify_proj.weight.dtype == torch.float32
    assert next(model.pipeline.video_vae.parameters()).dtype == torch.float32


def test_a_real_base_beside_the_demo_is_ignored_and_said_so(bridge, use_stand_in_demo):
    model, info = load_demo(base=TINY_BASE_FILE)
    assert info.endswith(f"base {TINY_BASE_FILE} ignored: the demo carries its own codecs")
    assert model.pipeline.info.sink_tokens == 4  # the demo, not the tiny generator beside it


def test_the_demo_in_fp8_stores_its_block_weights_in_fp8(empty_bridge, use_stand_in_demo):
    model, _ = load_demo(weight_dtype="fp8")
    dtypes = {p.dtype for n, p in model.pipeline.transformer.named_parameters() if n.endswith("to_q.weight")}
    assert dtypes == {torch.float8_e4m3fn}


def test_the_built_in_base_does_not_go_with_a_real_generator(bridge):
    with pytest.raises(ValueError, match=r"base \(built in\) goes with the built-in demo only"):
        node("OmniForcingModelLoader").load(TINY_GENERATOR_FILE, BUILT_IN_BASE, "auto")


def test_missing_demo_files_are_named(empty_bridge, no_demo):
    with pytest.raises(ValueError, match="built-in demo model file .* is missing"):
        load_demo()
    with pytest.raises(ValueError, match="built-in demo model file .* is missing"):
        demo_prompt()


def test_demo_prompt_is_ltx2_conditioning_with_its_mask(use_stand_in_demo):
    ((joint, options),) = demo_prompt("a white box hops")
    expected = load_prompt_encoder(use_stand_in_demo / DEMO_BASE)("a white box hops")
    assert joint.shape == (1, 16, 64) and joint.dtype == torch.float32 and not joint.requires_grad
    assert torch.equal(joint[..., :32], expected.video) and torch.equal(joint[..., 32:], expected.audio)
    assert options["attention_mask"].tolist() == [[True] * 4 + [False] * 12]
    assert options[DEMO_PROMPT_KEY] is True and options["pooled_output"] is None
    # The empty prompt is the learned unconditional context, every slot visible.
    ((null, null_options),) = demo_prompt("")
    encoder = demo_prompt_encoder()
    assert torch.equal(null[0, :, :32], encoder.null_video) and bool(null_options["attention_mask"].all())


def test_the_demo_prompt_encoder_is_loaded_once(use_stand_in_demo, monkeypatch):
    first = demo_prompt_encoder()
    monkeypatch.setattr("nodes.demo_prompt.load_prompt_encoder",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded again")))
    assert demo_prompt_encoder() is first
    demo_prompt("a red ball bounces")


def test_unknown_words_are_refused_in_the_node(use_stand_in_demo):
    cls = nodes.NODE_CLASS_MAPPINGS["OmniForcingDemoPrompt"]
    verdict = cls.VALIDATE_INPUTS(text="a purple ball bounces")
    assert verdict.startswith("the word 'purple' is not in the world's prompt vocabulary")
    assert verdict.endswith(" ".join(VOCABULARY))
    assert cls.VALIDATE_INPUTS(text=DEMO_PROMPT) is True
    with pytest.raises(ValueError, match="the word 'purple'"):
        demo_prompt("a purple ball bounces")
    text = cls.INPUT_TYPES()["required"]["text"]
    assert text[1]["default"] == DEMO_PROMPT and text[1]["multiline"] is True
    for word in ("yellow", "wedge", "hops", "off the walls"):
        assert word in text[1]["tooltip"]


def test_the_sampler_streams_the_demo_with_the_demo_prompt(empty_bridge, use_stand_in_demo):
    model, _ = load_demo()
    prompt = demo_prompt("a white box hops")
    result = node("OmniForcingStreamingSampler").sample(model, prompt, 192, 128, 2, 5, "full", unique_id="3")
    images, audio, fps, latent = result["result"]
    assert images.shape == (49, 128, 192, 3) and tuple(audio["waveform"].shape) == (1, 2, 48240)
    # The paper layout: the prefix block, then one block per second.
    assert empty_bridge.event_names() == [events.START, events.BLOCK, events.BLOCK, events.BLOCK, events.END]
    # The node hands the core exactly the encoder's contexts, mask included.
    settings_ = NodeStreamSettings.defaults()
    encoded = load_prompt_encoder(use_stand_in_demo / DEMO_BASE)("a white box hops")

    def core_video_latent(text):
        stream = model.pipeline.sampler(settings_.stream).stream(text, 2, 128, 192, seed=5)
        return torch.cat([block.video for block in stream], dim=2)

    assert torch.equal(latent["samples"][0], core_video_latent(encoded))
    unmasked = core_video_latent(TextConditioning(encoded.video, encoded.audio))
    assert (unmasked - latent["samples"][0]).abs().max() > 1e-4  # the mask matters, so passing it is tested


@pytest.mark.parametrize(
    ("demo_model", "prompt", "message"),
    [
        (True, conditioning(width=7680), "the built-in demo model takes its prompt from the OmniForcing Demo Prompt"),
        (False, conditioning(width=30, extra={DEMO_PROMPT_KEY: True}),
         "this prompt comes from OmniForcing Demo Prompt, which only the built-in demo model reads"),
    ],
)
def test_demo_and_real_prompts_do_not_mix(bridge, use_stand_in_demo, demo_model, prompt, message):
    model = load_demo()[0] if demo_model else load_tiny()[0]
    with pytest.raises(ValueError, match=message):
        node("OmniForcingStreamingSampler").sample(model, prompt, 192, 128, 1, 0, "full", unique_id="7")
