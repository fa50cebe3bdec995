"""The workflow templates in ``workflows/``, checked against the node definitions without ComfyUI.

Our nodes' definitions come from the pack itself (``nodes.NODE_CLASS_MAPPINGS``, as ComfyUI
serves V1 nodes); the core nodes' from ``tests/data/comfy_core_nodes.json``, a snapshot of a
real ComfyUI 0.20.1 ``/object_info`` plus the frontend's own Note and MarkdownNote. The checks
follow what frontend 1.43 does when it loads a template (positional ``widgets_values``, the
extra control_after_generate slot, links by slot index) and what the server needs from the
prompt it builds (combo values, numeric ranges, types, required inputs).

The helpers (``definitions``, ``validate_template``, ``ui_to_api``) are shared with the opt-in
end-to-end test, which converts the templates with ``ui_to_api`` and runs them in ComfyUI.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
CORE_NODES = Path(__file__).parent / "data" / "comfy_core_nodes.json"

# Templates of real models (LTX-2 files to download), and the built-in demo's (nothing to download).
REAL_MODEL_TEMPLATES = ("omniforcing_t2av_5s", "omniforcing_realtime_3step", "omniforcing_long_stream_60s")
DEMO_TEMPLATE = "omniforcing_demo"
TEMPLATES = (DEMO_TEMPLATE, *REAL_MODEL_TEMPLATES)
# The folder names ComfyUI 0.20.1 serves templates from (app/custom_node_manager.py); a pack
# must use one of them, and only one, or two folders would claim the same URL prefix.
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
# Combos listing the user's model folders: their values name files, not fixed choices.
MODEL_FILE_INPUTS = {
    ("LTXAVTextEncoderLoader", "text_encoder"): (".safetensors",),
    ("LTXAVTextEncoderLoader", "ckpt_name"): (".safetensors",),
    ("OmniForcingModelLoader", "generator"): (".safetensors", ".safetensors.index.json"),
    ("OmniForcingModelLoader", "base"): (".safetensors",),
}


# Node definitions ------------------------------------------------------------------------


def pack_object_info() -> dict[str, dict]:
    """Our nodes in the shape ComfyUI's /object_info gives V1 nodes."""
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    infos = {}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        infos[name] = {
            "input": inputs,
            "input_order": {section: list(entries) for section, entries in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "display_name": NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
            "output_node": getattr(cls, "OUTPUT_NODE", False),
        }
    return infos


def core_snapshot() -> dict:
    return json.loads(CORE_NODES.read_text(encoding="utf-8"))


def definitions() -> tuple[dict[str, dict], set[str]]:
    """(every node definition the templates may use, the frontend-only node types)."""
    snapshot = core_snapshot()
    return {**snapshot["object_info"], **snapshot["frontend_only"], **pack_object_info()}, set(snapshot["frontend_only"])


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str  # "COMBO" for either combo style
    options: dict
    choices: tuple | None
    required: bool

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")

    @property
    def has_control_slot(self) -> bool:
        """Frontend 1.43: an INT named seed/noise_seed, or any input asking for it, gets a
        control_after_generate widget right after it, which takes a widgets_values slot."""
        control = self.options.get("control_after_generate")
        if self.type == "INT" and control is None:
            return self.name in ("seed", "noise_seed")
        return bool(control) and self.type in ("INT", "FLOAT", "COMBO")


def node_inputs(info: dict) -> list[InputDef]:
    """The inputs in the order the frontend lays them out: required, then optional."""
    found = []
    for section in ("required", "optional"):
        entries = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(entries)):
            spec = entries[name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            if isinstance(kind, (list, tuple)):  # V1 combo: the list is the type
                found.append(InputDef(name, "COMBO", options, tuple(kind), section == "required"))
            elif kind == "COMBO":  # V3 combo
                found.append(InputDef(name, "COMBO", options, tuple(options.get("options", ())), section == "required"))
            else:
                found.append(InputDef(name, kind, options, None, section == "required"))
    return found


@dataclass(frozen=True)
class WidgetSlot:
    input: InputDef
    control: bool  # the control_after_generate slot that follows input


def widget_slots(info: dict) -> list[WidgetSlot]:
    """What each position of a node's widgets_values holds."""
    slots = []
    for spec in node_inputs(info):
        if spec.is_widget:
            slots.append(WidgetSlot(spec, control=False))
            if spec.has_control_slot:
                slots.append(WidgetSlot(spec, control=True))
    return slots


def types_match(output_type: str, input_type: str) -> bool:
    if "*" in (output_type, input_type):
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


# Validation -------------------------------------------------------------------------------


def widget_value_error(node_type: str, slot: WidgetSlot, value) -> str | None:
    spec = slot.input
    if slot.control:
        return None if value in CONTROL_VALUES else f"control_after_generate of {spec.name} is {value!r}, not one of {CONTROL_VALUES}"
    if spec.type == "COMBO":
        suffixes = MODEL_FILE_INPUTS.get((node_type, spec.name))
        if suffixes is not None and value not in spec.choices:  # a listed choice (the built-in demo) needs no file
            if not (isinstance(value, str) and value.endswith(suffixes)):
                return f"{spec.name} = {value!r} does not name a {' or '.join(suffixes)} model file"
            return None
        return None if value in spec.choices else f"{spec.name} = {value!r} is not in {list(spec.choices)}"
    if spec.type == "STRING":
        return None if isinstance(value, str) else f"{spec.name} = {value!r} is not a string"
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{spec.name} = {value!r} is not a boolean"
    numeric = (int,) if spec.type == "INT" else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        return f"{spec.name} = {value!r} is not {spec.type}"
    low, high = spec.options.get("min"), spec.options.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{spec.name} = {value} is outside [{low}, {high}]"
    if spec.type == "INT":
        step = spec.options.get("step", 1)
        # The frontend snaps an INT widget to min + k * step.
        if (value - (low or 0)) % step:
            return f"{spec.name} = {value} is not on the step {step} from {low or 0}"
    else:
        grid = spec.options.get("round") or spec.options.get("step")
        if grid and not math.isclose(value / grid, round(value / grid), abs_tol=1e-6):
            return f"{spec.name} = {value} is not a multiple of {grid}"
    return None


def validate_template(workflow: dict, known: dict[str, dict], frontend_only: set[str]) -> list[str]:
    """Everything wrong with a UI-format workflow for these node definitions (empty: valid)."""
    errors = []
    if workflow.get("version") != 0.4:
        errors.append(f"version is {workflow.get('version')!r}, not the 0.4 frontend 1.43 saves")
    if workflow.get("definitions", {}).get("subgraphs"):
        errors.append("the template holds subgraphs; keep templates flat")
    nodes = {}
    for node in workflow["nodes"]:
        if node["id"] in nodes:
            errors.append(f"node id {node['id']} is used twice")
        nodes[node["id"]] = node
    links = {}
    for link in workflow["links"]:
        if len(link) != 6:
            errors.append(f"link {link!r} is not [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        if link[0] in links:
            errors.append(f"link id {link[0]} is used twice")
        links[link[0]] = link
    if nodes and workflow.get("last_node_id", 0) < max(nodes):
        errors.append(f"last_node_id {workflow.get('last_node_id')} is below node id {max(nodes)}")
    if links and workflow.get("last_link_id", 0) < max(links):
        errors.append(f"last_link_id {workflow.get('last_link_id')} is below link id {max(links)}")

    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        info = known.get(node["type"])
        if info is None:
            errors.append(f"{where}: unknown node type")
            continue
        if node.get("mode", 0) != 0:
            errors.append(f"{where}: mode {node['mode']} (muted or bypassed) has no place in a template")
        errors += [f"{where}: {message}" for message in _node_errors(node, info, links, node["type"] in frontend_only)]

    for link_id, (_, source_id, source_slot, target_id, target_slot, link_type) in links.items():
        where = f"link {link_id}"
        source, target = nodes.get(source_id), nodes.get(target_id)
        if source is None or target is None:
            errors.append(f"{where}: joins missing node {source_id if source is None else target_id}")
            continue
        source_info, target_info = known.get(source["type"]), known.get(target["type"])
        if source_info is None or target_info is None:
            continue  # reported with the node
        outputs = source_info.get("output", [])
        if not 0 <= source_slot < len(outputs):
            errors.append(f"{where}: node {source_id} has no output slot {source_slot}")
            continue
        source_outputs = source.get("outputs", [])
        if source_slot >= len(source_outputs) or link_id not in (source_outputs[source_slot].get("links") or []):
            errors.append(f"{where}: not listed in node {source_id} output {source_slot}'s links")
        target_slots = target.get("inputs", [])
        if not 0 <= target_slot < len(target_slots):
            errors.append(f"{where}: node {target_id} has no input slot {target_slot}")
            continue
        if target_slots[target_slot].get("link") != link_id:
            errors.append(f"{where}: node {target_id} input {target_slot} says link {target_slots[target_slot].get('link')}")
        target_def = {spec.name: spec for spec in node_inputs(target_info)}.get(target_slots[target_slot]["name"])
        if link_type != outputs[source_slot]:
            errors.append(f"{where}: typed {link_type} but node {source_id} output {source_slot} is {outputs[source_slot]}")
        if target_def is not None and not types_match(outputs[source_slot], target_def.type):
            errors.append(f"{where}: {outputs[source_slot]} into {target_def.name} ({target_def.type}) of node {target_id}")
    return errors


def _node_errors(node: dict, info: dict, links: dict, frontend_only: bool) -> list[str]:
    errors = []
    slots = widget_slots(info)
    values = node.get("widgets_values", [])
    if not isinstance(values, list) or len(values) != len(slots):
        names = [f"{slot.input.name}{' (control_after_generate)' if slot.control else ''}" for slot in slots]
        return [f"widgets_values {values!r} do not match the widgets {names}"]
    errors += [message for slot, value in zip(slots, values) if (message := widget_value_error(node["type"], slot, value))]
    if frontend_only:
        return errors

    specs = {spec.name: spec for spec in node_inputs(info)}
    connected = set()
    for index, slot in enumerate(node.get("inputs", [])):
        spec = specs.get(slot["name"])
        if spec is None:
            errors.append(f"input slot {index} '{slot['name']}' is not an input of the node")
            continue
        if spec.is_widget != ("widget" in slot):
            errors.append(f"input slot {index} '{slot['name']}' is {'' if spec.is_widget else 'not '}a widget input")
        if slot.get("link") is not None:
            link = links.get(slot["link"])
            if link is None or (link[3], link[4]) != (node["id"], index):
                errors.append(f"input '{slot['name']}' names link {slot['link']}, which does not end there")
            connected.add(slot["name"])
    for spec in specs.values():
        if spec.required and not spec.is_widget and spec.name not in connected:
            errors.append(f"required input '{spec.name}' is not connected")

    ui_outputs = node.get("outputs", [])
    declared = list(zip(info.get("output_name", []), info.get("output", [])))
    if [(slot["name"], slot["type"]) for slot in ui_outputs] != declared:
        errors.append(f"outputs {[(s['name'], s['type']) for s in ui_outputs]} are not the node's {declared}")
    for index, slot in enumerate(ui_outputs):
        for link_id in slot.get("links") or []:
            link = links.get(link_id)
            if link is None or (link[1], link[2]) != (node["id"], index):
                errors.append(f"output '{slot['name']}' names link {link_id}, which does not start there")
    if not info.get("output_node") and not any(slot.get("links") for slot in ui_outputs):
        errors.append("nothing uses this node's outputs: dead weight in a template")
    return errors


# UI -> API, as the frontend's graphToPrompt does for a flat graph ------------------------


def widgets(node: dict, known: dict[str, dict]) -> dict:
    """A node's widget values by input name (control slots left out)."""
    return {
        slot.input.name: value
        for slot, value in zip(widget_slots(known[node["type"]]), node["widgets_values"])
        if not slot.control
    }


def ui_to_api(workflow: dict, known: dict[str, dict], frontend_only: set[str]) -> dict:
    """The API prompt for a flat, fully active UI workflow: notes dropped, widget values by
    position (control_after_generate slots skipped), links as [source id, output slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in frontend_only:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']}: muted or bypassed nodes are not supported")
        inputs = widgets(node, known)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]  # a link overrides its widget's value
        prompt[str(node["id"])] = {
            "inputs": inputs,
            "class_type": node["type"],
            "_meta": {"title": node.get("title") or known[node["type"]].get("display_name", node["type"])},
        }
    return prompt


def load_template(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == node_type]


# Tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known():
    return definitions()


def test_the_template_browser_lists_exactly_the_four_templates():
    present = [folder for folder in TEMPLATE_FOLDERS if (REPO / folder).is_dir()]
    assert present == ["workflows"]
    # ComfyUI lists every *.json in the folder as a template, named by the file's stem.
    assert sorted(path.stem for path in WORKFLOWS.glob("*.json")) == sorted(TEMPLATES)
    # Beside them only thumbnails, named after their template (benchmarks/thumbnails.py writes the demo's
    # from its stream and the others' title cards): the browser asks each template for <name>.jpg.
    assert sorted(path.name for path in WORKFLOWS.iterdir() if path.suffix != ".json") == \
        sorted(f"{name}.jpg" for name in TEMPLATES)
    for name in TEMPLATES:
        with Image.open(WORKFLOWS / f"{name}.jpg") as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.size == (384, 256)
    for name in TEMPLATES:
        workflow = load_template(name)
        # UI format (what the frontend saves), not an API prompt {"id": {"class_type": ...}}.
        assert isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list)
        assert not any(isinstance(value, dict) and "class_type" in value for value in workflow.values())


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_is_valid_for_the_nodes(name, known):
    definitions_, frontend_only = known
    assert validate_template(load_template(name), definitions_, frontend_only) == []


def test_the_snapshot_holds_every_core_node_the_templates_use(known):
    definitions_, _ = known
    pack = set(pack_object_info())
    used = {node["type"] for name in TEMPLATES for node in load_template(name)["nodes"]} - pack
    assert used == {"LTXAVTextEncoderLoader", "CLIPTextEncode", "CreateVideo", "SaveVideo", "MarkdownNote"}
    assert used <= set(definitions_)
    snapshot = core_snapshot()
    assert snapshot["comfyui_version"] == "0.20.1"
    # The shapes the validator relies on: V3 combos, the V1 text widget, CreateVideo's fps widget.
    saved = node_inputs(snapshot["object_info"]["SaveVideo"])
    assert [(spec.name, spec.type, spec.choices) for spec in saved] == [
        ("video", "VIDEO", None), ("filename_prefix", "STRING", None),
        ("format", "COMBO", ("auto", "mp4")), ("codec", "COMBO", ("auto", "h264")),
    ]
    assert [slot.input.name for slot in widget_slots(snapshot["object_info"]["CreateVideo"])] == ["fps"]


def test_widget_slots_of_the_sampler_include_the_seed_control(known):
    definitions_, _ = known
    slots = widget_slots(definitions_["OmniForcingStreamingSampler"])
    assert [(slot.input.name, slot.control) for slot in slots] == [
        ("width", False), ("height", False), ("seconds", False), ("seed", False), ("seed", True), ("decode", False),
    ]


EXPECTED = {
    # template: (width, height, seconds, schedule, window_seconds, position_mode, switch (second, blend) or None)
    "omniforcing_t2av_5s": (768, 512, 5, "quality-4step", 8, "absolute", None),
    "omniforcing_realtime_3step": (768, 512, 5, "realtime-3step", 8, "absolute", None),
    "omniforcing_long_stream_60s": (576, 384, 60, "quality-4step", 8, "rebased", (30, 2)),
}


@pytest.mark.parametrize("name", REAL_MODEL_TEMPLATES)
def test_template_settings(name, known):
    definitions_, _ = known
    workflow = load_template(name)
    width, height, seconds, schedule, window, position, switch = EXPECTED[name]

    (encoder,) = nodes_of(workflow, "LTXAVTextEncoderLoader")
    assert widgets(encoder, definitions_) == {
        "text_encoder": "gemma_3_12B_it_fp4_mixed.safetensors", "ckpt_name": "ltx-2-19b-dev-fp8.safetensors",
        "device": "default",
    }
    (loader,) = nodes_of(workflow, "OmniForcingModelLoader")
    assert widgets(loader, definitions_) == {
        "generator": "omniforcing_ltx2_5s_causal.safetensors.index.json", "base": "ltx-2-19b-dev-fp8.safetensors",
        "weight_dtype": "auto",
    }
    (sampler,) = nodes_of(workflow, "OmniForcingStreamingSampler")
    sampled = widgets(sampler, definitions_)
    assert (sampled["width"], sampled["height"], sampled["seconds"], sampled["decode"]) == (width, height, seconds, "full")
    (settings,) = nodes_of(workflow, "OmniForcingStreamSettings")
    chosen = widgets(settings, definitions_)
    assert (chosen["schedule"], chosen["window_seconds"], chosen["position_mode"]) == (schedule, window, position)
    (save,) = nodes_of(workflow, "SaveVideo")
    assert widgets(save, definitions_)["format"] == "mp4"

    api = ui_to_api(workflow, *known)
    sampler_inputs = api[str(sampler["id"])]["inputs"]
    create = next(node for node in api.values() if node["class_type"] == "CreateVideo")
    # The video is made from the sampler's frames, sound and frame rate.
    assert create["inputs"] == {"images": [str(sampler["id"]), 0], "audio": [str(sampler["id"]), 1],
                                "fps": [str(sampler["id"]), 2]}
    schedules = nodes_of(workflow, "OmniForcingPromptSchedule")
    if switch is None:
        assert schedules == [] and "prompt_schedule" not in sampler_inputs
        assert len(nodes_of(workflow, "CLIPTextEncode")) == 1
    else:
        (schedule_node,) = schedules
        assert tuple(widgets(schedule_node, definitions_).values()) == switch
        assert sampler_inputs["prompt_schedule"] == [str(schedule_node["id"]), 0]
        first, second = (str(node["id"]) for node in nodes_of(workflow, "CLIPTextEncode"))
        assert sampler_inputs["positive"] == [first, 0]
        assert api[str(schedule_node["id"])]["inputs"]["conditioning"] == [second, 0]
        assert api[first]["inputs"]["text"] != api[second]["inputs"]["text"]


def test_the_demo_template_streams_the_built_in_demo_and_names_no_file(known):
    from nodes import NODE_CLASS_MAPPINGS
    from nodes.demo_prompt import grammar_help
    from nodes.model import BUILT_IN_BASE, DEMO_GENERATOR
    from omniforcing_core.demo_model import DEMO_HEIGHT, DEMO_PROMPT, DEMO_WIDTH

    definitions_, _ = known
    workflow = load_template(DEMO_TEMPLATE)
    assert sorted(node["type"] for node in workflow["nodes"]) == sorted([
        "OmniForcingDemoPrompt", "OmniForcingModelLoader", "OmniForcingStreamingSampler", "CreateVideo", "SaveVideo",
        "MarkdownNote"])
    (loader,) = nodes_of(workflow, "OmniForcingModelLoader")
    assert widgets(loader, definitions_) == {"generator": DEMO_GENERATOR, "base": BUILT_IN_BASE, "weight_dtype": "auto"}
    (prompt,) = nodes_of(workflow, "OmniForcingDemoPrompt")
    assert widgets(prompt, definitions_) == {"text": DEMO_PROMPT}
    assert NODE_CLASS_MAPPINGS["OmniForcingDemoPrompt"].VALIDATE_INPUTS(text=DEMO_PROMPT) is True
    (sampler,) = nodes_of(workflow, "OmniForcingStreamingSampler")
    sampled = widgets(sampler, definitions_)
    assert (sampled["width"], sampled["height"], sampled["seconds"], sampled["decode"]) == (DEMO_WIDTH, DEMO_HEIGHT, 5,
                                                                                           "full")
    assert not any(node["properties"].get("models") for node in workflow["nodes"])  # nothing to download
    api = ui_to_api(workflow, *known)
    assert api[str(sampler["id"])]["inputs"]["positive"] == [str(prompt["id"]), 0]
    assert api[str(sampler["id"])]["inputs"]["model"] == [str(loader["id"]), 0]
    create = next(node for node in api.values() if node["class_type"] == "CreateVideo")
    assert create["inputs"] == {"images": [str(sampler["id"]), 0], "audio": [str(sampler["id"]), 1],
                                "fps": [str(sampler["id"]), 2]}
    (save,) = nodes_of(workflow, "SaveVideo")
    assert widgets(save, definitions_) == {"filename_prefix": "video/omniforcing_demo", "format": "mp4", "codec": "h264"}
    (note,) = nodes_of(workflow, "MarkdownNote")
    assert "Nothing to download" in note["widgets_values"][0] and grammar_help() in note["widgets_values"][0]


def run_pack_nodes(api: dict) -> dict[str, tuple]:
    """Run the pack's nodes of an API prompt in dependency order, as ComfyUI would (validation
    first); core nodes are left out. Returns each node's outputs by node id."""
    from nodes import NODE_CLASS_MAPPINGS

    ours = {key: node for key, node in api.items() if node["class_type"] in NODE_CLASS_MAPPINGS}
    results: dict[str, tuple] = {}
    while len(results) < len(ours):
        for key, node in ours.items():
            links = [value for value in node["inputs"].values() if isinstance(value, list)]
            if key in results or any(source not in results for source, _ in links):
                continue
            cls = NODE_CLASS_MAPPINGS[node["class_type"]]
            inputs = {name: results[value[0]][value[1]] if isinstance(value, list) else value
                      for name, value in node["inputs"].items()}
            if hasattr(cls, "VALIDATE_INPUTS"):
                assert cls.VALIDATE_INPUTS(**inputs) is True, key
            if "hidden" in cls.INPUT_TYPES():
                inputs["unique_id"] = key
            output = getattr(cls(), cls.FUNCTION)(**inputs)
            results[key] = output["result"] if isinstance(output, dict) else output
    return results


def test_the_demo_template_runs_with_nothing_in_the_model_folders(tmp_path, use_stand_in_demo):
    from nodes import comfy_bridge
    from nodes.comfy_bridge import StandaloneBridge

    class FreshInstall(StandaloneBridge):
        def temp_dir(self):
            return tmp_path / "temp"

    comfy_bridge.use_bridge(FreshInstall(tmp_path / "models"))
    try:
        # The definitions a fresh install serves: the template's choices must be among them.
        snapshot = core_snapshot()
        fresh = {**snapshot["object_info"], **snapshot["frontend_only"], **pack_object_info()}
        workflow = load_template(DEMO_TEMPLATE)
        assert validate_template(workflow, fresh, set(snapshot["frontend_only"])) == []
        api = ui_to_api(workflow, fresh, set(snapshot["frontend_only"]))
        (sampler_id,) = [key for key, node in api.items() if node["class_type"] == "OmniForcingStreamingSampler"]
        api[sampler_id]["inputs"]["seconds"] = 1  # a CPU-sized run of the same graph
        images, audio, fps, _ = run_pack_nodes(api)[sampler_id]
    finally:
        comfy_bridge.use_bridge(None)
    assert images.shape == (25, 128, 192, 3) and fps == 24.0  # the prefix frame and one second
    assert audio["sample_rate"] == 24000 and audio["waveform"].shape == (1, 2, 24240)


@pytest.mark.parametrize("name", REAL_MODEL_TEMPLATES)
def test_the_note_names_every_model_file_and_folder(name, known):
    definitions_, _ = known
    workflow = load_template(name)
    (note,) = nodes_of(workflow, "MarkdownNote")
    text = note["widgets_values"][0]
    for folder in ("models/omniforcing/", "models/checkpoints/", "models/text_encoders/"):
        assert folder in text
    for loader_type in ("LTXAVTextEncoderLoader", "OmniForcingModelLoader"):
        for node in nodes_of(workflow, loader_type):
            for key, value in widgets(node, definitions_).items():
                if (loader_type, key) in MODEL_FILE_INPUTS:
                    assert value in text


def test_ui_to_api_matches_the_frontends_prompt(known):
    """The prompt frontend 1.43.18 built from the long template (app.graphToPrompt), minus the
    long texts: notes dropped, seed control slot skipped, the fps link overriding its widget."""
    api = ui_to_api(load_template("omniforcing_long_stream_60s"), *known)
    for node in api.values():
        if "text" in node["inputs"]:
            node["inputs"]["text"] = node["inputs"]["text"][:24]
    assert {key: (node["class_type"], node["inputs"]) for key, node in api.items()} == {
        "1": ("LTXAVTextEncoderLoader", {"text_encoder": "gemma_3_12B_it_fp4_mixed.safetensors",
                                         "ckpt_name": "ltx-2-19b-dev-fp8.safetensors", "device": "default"}),
        "2": ("CLIPTextEncode", {"text": "A calm forest stream in ", "clip": ["1", 0]}),
        "3": ("OmniForcingModelLoader", {"generator": "omniforcing_ltx2_5s_causal.safetensors.index.json",
                                         "base": "ltx-2-19b-dev-fp8.safetensors", "weight_dtype": "auto"}),
        "4": ("OmniForcingStreamSettings", {"audio_sink_tokens": -1, "window_seconds": 8, "retained_start_blocks": 1,
                                            "schedule": "quality-4step", "custom_sigmas": "1000, 909, 725, 421, 0",
                                            "context_noise": 0, "position_mode": "rebased", "decode_lookahead": 0}),
        "5": ("OmniForcingStreamingSampler", {"width": 576, "height": 384, "seconds": 60, "seed": 42, "decode": "full",
                                              "model": ["3", 0], "positive": ["2", 0], "settings": ["4", 0],
                                              "prompt_schedule": ["9", 0]}),
        "6": ("CreateVideo", {"fps": ["5", 2], "images": ["5", 0], "audio": ["5", 1]}),
        "7": ("SaveVideo", {"video": ["6", 0], "filename_prefix": "video/omniforcing_long", "format": "mp4",
                            "codec": "h264"}),
        "8": ("CLIPTextEncode", {"text": "A summer thunderstorm br", "clip": ["1", 0]}),
        "9": ("OmniForcingPromptSchedule", {"at_second": 30, "blend_seconds": 2, "conditioning": ["8", 0]}),
    }


# A broken template must fail: each edit below breaks one rule, on a copy of the long template.


def _node(workflow, node_type):
    return nodes_of(workflow, node_type)[0]


def _set_widget(node_type, index, value):
    def edit(workflow):
        _node(workflow, node_type)["widgets_values"][index] = value
    return edit


def _drop_positive_link(workflow):
    sampler = _node(workflow, "OmniForcingStreamingSampler")
    slot = next(slot for slot in sampler["inputs"] if slot["name"] == "positive")
    workflow["links"] = [link for link in workflow["links"] if link[0] != slot["link"]]
    for node in workflow["nodes"]:
        for output in node.get("outputs", []):
            output["links"] = [link for link in output.get("links") or [] if link != slot["link"]]
    slot["link"] = None


def _latent_into_images(workflow):
    sampler = _node(workflow, "OmniForcingStreamingSampler")
    images_link = next(link for link in workflow["links"] if link[1] == sampler["id"] and link[2] == 0)
    images_link[2], images_link[5] = 3, "LATENT"
    sampler["outputs"][0]["links"].remove(images_link[0])
    sampler["outputs"][3]["links"] = [images_link[0]]


def _retype_link(workflow):
    workflow["links"][0][5] = "MODEL"


def _dangling_input_link(workflow):
    _node(workflow, "CreateVideo")["inputs"][0]["link"] = 999


def _unknown_type(workflow):
    _node(workflow, "CreateVideo")["type"] = "CreateVideoFromFuture"


def _drop_control_slot(workflow):
    del _node(workflow, "OmniForcingStreamingSampler")["widgets_values"][4]


MUTATIONS = {
    "width off its 32 step": (_set_widget("OmniForcingStreamingSampler", 0, 770), "width = 770 is not on the step 32"),
    "seconds below min": (_set_widget("OmniForcingStreamingSampler", 2, 0), "seconds = 0 is outside [1, 3600]"),
    "seed control value": (_set_widget("OmniForcingStreamingSampler", 4, "sometimes"), "control_after_generate of seed"),
    "missing control slot": (_drop_control_slot, "do not match the widgets"),
    "schedule not a preset": (_set_widget("OmniForcingStreamSettings", 3, "turbo"), "schedule = 'turbo' is not in"),
    "context noise off grid": (_set_widget("OmniForcingStreamSettings", 5, 0.0005), "not a multiple of 0.001"),
    "window as text": (_set_widget("OmniForcingStreamSettings", 1, "8"), "window_seconds = '8' is not INT"),
    "prompt not a string": (_set_widget("CLIPTextEncode", 0, 7), "text = 7 is not a string"),
    "model file extension": (_set_widget("OmniForcingModelLoader", 0, "omniforcing.ckpt"), "does not name a"),
    "fps above max": (_set_widget("CreateVideo", 0, 240), "fps = 240 is outside [1.0, 120.0]"),
    "save format": (_set_widget("SaveVideo", 1, "webm"), "format = 'webm' is not in"),
    "required input unconnected": (_drop_positive_link, "required input 'positive' is not connected"),
    "latent into images": (_latent_into_images, "LATENT into images (IMAGE)"),
    "link type": (_retype_link, "typed MODEL but node 1 output 0 is CLIP"),
    "input names a missing link": (_dangling_input_link, "names link 999, which does not end there"),
    "unknown node": (_unknown_type, "unknown node type"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_broken_template_is_caught(mutation, known):
    edit, expected = MUTATIONS[mutation]
    workflow = copy.deepcopy(load_template("omniforcing_long_stream_60s"))
    edit(workflow)
    errors = validate_template(workflow, *known)
    assert any(expected in error for error in errors), errors
