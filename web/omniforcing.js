/**
 * OmniForcing web extension (ComfyUI 0.20, frontend 1.43).
 *
 * OmniForcingStreamingSampler: a player inside the node plays the stream while it is generated
 * (the omniforcing.start/.block/.end events, see nodes/events.py), replays the finished stream from
 * the node's `omniforcing` UI output (or an interrupted one from its end event), and the core audio
 * player gets the whole-stream WAV.
 * OmniForcingModelLoader: the detected model info (its `text` UI output) in a read-only box.
 *
 * Each block is two files: its frames as one sheet (a JPEG grid) and its sound as one WAV. Sound is
 * scheduled with WebAudio, block after block, back to back; the picture follows the audio clock
 * (playback.js).
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { Playback, sheetFrames } from "./playback.js";

const SAMPLER = "OmniForcingStreamingSampler";
const LOADER = "OmniForcingModelLoader";
const EVENTS = { start: "omniforcing.start", block: "omniforcing.block", end: "omniforcing.end" };
// The stream's clock (DESIGN.md section 2); used only when the start event was missed (page reloaded mid-run).
const STREAM_DEFAULTS = { fps: 24, sample_rate: 24000 };
const RESUME_WAIT_MS = 200; // without a user gesture the browser never answers a resume(): play muted instead
const REPLAY_LOOKAHEAD_S = 3; // replay loads frames only this far ahead of the playhead (memory)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function viewURL(file) {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder ?? "", type: file.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

/** The loaded image, or null when it failed (the player then keeps showing the previous frame). */
function loadImage(url) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = url;
  });
}

async function fetchAudio(context, url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  return await context.decodeAudioData(await response.arrayBuffer());
}

let audioContext;

/** The page's one AudioContext (browsers cap how many a page may open), or null without WebAudio. */
function sharedAudioContext() {
  if (audioContext === undefined) {
    try {
      audioContext = new AudioContext();
    } catch {
      audioContext = null;
    }
  }
  return audioContext;
}

/** True when the browser lets the page play sound. Call it from a click to unlock sound. */
async function allowSound() {
  const context = sharedAudioContext();
  if (!context) return false;
  if (context.state !== "running") {
    // Autoplay policy: without a user gesture the promise stays pending, so do not wait for it.
    await Promise.race([context.resume().catch(() => {}), sleep(RESUME_WAIT_MS)]);
  }
  return context.state === "running";
}

/** The AudioContext to play through now, or null while the browser does not allow sound. */
function runningSound() {
  return audioContext?.state === "running" ? audioContext : null;
}

function newPlayback(fps) {
  return new Playback(fps ?? STREAM_DEFAULTS.fps, { soundContext: runningSound });
}

/**
 * Fetches one block's two files (see nodes/events.py: `sheet`, `audio` in `subfolder`); never rejects.
 * `problem` says what could not be loaded: a missing sheet leaves nulls (the previous frame stays up),
 * missing sound leaves silence.
 */
async function loadBlock(subfolder, cell, block) {
  const context = sharedAudioContext();
  const file = (filename) => ({ filename, subfolder, type: "temp" });
  const [sound, sheet] = await Promise.all([
    context ? fetchAudio(context, viewURL(file(block.audio))).catch((error) => error) : null,
    block.sheet ? loadImage(viewURL(file(block.sheet))) : null,
  ]);
  const problems = [];
  if (sound instanceof Error) problems.push(`sound: ${sound.message}`);
  if (block.sheet && !sheet) problems.push("its frames could not be loaded");
  const frames = block.frames ? sheetFrames(sheet, block.frames, block.columns, cell) : [];
  return { buffer: sound instanceof Error ? null : sound, frames, problem: problems.join("; ") };
}

/** Resolves once `condition()` holds or the playback stopped. */
async function waitUntil(playback, condition) {
  while (!playback.stopped && !condition()) await sleep(100);
}

