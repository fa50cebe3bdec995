/**
 * The playback clock of the OmniForcing player: pure logic, no DOM, so `node --test` can check it
 * (tests/web/playback.test.mjs). ComfyUI imports every .js file of web/ as an extension; this one only
 * exports.
 *
 * One pass over a stream's timeline: the live stream or a replay. Media time 0 is the first frame.
 * Media is appended in order as segments (a span of sound and the frames that go with it), so the
 * timeline is ready up to the end of the last segment. The clock is the AudioContext's when the
 * browser allows sound, else the wall clock (the picture then plays muted at the same pace). When
 * the next segment is not there in time, the clock holds (last frame, silence) and restarts where it
 * stopped once it is: sound and picture wait together instead of drifting apart.
 */

export const LEAD_S = 0.1; // a (re)started clock begins this far ahead, so its first sound is not cut off
export const LATE_S = 0.01; // media arriving closer than this to the playhead counts as late: restart the clock there

export class Playback {
  /**
   * `fps`: frames per second of media time. `soundContext()`: the AudioContext to play through now, or
   * null when the browser does not allow sound (asked at each restart). `now()`: the wall clock in seconds.
   */
  constructor(fps, { soundContext = () => null, now = () => performance.now() / 1000 } = {}) {
    this.fps = fps;
    this.soundContext = soundContext;
    this.now = now;
    this.frames = []; // frame j shows at media time j / fps; set to null once passed, to free memory
    this.segments = []; // {start, duration, buffer, offset}: back to back from media time 0
    this.sources = new Set();
    this.readyEnd = 0; // media time up to which sound and frames are here
    this.finished = false; // nothing more will be appended
    this.stopped = false;
    this.context = null; // the AudioContext driving the clock, or null for the wall clock
    this.anchor = null; // {media, clock}: media time `media` plays at clock time `clock`
    this.nextFrame = 0; // first frame not shown yet
    this.frame = null; // the frame on screen
    this.shown = 0; // frames shown so far
  }

  clockTime() {
    return this.context ? this.context.currentTime : this.now();
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
    this.context = this.soundContext();
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
      this.frame = this.frames[this.nextFrame] ?? this.frame;
      this.frames[this.nextFrame] = null;
    }
    this.shown = Math.max(this.shown, index + 1);
    return this.frame;
  }
}

/**
 * The frames of one block's sheet (`columns` across, each `width` x `height`) as {image, x, y, width,
 * height}; nulls when the sheet did not load (the previous frame then stays up).
 */
export function sheetFrames(image, count, columns, [width, height]) {
  return Array.from({ length: count }, (_, n) =>
    image ? { image, x: (n % columns) * width, y: Math.floor(n / columns) * height, width, height } : null);
}
