/**
 * OmniForcing web extension (ComfyUI 0.20, frontend 1.43).
 *
 * OmniForcingStreamingSampler: a player inside the node plays the stream while it is generated
 * (the omniforcing.start/.block/.end events, see nodes/events.py), replays the finished stream from
 * the node's `omniforcing` UI output, and the core audio player gets the whole-stream WAV.
 * OmniForcingModelLoader: the detected model info (its `text` UI output) in a read-only box.
 *
 * Sync: sound is scheduled with WebAudio, block after block, back to back; the picture follows the
 * audio clock (frame j is shown while media time j / fps is heard). When the next block is not ready
 * in time, the clock holds (last frame, silence) and restarts where it stopped once the block is
 * there: sound and picture wait together instead of drifting apart.
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SAMPLER = "OmniForcingStreamingSampler";
const LOADER = "OmniForcingModelLoader";
const EVENTS = { start: "omniforcing.start", block: "omniforcing.block", end: "omniforcing.end" };
// The stream's clock (DESIGN.md section 2); used only when the start event was missed (page reloaded mid-run).
const STREAM_DEFAULTS = { fps: 24, sample_rate: 24000 };
const LEAD_S = 0.1; // a (re)started clock begins this far ahead, so its first sound is not cut off
const LATE_S = 0.01; // media arriving closer than this to the playhead counts as late: restart the clock there
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

/**
 * Fetches sound and frames; never rejects. `problem` says what could not be loaded:
 * a missing frame leaves a null (the previous frame stays up), missing sound leaves silence.
 */
async function loadMedia(frameFiles, audioFile) {
  const context = sharedAudioContext();
  const [sound, frames] = await Promise.all([
    context && audioFile ? fetchAudio(context, viewURL(audioFile)).catch((error) => error) : null,
    Promise.all(frameFiles.map((file) => loadImage(viewURL(file)))),
  ]);
  const problems = [];
  if (sound instanceof Error) problems.push(`sound: ${sound.message}`);
  const missing = frames.filter((frame) => !frame).length;
  if (missing) problems.push(`${missing} frame(s) could not be loaded`);
  return { buffer: sound instanceof Error ? null : sound, frames, problem: problems.join("; ") };
}

/**
 * One pass over a stream's timeline: the live stream or a replay. Media time 0 is the first frame.
 * Media is appended in order as segments (a span of sound and the frames that go with it), so the
 * timeline is ready up to the end of the last segment. The clock is the AudioContext's when the
 * browser allows sound, else the wall clock (the picture then plays muted at the same pace).
 */
class Playback {
  constructor(fps) {
    this.fps = fps;
    this.frames = []; // frame j shows at media time j / fps; set to null once passed, to free memory
    this.segments = []; // {start, duration, buffer, offset}: back to back from media time 0
    this.sources = new Set();
    this.readyEnd = 0; // media time up to which sound and frames are here
    this.finished = false; // nothing more will be appended
    this.stopped = false;
    this.context = null; // the AudioContext driving the clock, or null for the wall clock
    this.anchor = null; // {media, clock}: media time `media` plays at clock time `clock`
    this.nextFrame = 0; // first frame not shown yet
    this.image = null; // the frame on screen
    this.shown = 0; // frames shown so far
  }

  clockTime() {
    return this.context ? this.context.currentTime : performance.now() / 1000;
  }

  /** Media time the clock has reached at clock time t; it holds at readyEnd while the next media is missing. */
  position(t) {
    if (!this.anchor) return 0;
    return Math.min(this.readyEnd, this.anchor.media + Math.max(0, t - this.anchor.clock));
  }

  /** Media time being heard now, which is what the picture shows. */
  mediaTime() {
    return this.position(this.clockTime() - (this.context?.outputLatency ?? 0));
  }

  /** Where the clock would be if it never held: past readyEnd while it waits for media. */
  unheldPosition() {
    return this.anchor.media + this.clockTime() - this.anchor.clock;
  }

  /** True while the clock has run out of media and waits for more. */
  waiting() {
    return !this.finished && !!this.anchor && this.unheldPosition() >= this.readyEnd;
  }

  done() {
    return this.finished && this.mediaTime() >= this.readyEnd;
  }

  /** Appends `duration` seconds of sound (`buffer` from `offset`, or silence) and the frames shown meanwhile. */
  append({ duration, buffer = null, offset = 0, frames = [] }) {
    if (this.stopped) return;
    const segment = { start: this.readyEnd, duration, buffer, offset };
    const late = !this.anchor || this.unheldPosition() > this.readyEnd - LATE_S;
    const resumeAt = this.position(this.clockTime());
    // Played sound is never scheduled again: let a long stream's buffers go.
    while (this.segments.length && this.segments[0].start + this.segments[0].duration <= resumeAt) this.segments.shift();
    this.segments.push(segment);
    this.frames.push(...frames);
    this.readyEnd += duration;
    if (late) this.restart(resumeAt);
    else this.schedule(segment);
  }

  finish() {
    this.finished = true;
  }

  /** Starts the clock (again) at media time `from`, scheduling all the sound from there on. */
  restart(from) {
    this.silence();
    this.context = audioContext?.state === "running" ? audioContext : null;
    this.anchor = { media: from, clock: this.clockTime() + LEAD_S };
    for (const segment of this.segments) this.schedule(segment);
  }

  /** Moves the clock to sound (when the browser allows it now) without a jump in media time. */
  unmute() {
    if (!this.stopped && this.anchor && !this.context) this.restart(this.position(this.clockTime()));
  }