function audioWidget(node) {
  return node.widgets?.find((widget) => widget.name === "audioUI");
}

/** The player inside one sampler node: its canvas, status line and replay button, and what it plays. */
class StreamPlayer {
  constructor(node) {
    this.node = node;
    this.mode = "idle"; // idle | live | finished | interrupted | failed | replay | result
    this.modeAfterReplay = "result";
    this.stream = null; // the live run: {promptId, blocks, sampleRate, index, streamed, playback, chain}
    this.result = null; // the node's UI output: {frames, audio, fps}
    this.playback = null;
    this.errors = [];
    this.drawn = null;
    this.raf = 0;
    this.tick = this.tick.bind(this);
    this.buildDOM();
  }

  buildDOM() {
    const root = document.createElement("div");
    root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;min-height:0";
    // The canvas fills a box of its own, laid out absolutely: whatever the node's height (the audio
    // widget below takes some once it appears), the picture stays centred at the box's full width.
    const screen = document.createElement("div");
    screen.style.cssText = "position:relative;flex:1 1 0;min-height:0;width:100%;background:#000;border-radius:4px";
    this.canvas = document.createElement("canvas");
    this.canvas.width = 384;
    this.canvas.height = 256;
    this.canvas.style.cssText = "position:absolute;inset:0;width:100%;height:100%;object-fit:contain";
    screen.append(this.canvas);
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;align-items:flex-start;gap:6px;font:11px/1.35 monospace;color:#bbb";
    this.button = document.createElement("button");
    this.button.style.cssText = "flex:none;white-space:nowrap;font:11px sans-serif;padding:1px 8px;cursor:pointer";
    this.button.onclick = () => this.toggleReplay().catch((error) => this.showError(error));
    // Wraps onto a second line rather than cutting the end off at the node's default width.
    this.status = document.createElement("span");
    this.status.style.cssText = "flex:1 1 0;min-width:0;min-height:2.7em;overflow-wrap:anywhere";
    bar.append(this.button, this.status);
    root.append(screen, bar);
    // A click on the player is the user gesture browsers want before they play sound.
    root.addEventListener("pointerdown", () => this.unmute().catch((error) => this.showError(error)));
    // canvasOnly: the player is no input, so the properties panel does not list it as an empty one.
    const widget = this.node.addDOMWidget("omniforcing_player", "omniforcing_player", root, {
      serialize: false,
      hideOnZoom: false,
      canvasOnly: true,
      getMinHeight: () => 240,
    });
    widget.serialize = false; // keeps it out of widgets_values (options.serialize keeps it out of the prompt)
    this.render();
  }

  // --- the live stream -----------------------------------------------------------------------------

  onStart(detail) {
    this.useResult(null);
    const playback = newPlayback(detail.fps);
    this.stream = {
      promptId: detail.prompt_id, blocks: detail.blocks, seconds: detail.seconds,
      sampleRate: detail.sample_rate ?? STREAM_DEFAULTS.sample_rate, index: -1, streamed: 0, playback,
      chain: Promise.resolve(),
    };
    this.errors = [];
    this.play(playback, "live");
    allowSound().catch((error) => this.showError(error));
  }

  onBlock(detail) {
    if (this.stream?.promptId !== detail.prompt_id) this.onStart(detail); // joined mid-run
    const stream = this.stream;
    stream.index = detail.index;
    stream.blocks = detail.blocks;
    stream.streamed = detail.time[1];
    const duration = detail.samples / stream.sampleRate;
    const media = loadBlock(detail.subfolder, detail.cell, detail);
    // Blocks load in parallel but join the timeline in order.
    stream.chain = stream.chain
      .then(() => media)
      .then(({ buffer, frames, problem }) => {
        if (problem) this.showError(`block ${detail.index + 1}: ${problem}`);
        stream.playback.append({ duration, buffer, frames });
      })
      .catch((error) => this.showError(error));
    this.render();
  }

