"""The reader-study kit's page: one self-contained HTML file (no server, no network, no external script).

Each volume is shown in axial, coronal and sagittal planes in radiological convention (patient right on the image
left; anterior left on the sagittal plane) with orientation letters and a 1 cm bar; the mouse wheel over a plane, or
the arrow keys (up/down: axial; with Shift: coronal; with Alt: sagittal), scroll its slices. Window/level: presets
(liver W 150 / L 90, soft tissue W 400 / L 40) and free sliders. The reader answers real or synthetic (buttons, or
keys R / S) with a confidence 1-5 (buttons or keys 1-5), goes on with Next (→ or Enter) and back with Back (←).
Progress is kept in the browser's local storage for this kit and reader (the reader types their id again to resume; it
is not pre-filled, so a second reader cannot resume the first's session by a click), so closing the tab loses
nothing; Export writes ``answers-<reader>.json`` (the kit id, the reader id, each complete answer with its confidence
and the seconds the volume was on screen while the page was visible).
Volumes are stored gzip-compressed (int16 HU, i along +x, j along +y, k along +z) and unpacked with the browser's
``DecompressionStream``.
"""

from __future__ import annotations

import json
from typing import Any

_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>difftumor reader study</title>
<style>
  body { font-family: system-ui, sans-serif; background: #111; color: #ddd; margin: 16px; }
  #planes { display: flex; gap: 12px; margin: 12px 0; }
  figure { margin: 0; text-align: center; }
  canvas { background: #000; cursor: ns-resize; }
  figcaption { font-size: 12px; color: #999; }
  button { background: #333; color: #eee; border: 1px solid #555; padding: 6px 10px; margin: 2px; cursor: pointer; }
  button.chosen { background: #2b6cb0; border-color: #63b3ed; }
  #controls, #answer, #nav { margin: 8px 0; }
  label { margin-right: 12px; }
  #start { margin: 40px auto; max-width: 520px; }
  .hint { color: #999; font-size: 13px; }
</style>
</head>
<body>
<div id="start">
  <h2>Real or synthetic?</h2>
  <p>Each volume shows one lesion at its centre. Say whether it is a real tumour or a synthetic one, and how sure you
  are (1: guessing, 5: certain). Your progress is kept in this browser; Export saves your answers as a file.</p>
  <label>Reader id <input id="reader" autocomplete="off"></label>
  <button id="begin">Start</button>
</div>
<div id="study" hidden>
  <div><strong id="progress"></strong> <span class="hint" id="readerline"></span></div>
  <div id="planes">
    <figure><canvas id="axial"></canvas><figcaption>axial <span id="axial-slice"></span></figcaption></figure>
    <figure><canvas id="coronal"></canvas><figcaption>coronal <span id="coronal-slice"></span></figcaption></figure>
    <figure><canvas id="sagittal"></canvas><figcaption>sagittal <span id="sagittal-slice"></span></figcaption></figure>
  </div>
  <div id="controls">
    <button id="preset-liver">Liver W 150 / L 90</button>
    <button id="preset-soft">Soft tissue W 400 / L 40</button>
    <label>W <input type="range" id="width" min="1" max="2000" value="150"> <span id="width-value"></span></label>
    <label>L <input type="range" id="level" min="-500" max="500" value="90"> <span id="level-value"></span></label>
  </div>
  <div id="answer">
    <button id="answer-real">Real (R)</button><button id="answer-synthetic">Synthetic (S)</button>
    &nbsp; confidence:
    <button class="confidence" data-value="1">1</button><button class="confidence" data-value="2">2</button>
    <button class="confidence" data-value="3">3</button><button class="confidence" data-value="4">4</button>
    <button class="confidence" data-value="5">5</button>
  </div>
  <div id="nav">
    <button id="back">← Back</button><button id="next">Next →</button>
    <button id="export">Export answers</button>
    <span class="hint">wheel or ↑/↓ (Shift: coronal, Alt: sagittal) scrolls; R / S and 1-5 answer; ← / → move</span>
  </div>
</div>
<script id="kit" type="application/json">__KIT__</script>
<script>
"use strict";
const KIT = JSON.parse(document.getElementById("kit").textContent);
const STORE = "difftumor-reader-study:" + KIT.kit_id;
const ZOOM = Math.max(2, Math.floor(300 / KIT.fov_mm));
const volumes = new Map();
let state = null;
let view = { volume: null, n: 0, slices: { axial: 0, coronal: 0, sagittal: 0 }, width: 150, level: 90 };
let shownAt = 0;

// One record per kit and reader: two readers sharing a browser keep their own progress.
function save() { localStorage.setItem(STORE + ":reader:" + state.reader, JSON.stringify(state)); }
function item() { return KIT.items[state.index]; }

async function volumeOf(entry) {
  if (!volumes.has(entry.id)) {
    const bytes = Uint8Array.from(atob(entry.data), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    volumes.set(entry.id, new Int16Array(await new Response(stream).arrayBuffer()));
  }
  return volumes.get(entry.id);
}

// Voxel (i, j, k): i along +x (towards the patient's right in RAS), j along +y (anterior), k along +z (superior).
// Radiological display: patient right on the image left, anterior up (axial) or left (sagittal), superior up.
function value(i, j, k) { const n = view.n; return view.volume[(i * n + j) * n + k]; }
const PLANES = {
  axial:    { letters: ["A", "P", "R", "L"], pixel: (c, r, s, n) => value(n - 1 - c, n - 1 - r, s) },
  coronal:  { letters: ["S", "I", "R", "L"], pixel: (c, r, s, n) => value(n - 1 - c, s, n - 1 - r) },
  sagittal: { letters: ["S", "I", "A", "P"], pixel: (c, r, s, n) => value(s, n - 1 - c, n - 1 - r) },
};

function draw(name) {
  const n = view.n, canvas = document.getElementById(name), context = canvas.getContext("2d");
  canvas.width = canvas.height = n * ZOOM;
  const image = context.createImageData(n, n), low = view.level - view.width / 2, s = view.slices[name];
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
    const grey = Math.max(0, Math.min(255, Math.round((PLANES[name].pixel(c, r, s, n) - low) / view.width * 255)));
    const at = (r * n + c) * 4;
    image.data[at] = image.data[at + 1] = image.data[at + 2] = grey; image.data[at + 3] = 255;
  }
  const scratch = document.createElement("canvas"); scratch.width = scratch.height = n;
  scratch.getContext("2d").putImageData(image, 0, 0);
  context.imageSmoothingEnabled = false;
  context.drawImage(scratch, 0, 0, n * ZOOM, n * ZOOM);
  const [top, bottom, left, right] = PLANES[name].letters, size = n * ZOOM;
  context.fillStyle = "#ffd54f"; context.font = "bold 14px sans-serif"; context.textAlign = "center";
  context.fillText(top, size / 2, 16); context.fillText(bottom, size / 2, size - 6);
  context.fillText(left, 10, size / 2); context.fillText(right, size - 10, size / 2);
  context.fillStyle = "#fff"; context.fillRect(size - 12 - 10 * ZOOM, size - 22, 10 * ZOOM, 3);
  context.font = "11px sans-serif"; context.fillText("1 cm", size - 12 - 5 * ZOOM, size - 26);
  document.getElementById(name + "-slice").textContent = (s + 1) + "/" + n;
}
function drawAll() { for (const name in PLANES) draw(name); }

function account() {
  if (!state || !shownAt) return;
  const entry = state.times[item().id] || 0;
  state.times[item().id] = entry + (performance.now() - shownAt) / 1000;
  shownAt = performance.now();
}

async function show(index) {
  account();
  state.index = Math.max(0, Math.min(KIT.items.length - 1, index));
  save();
  const wanted = state.index, volume = await volumeOf(item());
  if (state.index !== wanted) return;  // the reader moved on while this volume unpacked: show only the latest
  view.volume = volume;
  view.n = item().shape[0];
  for (const name in PLANES) view.slices[name] = Math.floor(view.n / 2);
  shownAt = performance.now();
  drawAll();
  refresh();
}

function refresh() {
  const answered = Object.keys(complete()).length, answer = state.answers[item().id] || {};
  const unfinished = Object.keys(state.answers).length - answered;
  document.getElementById("progress").textContent =
    "Volume " + (state.index + 1) + " of " + KIT.items.length + " · " + answered + " answered" +
    (unfinished ? " · " + unfinished + " without answer or confidence" : "");
  document.getElementById("readerline").textContent = "reader " + state.reader + " · " + item().id;
  document.getElementById("answer-real").classList.toggle("chosen", answer.answer === "real");
  document.getElementById("answer-synthetic").classList.toggle("chosen", answer.answer === "synthetic");
  for (const button of document.querySelectorAll(".confidence"))
    button.classList.toggle("chosen", Number(button.dataset.value) === answer.confidence);
  document.getElementById("width-value").textContent = view.width;
  document.getElementById("level-value").textContent = view.level;
  document.getElementById("width").value = view.width; document.getElementById("level").value = view.level;
}

function setAnswer(part, value) {
  account();
  const answer = state.answers[item().id] || {};
  answer[part] = value;
  if (answer.answer && answer.confidence) answer.answered_at = new Date().toISOString();
  state.answers[item().id] = answer;
  save(); refresh();
}
function complete() {
  return Object.fromEntries(Object.entries(state.answers).filter(([, a]) => a.answer && a.confidence));
}

function exportAnswers() {
  account(); save();
  const answers = {};
  for (const [id, a] of Object.entries(complete()))
    answers[id] = { answer: a.answer, confidence: a.confidence, seconds: Math.round((state.times[id] || 0) * 10) / 10,
                    answered_at: a.answered_at };
  const text = JSON.stringify({ kit_id: KIT.kit_id, reader: state.reader, started_at: state.started_at,
                                exported_at: new Date().toISOString(), items: KIT.items.length, answers }, null, 1);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  link.download = "answers-" + state.reader.replace(/[^A-Za-z0-9_-]/g, "_") + ".json";
  document.body.appendChild(link); link.click(); link.remove();
  return text;
}

function scroll(name, step) {
  view.slices[name] = Math.max(0, Math.min(view.n - 1, view.slices[name] + step)); draw(name);
}
function setWindow(width, level) { view.width = width; view.level = level; drawAll(); refresh(); }

function begin(reader) {
  const stored = JSON.parse(localStorage.getItem(STORE + ":reader:" + reader) || "null");
  state = stored || { reader, index: 0, answers: {}, times: {}, started_at: new Date().toISOString() };
  document.getElementById("start").hidden = true; document.getElementById("study").hidden = false;
  show(state.index);
}

document.getElementById("begin").onclick = () => {
  const reader = document.getElementById("reader").value.trim();
  if (reader) begin(reader); else document.getElementById("reader").focus();
};
for (const name in PLANES)
  document.getElementById(name).addEventListener("wheel", (event) => {
    event.preventDefault(); scroll(name, event.deltaY > 0 ? 1 : -1);
  }, { passive: false });
document.getElementById("preset-liver").onclick = () => setWindow(150, 90);
document.getElementById("preset-soft").onclick = () => setWindow(400, 40);
document.getElementById("width").oninput = (event) => setWindow(Number(event.target.value), view.level);
document.getElementById("level").oninput = (event) => setWindow(view.width, Number(event.target.value));
document.getElementById("answer-real").onclick = () => setAnswer("answer", "real");
document.getElementById("answer-synthetic").onclick = () => setAnswer("answer", "synthetic");
for (const button of document.querySelectorAll(".confidence"))
  button.onclick = () => setAnswer("confidence", Number(button.dataset.value));
document.getElementById("back").onclick = () => show(state.index - 1);
document.getElementById("next").onclick = () => show(state.index + 1);
document.getElementById("export").onclick = exportAnswers;
// Keys act on the page, never also on a focused button: Enter on a just-clicked answer button must not answer the
// next volume too.
document.addEventListener("keydown", (event) => {
  if (!state || document.getElementById("study").hidden) return;
  const key = event.key, slider = event.target.type === "range";
  if ((key === "ArrowUp" || key === "ArrowDown") && !slider) {
    scroll(event.shiftKey ? "coronal" : event.altKey ? "sagittal" : "axial", key === "ArrowDown" ? 1 : -1);
  } else if ((key === "ArrowRight" && !slider) || key === "Enter") show(state.index + 1);
  else if (key === "ArrowLeft" && !slider) show(state.index - 1);
  else if (key === "r" || key === "R") setAnswer("answer", "real");
  else if (key === "s" || key === "S") setAnswer("answer", "synthetic");
  else if ("12345".includes(key) && key.length === 1) setAnswer("confidence", Number(key));
  else return;
  event.preventDefault();
});
// Time on a volume counts while the page is visible.
document.addEventListener("visibilitychange", () => {
  if (!state) return;
  if (document.hidden) { account(); shownAt = 0; save(); } else shownAt = performance.now();
});
window.addEventListener("beforeunload", () => { if (state) { account(); save(); } });
window.readerStudy = { exportAnswers, state: () => state, view: () => view };
</script>
</body>
</html>
"""


def render_page(kit: dict[str, Any]) -> str:
    """The page with ``kit`` (``kit_id``, ``fov_mm``, ``items``: ``id``, ``shape``, base64 gzip int16 ``data``)
    embedded as JSON. Nothing in the kit can close the script element: ids are ``case-NNN`` and data is base64."""
    text = json.dumps(kit, separators=(",", ":"))
    if "</" in text:
        raise ValueError("kit data must not contain '</'")
    return _PAGE.replace("__KIT__", text)