  /** Plays the part of `segment` after the anchor at its place on the clock. */
  schedule(segment) {
    const skip = Math.max(0, this.anchor.media - segment.start);
    if (!this.context || !segment.buffer || skip >= segment.duration) return;
    const source = this.context.createBufferSource();
    source.buffer = segment.buffer;
    source.connect(this.context.destination);
    source.onended = () => this.sources.delete(source);
    const at = this.anchor.clock + Math.max(0, segment.start - this.anchor.media);
    source.start(at, segment.offset + skip, segment.duration - skip);
    this.sources.add(source);
  }

  silence() {
    for (const source of this.sources) source.stop();
    this.sources.clear();
  }

  stop() {
    this.stopped = true;
    this.silence();
  }

  /** The frame to show now: the last loaded one at or before the heard media time. */
  currentFrame() {
    const index = Math.min(Math.floor(this.mediaTime() * this.fps + 1e-6), this.frames.length - 1);
    for (; this.nextFrame <= index; this.nextFrame++) {
      this.image = this.frames[this.nextFrame] ?? this.image;
      this.frames[this.nextFrame] = null;
    }
    this.shown = Math.max(this.shown, index + 1);
    return this.image;
  }
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
    this.canvas = document.createElement("canvas");
    this.canvas.width = 384;
    this.canvas.height = 256;
    this.canvas.style.cssText = "flex:1;min-height:0;width:100%;object-fit:contain;background:#000;border-radius:4px";
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;align-items:center;gap:6px;font:11px monospace;color:#bbb";
    this.button = document.createElement("button");
    this.button.style.cssText = "font:11px sans-serif;padding:1px 8px;cursor:pointer";
    this.button.onclick = () => this.toggleReplay().catch((error) => this.showError(error));
    this.status = document.createElement("span");
    this.status.style.cssText = "overflow:hidden;text-overflow:ellipsis;white-space:nowrap";
    bar.append(this.button, this.status);
    root.append(this.canvas, bar);
    // A click on the player is the user gesture browsers want before they play sound.
    root.addEventListener("pointerdown", () => this.unmute().catch((error) => this.showError(error)));
    const widget = this.node.addDOMWidget("omniforcing_player", "omniforcing_player", root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => 220,
    });
    widget.serialize = false; // keeps it out of widgets_values (options.serialize keeps it out of the prompt)
    this.render();
  }

  // --- the live stream -----------------------------------------------------------------------------

  onStart(detail) {
    this.useResult(null);
    const playback = new Playback(detail.fps ?? STREAM_DEFAULTS.fps);
    this.stream = {
      promptId: detail.prompt_id, blocks: detail.blocks, sampleRate: detail.sample_rate ?? STREAM_DEFAULTS.sample_rate,
      index: -1, streamed: 0, playback, chain: Promise.resolve(),
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
    const media = loadMedia(detail.frames, detail.audio);
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
    if (detail.error) {
      this.mode = "failed";
      this.stopPlayback();
      this.showError(detail.error);
    } else if (detail.interrupted) {
      this.mode = "interrupted";
      this.stopPlayback();
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
    this.result = result?.frames?.length ? result : null;
    const audio = audioWidget(this.node);
    if (audio) {
      if (this.result) audio.element.src = viewURL(this.result.audio);
      else audio.element.removeAttribute("src");
      audio.hidden = !this.result; // a hidden widget takes no room in the node
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
    const first = await loadImage(viewURL(this.result.frames[0]));
    if (first && this.mode === "result" && !this.playback) this.draw(first);
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

  async replay(result) {
    const playback = new Playback(result.fps ?? STREAM_DEFAULTS.fps);
    this.errors = [];
    this.play(playback, "replay");
    try {
      await allowSound(); // first, while the click still counts as a user gesture
      const { buffer, problem } = await loadMedia([], result.audio);
      if (problem) this.showError(problem);
      const fps = playback.fps;
      const total = result.frames.length;
      const end = Math.max(total / fps, buffer?.duration ?? 0);
      // One second of frames per segment, loaded just ahead of the playhead; the sound is sliced to match.
      for (let first = 0; first < total && !playback.stopped; first += fps) {
        await waitUntil(playback, () => playback.mediaTime() >= first / fps - REPLAY_LOOKAHEAD_S);
        const loaded = await loadMedia(result.frames.slice(first, first + fps), null);
        if (loaded.problem) this.showError(loaded.problem);
        const until = first + fps >= total ? end : (first + fps) / fps;
        playback.append({ duration: until - first / fps, buffer, offset: first / fps, frames: loaded.frames });
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
      const image = playback.currentFrame();
      if (image && image !== this.drawn) this.draw(image);
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

  draw(image) {
    if (this.canvas.width !== image.naturalWidth || this.canvas.height !== image.naturalHeight) {
      this.canvas.width = image.naturalWidth;
      this.canvas.height = image.naturalHeight;
    }
    this.canvas.getContext("2d").drawImage(image, 0, 0);
    this.drawn = image;
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
        return ["interrupted", blocks(), `${stream.streamed.toFixed(2)} s streamed`];
      case "failed":
        return ["failed", blocks(), `${stream.streamed.toFixed(2)} s streamed`];
      case "finished":
        return ["finished", blocks(), `${stream.streamed.toFixed(2)} s`];
      case "replay":
        return ["replay"];
      default: // result: a finished stream restored from the node's output
        return [`stream of ${(this.result.frames.length / (this.result.fps ?? STREAM_DEFAULTS.fps)).toFixed(2)} s`];
    }
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
  const widget = node.addDOMWidget("omniforcing_info", "omniforcing_info", box, { serialize: false, getMinHeight: () => 90 });
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
    if (audio) audio.hidden = true; // shown once there is a whole stream to play
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