  onEnd(detail) {
    const stream = this.stream;
    if (stream?.promptId !== detail.prompt_id) return;
    if (detail.error || detail.interrupted) {
      this.mode = detail.error ? "failed" : "interrupted";
      this.stopPlayback();
      if (detail.error) this.showError(detail.error);
      // What streamed stays replayable; the node's outputs are gone (ComfyUI passes none on).
      this.useResult(detail.replay ?? null);
    } else {
      this.mode = "finished";
      // The playback keeps going through what is buffered, then ends.
      stream.chain = stream.chain.then(() => stream.playback.finish());
    }
    this.render();
  }

  // --- the finished stream -------------------------------------------------------------------------

  /** Takes the node's UI output (`omniforcing` list of events.py) as what replay plays. */
  setResult(result) {
    if (this.mode !== "live") this.useResult(result); // else an older output, restored while a new run streams
  }

  useResult(result) {
    this.result = result?.blocks?.length ? result : null;
    const audio = audioWidget(this.node);
    if (audio) {
      // The whole sound for the audio widget comes with a finished stream only.
      const whole = this.result?.stream_audio;
      if (whole) audio.element.src = viewURL(whole);
      else audio.element.removeAttribute("src");
      audio.hidden = !whole; // a hidden widget takes no room in the node
      // The core hides an output node's audio element (this class) until an `audio` UI output arrives.
      audio.element.classList.toggle("empty-audio-widget", !whole);
      this.node.setDirtyCanvas(true, true);
    }
    if (this.result && this.mode === "idle") {
      this.mode = "result";
      this.showPoster().catch((error) => this.showError(error));
    }
    this.render();
  }

  /** Puts the first frame on the canvas of an idle player (an output restored without a run). */
  async showPoster() {
    const { subfolder, cell, blocks } = this.result;
    const first = blocks.find((block) => block.frames);
    if (!first) return;
    const sheet = await loadImage(viewURL({ filename: first.sheet, subfolder, type: "temp" }));
    if (sheet && this.mode === "result" && !this.playback) this.draw(sheetFrames(sheet, 1, first.columns, cell)[0]);
  }

  async toggleReplay() {
    if (this.mode === "replay") {
      this.stopPlayback();
      this.mode = this.modeAfterReplay;
      this.render();
    } else if (this.result && this.mode !== "live") {
      this.modeAfterReplay = this.mode;
      await this.replay(this.result);
    }
  }

  /** Plays a replay's blocks again, each loaded just ahead of the playhead (memory). */
  async replay(result) {
    const playback = newPlayback(result.fps);
    this.errors = [];
    this.play(playback, "replay");
    try {
      await allowSound(); // first, while the click still counts as a user gesture
      const sampleRate = result.sample_rate ?? STREAM_DEFAULTS.sample_rate;
      for (const [index, block] of result.blocks.entries()) {
        if (playback.stopped) break;
        await waitUntil(playback, () => playback.mediaTime() >= playback.readyEnd - REPLAY_LOOKAHEAD_S);
        const { buffer, frames, problem } = await loadBlock(result.subfolder, result.cell, block);
        if (problem) this.showError(`block ${index + 1}: ${problem}`);
        playback.append({ duration: block.samples / sampleRate, buffer, frames });
      }
    } finally {
      playback.finish(); // whatever happened, the replay ends instead of waiting for more
    }
  }

  // --- playing -------------------------------------------------------------------------------------

  play(playback, mode) {
    this.stopPlayback();
    audioWidget(this.node)?.element.pause();
    this.playback = playback;
    this.mode = mode;
    if (!this.raf) this.raf = requestAnimationFrame(this.tick);
  }

  stopPlayback() {
    this.playback?.stop();
    this.playback = null;
    cancelAnimationFrame(this.raf);
    this.raf = 0;
  }

  async unmute() {
    if (this.playback && !this.playback.context && (await allowSound())) this.playback.unmute();
  }

