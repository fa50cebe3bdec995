// The player's playback clock (web/playback.js), with a fake wall clock and a fake AudioContext.
// Run: node --test tests/web/
import assert from "node:assert/strict";
import { test } from "node:test";

import { LEAD_S, Playback, sheetFrames } from "../../web/playback.js";

const FPS = 24;

function wallClock(start = 100) {
  const clock = { t: start, now: () => clock.t };
  return clock;
}

/** An AudioContext that records when each buffer was scheduled to play, and what part of it. */
function fakeSound(clock) {
  const started = [];
  const context = {
    get currentTime() { return clock.t; },
    outputLatency: 0,
    destination: {},
    createBufferSource() {
      const source = {
        connect() {}, stopped: false,
        start(at, offset, duration) { started.push({ buffer: source.buffer, at, offset, duration, source }); },
        stop() { source.stopped = true; },
      };
      return source;
    },
  };
  return { context, started };
}

const frames = (first, count) => Array.from({ length: count }, (_, n) => `frame ${first + n}`);

test("the picture follows the clock from the lead-in on", () => {
  const clock = wallClock();
  const playback = new Playback(FPS, { now: clock.now });
  playback.append({ duration: 1, frames: frames(0, 24) });
  assert.equal(playback.mediaTime(), 0);
  clock.t += LEAD_S + 0.5;
  assert.equal(playback.currentFrame(), "frame 12");
  assert.equal(playback.shown, 13);
});

test("the clock holds at the end of what is there, then restarts where it held", () => {
  const clock = wallClock();
  const playback = new Playback(FPS, { now: clock.now });
  playback.append({ duration: 1, frames: frames(0, 24) });
  clock.t += LEAD_S + 1.7; // the next block is late
  assert.equal(playback.mediaTime(), 1);
  assert.ok(playback.waiting());
  assert.equal(playback.currentFrame(), "frame 23"); // the last frame stays up
  playback.append({ duration: 1, frames: frames(24, 24) });
  assert.ok(!playback.waiting());
  assert.equal(playback.mediaTime(), 1); // no jump over the wait
  clock.t += LEAD_S + 0.25;
  assert.equal(playback.currentFrame(), "frame 30");
});

test("a block in time is scheduled right after the previous one, with no restart", () => {
  const clock = wallClock();
  const { context, started } = fakeSound(clock);
  const playback = new Playback(FPS, { now: clock.now, soundContext: () => context });
  playback.append({ duration: 1, buffer: "b0", frames: frames(0, 24) });
  clock.t += 0.5;
  playback.append({ duration: 1, buffer: "b1", frames: frames(24, 24) });
  assert.deepEqual(started.map(({ buffer, at, offset, duration }) => [buffer, at, offset, duration]),
    [["b0", 100 + LEAD_S, 0, 1], ["b1", 101 + LEAD_S, 0, 1]]);
  assert.ok(started.every(({ source }) => !source.stopped));
});

test("a late block restarts the sound at the held position, never replaying what was heard", () => {
  const clock = wallClock();
  const { context, started } = fakeSound(clock);
  const playback = new Playback(FPS, { now: clock.now, soundContext: () => context });
  playback.append({ duration: 1, buffer: "b0" });
  clock.t += 3;
  playback.append({ duration: 1, buffer: "b1" });
  const [, restarted] = started;
  assert.deepEqual([restarted.buffer, restarted.at, restarted.offset, restarted.duration], ["b1", 103 + LEAD_S, 0, 1]);
  assert.equal(playback.segments.length, 1); // the heard block's buffer is let go
});

test("unmuting moves the clock to sound without a jump in media time", () => {
  const clock = wallClock();
  const { context, started } = fakeSound(clock);
  let allowed = null;
  const playback = new Playback(FPS, { now: clock.now, soundContext: () => allowed });
  playback.append({ duration: 2, buffer: "b0" });
  clock.t += LEAD_S + 0.5;
  assert.equal(playback.context, null);
  assert.equal(started.length, 0);
  allowed = context;
  playback.unmute();
  const [{ at, offset, duration }] = started;
  assert.deepEqual([at, offset, duration], [clock.t + LEAD_S, 0.5, 1.5]);
  assert.equal(playback.mediaTime(), 0.5);
});

test("done once finished and played to the end; stop silences", () => {
  const clock = wallClock();
  const { context, started } = fakeSound(clock);
  const playback = new Playback(FPS, { now: clock.now, soundContext: () => context });
  playback.append({ duration: 1, buffer: "b0" });
  clock.t += LEAD_S + 1;
  assert.ok(!playback.done());
  playback.finish();
  assert.ok(playback.done() && !playback.waiting());
  playback.stop();
  assert.ok(started[0].source.stopped);
  playback.append({ duration: 1, buffer: "b1" });
  assert.equal(playback.readyEnd, 1); // nothing joins a stopped playback
});

test("a sheet's frames are its cells, left to right and row by row", () => {
  const cells = sheetFrames("sheet", 7, 3, [96, 64]);
  assert.deepEqual(cells.map(({ x, y }) => [x, y]), [[0, 0], [96, 0], [192, 0], [0, 64], [96, 64], [192, 64], [0, 128]]);
  assert.ok(cells.every((cell) => cell.image === "sheet" && cell.width === 96 && cell.height === 64));
  assert.deepEqual(sheetFrames(null, 2, 3, [96, 64]), [null, null]); // a sheet that did not load
});
