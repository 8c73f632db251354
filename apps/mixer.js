// The demo's stem mixer: every track of a job on one Web Audio clock, so stems play in sync
// and mute, solo, gains and the listened group switch without a gap. Runs as a gr.HTML
// component's js_on_load: `element`, `props`, `trigger` and `watch` come from Gradio.
// props.value: {duration_s, mute_db, groups: [{key, title, remix, tracks: [{label, url, lufs,
// peak_dbtp}]}]} (see apps/demo.py, mixer_value); the "Render remix" button sends
// {group, gains_db, mute, solo} back with trigger('click', ...).

// A fader at or below mute_db (demix.mixing.MUTE_DB, sent with the value) is −∞.
const muteDb = () => (props.value && props.value.mute_db) || -60;
const state = {
  ctx: null, buffers: {}, gains: {}, sources: [], playing: false,
  startedAt: 0, offset: 0, group: null, faders: {}, mute: new Set(), solo: new Set(),
  frame: null, token: 0,
};

function fmtTime(s) {
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

function fmtLevel(v, unit) {
  return v === null || v === undefined || !isFinite(v) ? "silent" : `${v.toFixed(1)} ${unit}`;
}

function audioCtx() {
  if (!state.ctx) state.ctx = new (window.AudioContext || window.webkitAudioContext)();
  return state.ctx;
}

function position() {
  if (!state.playing) return state.offset;
  return state.offset + (audioCtx().currentTime - state.startedAt);
}

function duration() {
  const v = props.value;
  return v && v.duration_s ? v.duration_s : 0;
}

function groupOf(label) {
  for (const g of props.value.groups) if (g.tracks.some((t) => t.label === label)) return g.key;
  return null;
}

// The gain a track plays at now: 0 outside the listened group, when muted, or when another
// track of its group is soloed; its fader otherwise.
function effectiveGain(label) {
  const key = groupOf(label);
  if (key !== state.group) return 0;
  const group = props.value.groups.find((g) => g.key === key);
  const soloed = group.tracks.some((t) => state.solo.has(t.label));
  if (state.mute.has(label) || (soloed && !state.solo.has(label))) return 0;
  const db = state.faders[label] ?? 0;
  return db <= muteDb() ? 0 : Math.pow(10, db / 20);
}

function applyGains() {
  const ctx = state.ctx;
  for (const [label, node] of Object.entries(state.gains)) {
    node.gain.setTargetAtTime(effectiveGain(label), ctx.currentTime, 0.01);
  }
  element.querySelectorAll(".dx-track").forEach((row) => {
    const label = row.dataset.label;
    row.dataset.audible = String(effectiveGain(label) > 0);
    row.querySelector(".dx-mute").classList.toggle("on", state.mute.has(label));
    row.querySelector(".dx-solo").classList.toggle("on", state.solo.has(label));
  });
  element.querySelectorAll(".dx-group").forEach((box) => {
    box.classList.toggle("listening", box.dataset.key === state.group);
  });
}

function stopSources() {
  for (const s of state.sources) {
    try { s.stop(); } catch (e) { /* already stopped */ }
  }
  state.sources = [];
}

function play() {
  const ctx = audioCtx();
  ctx.resume();
  stopSources();
  if (state.offset >= duration()) state.offset = 0;
  const when = ctx.currentTime + 0.05; // one start time for every track: sample-synchronous
  for (const [label, buffer] of Object.entries(state.buffers)) {
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(state.gains[label]);
    src.start(when, Math.min(state.offset, buffer.duration));
    state.sources.push(src);
  }
  state.startedAt = when;
  state.playing = true;
  element.querySelector(".dx-play").textContent = "❚❚ Pause";
  tick();
}

function pause() {
  state.offset = Math.min(position(), duration());
  state.playing = false;
  stopSources();
  element.querySelector(".dx-play").textContent = "▶ Play";
}

function seek(seconds) {
  const wasPlaying = state.playing;
  if (wasPlaying) pause();
  state.offset = Math.max(0, Math.min(seconds, duration()));
  if (wasPlaying) play();
  else drawPlayhead();
}

function drawPlayhead() {
  const t = position();
  const frac = duration() ? Math.min(t / duration(), 1) : 0;
  element.querySelectorAll(".dx-playhead").forEach((el) => { el.style.left = `${100 * frac}%`; });
  const clock = element.querySelector(".dx-clock");
  if (clock) clock.textContent = `${fmtTime(t)} / ${fmtTime(duration())}`;
  element.dataset.position = t.toFixed(2);
}

function tick() {
  cancelAnimationFrame(state.frame);
  drawPlayhead();
  if (state.playing && position() >= duration()) {
    pause();
    state.offset = 0;
    drawPlayhead();
    return;
  }
  if (state.playing) state.frame = requestAnimationFrame(tick);
}

// Min/max per pixel column on one common scale (full scale = half the height), so a quiet
// stem looks quiet next to a loud one.
function drawWaveform(canvas, buffer) {
  const w = (canvas.width = canvas.clientWidth * (window.devicePixelRatio || 1));
  const h = (canvas.height = canvas.clientHeight * (window.devicePixelRatio || 1));
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  g.fillStyle = getComputedStyle(canvas).color;
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
  const per = Math.max(1, Math.floor(buffer.length / w));
  for (let x = 0; x < w; x++) {
    let lo = 0, hi = 0;
    const a = x * per, b = Math.min(a + per, buffer.length);
    for (const data of channels) {
      for (let i = a; i < b; i++) {
        const v = data[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    const y0 = (h / 2) * (1 - Math.min(hi, 1)), y1 = (h / 2) * (1 - Math.max(lo, -1));
    g.fillRect(x, y0, 1, Math.max(1, y1 - y0));
  }
}

function trackRow(track, group) {
  const row = document.createElement("div");
  row.className = "dx-track";
  row.dataset.label = track.label;
  row.innerHTML = `
    <div class="dx-name" title="${track.label}">${track.label.split(":").pop()}</div>
    <div class="dx-levels"><span class="dx-lufs">${fmtLevel(track.lufs, "LUFS")}</span>
      <span class="dx-peak">${fmtLevel(track.peak_dbtp, "dBTP")}</span></div>
    <div class="dx-wave"><canvas></canvas><div class="dx-playhead"></div></div>
    <input class="dx-fader" type="range" min="${muteDb()}" max="12" step="0.5" value="0"
      aria-label="${track.label} gain in dB">
    <span class="dx-gain">0.0 dB</span>
    <button class="dx-mute" title="mute">M</button>
    <button class="dx-solo" title="solo">S</button>`;
  const fader = row.querySelector(".dx-fader");
  fader.addEventListener("input", () => {
    const db = parseFloat(fader.value);
    state.faders[track.label] = db;
    row.querySelector(".dx-gain").textContent = db <= muteDb() ? "−∞ dB" : `${db.toFixed(1)} dB`;
    applyGains();
  });
  const toggle = (set) => {
    set.has(track.label) ? set.delete(track.label) : set.add(track.label);
    if (state.group !== group.key) listen(group.key);
    applyGains();
  };
  row.querySelector(".dx-mute").addEventListener("click", () => toggle(state.mute));
  row.querySelector(".dx-solo").addEventListener("click", () => toggle(state.solo));
  row.querySelector(".dx-wave").addEventListener("click", (e) => {
    const box = e.currentTarget.getBoundingClientRect();
    seek(((e.clientX - box.left) / box.width) * duration());
  });
  return row;
}

function listen(key) {
  state.group = key;
  element.querySelectorAll(".dx-listen").forEach((b) => {
    const on = b.dataset.key === key;
    b.classList.toggle("on", on);
    b.textContent = on ? "● Listening" : "Listen";
  });
  const group = props.value.groups.find((g) => g.key === key);
  element.querySelector(".dx-render").disabled = !(group && group.remix);
  applyGains();
}

function render() {
  const token = ++state.token;
  if (state.playing) pause();
  stopSources();
  Object.assign(state, { buffers: {}, gains: {}, offset: 0, faders: {}, group: null });
  state.mute = new Set();
  state.solo = new Set();
  const root = element.querySelector(".dx-mixer");
  const value = props.value;
  element.dataset.ready = "false";
  if (!value || !value.groups || !value.groups.length) {
    root.innerHTML = '<p class="dx-empty">Separate a file: its stems appear here, grouped by ' +
      "head, to play in sync with levels, mute and solo.</p>";
    return;
  }
  root.innerHTML = `
    <div class="dx-transport">
      <button class="dx-play" disabled>▶ Play</button>
      <button class="dx-stop">■ Stop</button>
      <span class="dx-clock">0:00.0 / ${fmtTime(value.duration_s)}</span>
      <span class="dx-loading">loading tracks…</span>
      <span class="dx-spacer"></span>
      <button class="dx-render">Render remix</button>
    </div>`;
  for (const group of value.groups) {
    const box = document.createElement("div");
    box.className = "dx-group";
    box.dataset.key = group.key;
    box.innerHTML = `<div class="dx-group-title"><button class="dx-listen"
      data-key="${group.key}">Listen</button> ${group.title}</div>`;
    box.querySelector(".dx-listen").addEventListener("click", () => listen(group.key));
    for (const track of group.tracks) box.appendChild(trackRow(track, group));
    root.appendChild(box);
  }
  root.querySelector(".dx-play").addEventListener("click", () => (state.playing ? pause() : play()));
  root.querySelector(".dx-stop").addEventListener("click", () => { pause(); seek(0); });
  root.querySelector(".dx-render").addEventListener("click", () => {
    const group = value.groups.find((g) => g.key === state.group);
    if (!group || !group.remix) return;
    const labels = group.tracks.map((t) => t.label);
    trigger("click", {
      group: group.key,
      gains_db: Object.fromEntries(labels.map((l) => [l, state.faders[l] ?? 0])),
      mute: labels.filter((l) => state.mute.has(l)),
      solo: labels.filter((l) => state.solo.has(l)),
    });
  });
  listen(value.groups[0].key);
  const ctx = audioCtx();
  const tracks = value.groups.flatMap((g) => g.tracks);
  Promise.all(tracks.map((t) =>
    fetch(t.url)
      .then((r) => { if (!r.ok) throw new Error(`${t.label}: HTTP ${r.status}`); return r.arrayBuffer(); })
      .then((bytes) => ctx.decodeAudioData(bytes))
      .then((buffer) => {
        if (token !== state.token) return;
        state.buffers[t.label] = buffer;
        const node = ctx.createGain();
        node.connect(ctx.destination);
        state.gains[t.label] = node;
        const canvas = root.querySelector(`.dx-track[data-label="${CSS.escape(t.label)}"] canvas`);
        drawWaveform(canvas, buffer);
      })
  )).then(() => {
    if (token !== state.token) return;
    root.querySelector(".dx-loading").textContent = "";
    root.querySelector(".dx-play").disabled = false;
    element.dataset.ready = "true";
    applyGains();
  }).catch((err) => {
    root.querySelector(".dx-loading").textContent = `could not load: ${err.message}`;
  });
}

watch("value", render);
render();