  tick() {
    this.raf = 0;
    const playback = this.playback;
    if (!playback) return;
    try {
      const frame = playback.currentFrame();
      if (frame && frame !== this.drawn) this.draw(frame);
      if (playback.done()) {
        this.playback = null;
        if (this.mode === "replay") this.mode = this.modeAfterReplay;
      } else {
        this.raf = requestAnimationFrame(this.tick);
      }
      this.render(playback);
    } catch (error) {
      this.stopPlayback();
      this.showError(error);
    }
  }

  /** Draws one frame: its cell of a block's sheet. */
  draw(frame) {
    if (this.canvas.width !== frame.width || this.canvas.height !== frame.height) {
      this.canvas.width = frame.width;
      this.canvas.height = frame.height;
    }
    const { image, x, y, width, height } = frame;
    this.canvas.getContext("2d").drawImage(image, x, y, width, height, 0, 0, width, height);
    this.drawn = frame;
  }

  // --- status --------------------------------------------------------------------------------------

  /** Shows the first problem (usually the cause; the rest follow from it) and counts the others. */
  showError(error) {
    this.errors.push(error?.message ?? String(error));
    console.warn("[omniforcing]", error);
    this.render();
  }

  render(playback = this.playback) {
    const text = [...this.describeRun(), ...this.describePlayback(playback)];
    if (this.errors.length) {
      const more = this.errors.length > 1 ? ` (+${this.errors.length - 1} more in the console)` : "";
      text.push(`⚠ ${this.errors[0]}${more}`);
    }
    const line = text.join(" · ");
    if (this.status.textContent !== line) { // called every animation frame: touch the text only on change
      this.status.textContent = line;
      this.status.title = line;
    }
    const label = this.mode === "replay" ? "■ stop" : "▶ replay";
    if (this.button.textContent !== label) this.button.textContent = label;
    this.button.disabled = this.mode === "live" || !this.result;
  }

  describeRun() {
    const stream = this.stream;
    const blocks = () => `block ${stream.index + 1}/${stream.blocks ?? "?"}`;
    switch (this.mode) {
      case "idle":
        return ["idle: run the workflow to stream here"];
      case "live":
        return ["● live", blocks(), `${stream.streamed.toFixed(2)} s streamed`];
      case "interrupted":
      case "failed":
        return [this.mode, `${stream.streamed.toFixed(2)} of ${stream.seconds ?? "?"} s streamed`, this.kept()];
      case "finished":
        return ["finished", blocks(), `${stream.streamed.toFixed(2)} s`];
      case "replay":
        return ["replay"];
      default: // result: a finished stream restored from the node's output
        return [`stream of ${this.result.seconds.toFixed(2)} s`];
    }
  }

  /** What is left of a stream that did not finish: its temp files, for replay; ComfyUI passes no output on. */
  kept() {
    return this.result ? "kept for replay only: no output goes to the next nodes" : "nothing to replay";
  }

  describePlayback(playback) {
    if (!playback || playback.stopped) return [];
    if (playback.done()) return [`played ${playback.shown} frames, ${playback.readyEnd.toFixed(2)} s`];
    const text = [`frame ${playback.shown}`, `${playback.mediaTime().toFixed(2)} s`];
    if (playback.waiting()) text.push(this.mode === "replay" ? "loading" : "waiting for the next block");
    if (audioContext && playback.anchor && !playback.context) text.push("muted: click for sound");
    return text;
  }
}

// --- the loader's info box ---------------------------------------------------------------------------

function addInfoBox(node) {
  const box = document.createElement("textarea");
  box.readOnly = true;
  box.className = "comfy-multiline-input";
  box.placeholder = "The detected model appears here once the loader has run.";
  const widget = node.addDOMWidget("omniforcing_info", "omniforcing_info", box, {
    serialize: false, canvasOnly: true, getMinHeight: () => 90,
  });
  widget.serialize = false;
  node.omniforcingInfo = box;
}

// --- wiring ------------------------------------------------------------------------------------------

/**
 * The node an event names by execution id: "7", or "12:7" for node 7 inside subgraph node 12. The
 * player lives on that inner node. (nodeCreated runs before a node has its id, so look it up now.)
 */
function nodeByExecutionId(id) {
  let graph = app.rootGraph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(part) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

/** The node an app.nodeOutputs key names: "7", or "<subgraph id>:7" for a node inside a subgraph. */
function nodeByLocatorId(id) {
  const [first, local] = String(id).split(":");
  if (local === undefined) return app.rootGraph?.getNodeById(first) ?? null;
  return app.rootGraph?.subgraphs?.get(first)?.getNodeById(local) ?? null;
}

/** Applies a node's UI output: the sampler's stream for replay, the loader's info text. */
function showOutput(node, output) {
  if (node?.omniforcingPlayer && output?.omniforcing?.length) node.omniforcingPlayer.setResult(output.omniforcing[0]);
  if (node?.omniforcingInfo && output?.text?.length) node.omniforcingInfo.value = output.text.join("\n");
}

/** A websocket event listener that hands the event to the player of the node it names. */
function toPlayer(handle) {
  return ({ detail }) => {
    const player = nodeByExecutionId(detail?.node)?.omniforcingPlayer;
    if (!player) return; // not in the open workflow
    try {
      handle(player, detail);
    } catch (error) {
      player.showError(error);
    }
  };
}

// Registered as this module loads, not in setup(): the frontend opens its websocket right after it has
// imported the extensions and before their init()/setup() run, and it throws on event types nobody has
// registered. A page reloaded in the middle of a run gets blocks in that gap.
api.addEventListener(EVENTS.start, toPlayer((player, detail) => player.onStart(detail)));
api.addEventListener(EVENTS.block, toPlayer((player, detail) => player.onBlock(detail)));
api.addEventListener(EVENTS.end, toPlayer((player, detail) => player.onEnd(detail)));

app.registerExtension({
  name: "omniforcing.stream",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== SAMPLER && nodeData.name !== LOADER) return;
    // Core's audio player (Comfy.AudioWidget's AUDIO_UI widget); the server ignores the extra input.
    if (nodeData.name === SAMPLER) nodeData.input.required.audioUI = ["AUDIO_UI", {}];
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      try {
        showOutput(this, output);
      } catch (error) {
        console.warn("[omniforcing]", error);
      }
    };
  },

  nodeCreated(node) {
    if (node.comfyClass === LOADER) addInfoBox(node);
    if (node.comfyClass !== SAMPLER) return;
    node.omniforcingPlayer = new StreamPlayer(node);
    const audio = audioWidget(node);
    if (audio) {
      audio.hidden = true; // shown once there is a whole stream to play
      audio.options.canvasOnly = true; // a player, not an input: kept out of the properties panel
    }
    // The sampler's progress bar carries each block's last frame for clients without this extension;
    // the frontend would draw it under the player as a second, still copy of the stream. Its prototype
    // onDrawBackground only draws such previews (the node has no image outputs), so skip it here.
    node.onDrawBackground = () => {};
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      this.omniforcingPlayer.stopPlayback();
      return onRemoved?.apply(this, arguments);
    };
    const [width, height] = node.computeSize();
    node.setSize([Math.max(node.size[0], width, 400), Math.max(node.size[1], height)]);
  },

  /** Outputs restored without an `executed` event: a workflow tab switched back to, a job loaded from the
   * queue history. (A plain page reload restores none in frontend 1.43.18.) */
  onNodeOutputsUpdated(outputs) {
    for (const [id, output] of Object.entries(outputs ?? {})) {
      try {
        showOutput(nodeByLocatorId(id), output);
      } catch (error) {
        console.warn("[omniforcing]", error);
      }
    }
  },
});
