// The painting page: a label map painted in class colours, sent to /api/synthesize as class indices.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  config: null, model: null, versions: {}, label: null, w: 0, h: 0, selected: 0, tool: "brush",
  undo: [], redo: [], instancePng: null, stylePng: null, genId: 0, abort: null, timer: null,
  painting: null, last: null, images: [], done: 0,  // done: the id of the last request answered
};

// ------------------------------------------------------------------ errors and requests
function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, body, signal) {
  const init = body === undefined ? { signal } : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  };
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((data && data.error) || `${path}: HTTP ${response.status}`);
  }
  return data;
}

function readFileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error(`${file.name}: cannot be read`));
    reader.readAsDataURL(file);
  });
}

// ------------------------------------------------------------------ models
async function loadModels() {
  S.config = await api("/api/config");
  const listing = await api("/api/models");
  const select = $("model-select");
  select.innerHTML = "";
  const add = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; select.appendChild(o); };
  for (const m of listing.models) {
    for (const [alias, version] of Object.entries(m.aliases).sort()) add(`models:/${m.name}@${alias}`, `${m.name} @${alias} (v${version})`);
    for (const v of m.versions) { S.versions[v.uri] = v; add(v.uri, `${m.name} v${v.version}${v.aliases.length ? " [" + v.aliases.join(", ") + "]" : ""}`); }
    for (const [alias, version] of Object.entries(m.aliases)) S.versions[`models:/${m.name}@${alias}`] = S.versions[`models:/${m.name}/${version}`];
  }
  const preselected = S.config.default_model;
  if (preselected && ![...select.options].some((o) => o.value === preselected)) add(preselected, preselected);
  if (!preselected) { showError("No model registered: run `make demo`, or start the app with --model."); return; }
  select.value = preselected;
  await selectModel(preselected);
}

function fmt(value, digits) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }

async function selectModel(uri) {
  showError("");
  const model = await api(`/api/model?uri=${encodeURIComponent(uri)}`);
  S.model = model;
  const v = S.versions[uri] || {};
  $("model-info").textContent = `${model.netG || "spade"} · dataset ${model.dataset || "?"} · ${model.width}×${model.height} · ` +
    `eval ${v.size || "–"} · steps ${fmt(v.training_steps ?? model.training_steps, 0)} · FID ${fmt(v.fid, 2)} · mIoU ${fmt(v.miou, 3)}`;
  S.w = model.width; S.h = model.height;
  const canvas = $("label-canvas");
  canvas.width = S.w; canvas.height = S.h;
  const scale = S.config.display_px / Math.max(S.w, S.h);
  canvas.style.width = `${Math.round(S.w * scale)}px`; canvas.style.height = `${Math.round(S.h * scale)}px`;
  $("paint").style.maxWidth = `${Math.round(S.w * scale) + 2}px`;
  S.label = new Uint8Array(S.w * S.h).fill(model.order[0]);
  S.undo = []; S.redo = []; S.instancePng = null; S.stylePng = null;
  S.selected = model.order[0];
  $("instance-wrap").hidden = !model.use_instance;
  $("style-wrap").hidden = !model.style;
  $("clear-instance").hidden = true; $("clear-style").hidden = true;
  setupStyle();
  renderPalette();
  render();
  $("results").innerHTML = ""; $("download-image").disabled = true;
  generate();
}

function setupStyle() {
  const multi = S.model.multimodal;
  const n = $("n-samples");
  n.innerHTML = "";
  for (let k = 1; k <= (multi ? S.config.max_samples : 1); k++) { const o = document.createElement("option"); o.value = k; o.textContent = k; n.appendChild(o); }
  $("seed").disabled = !multi; $("new-style").disabled = !multi; n.disabled = !multi;
  if (multi && $("seed").value === "") $("seed").value = String(Math.floor(Math.random() * 1e6));
  $("style-note").hidden = multi;
  $("style-note").textContent = multi ? "" : "This model has no style noise: one image per label map.";
}

// ------------------------------------------------------------------ palette
function renderPalette() {
  const query = $("class-search").value.trim().toLowerCase();
  const list = $("palette");
  list.innerHTML = "";
  for (const i of S.model.order) {
    const c = S.model.classes[i];
    if (query && !c.name.toLowerCase().includes(query) && String(c.index) !== query) continue;
    const li = document.createElement("li");
    li.dataset.index = c.index;
    li.title = `class ${c.index}: ${c.name}`;
    li.className = c.index === S.selected ? "selected" : "";
    const freq = c.frequency ? `${(100 * c.frequency).toFixed(1)}%` : "";
    li.innerHTML = `<span class="swatch" style="background: rgb(${c.color.join(",")})"></span><span class="name"></span><span class="freq">${freq}</span>`;
    li.querySelector(".name").textContent = c.name;
    li.addEventListener("click", () => { S.selected = c.index; if (S.tool === "eraser") setTool("brush"); renderPalette(); });
    list.appendChild(li);
  }
  const sel = S.model.classes[S.selected];
  $("selected-class").textContent = `painting with ${sel.index}: ${sel.name}`;
}

// ------------------------------------------------------------------ the label map
function colorOf(value) {
  const c = S.model.classes[value];
  return c ? c.color : [0, 0, 0]; // dontcare (255) is black
}

function render() {
  const ctx = $("label-canvas").getContext("2d");
  const image = ctx.createImageData(S.w, S.h);
  for (let i = 0; i < S.label.length; i++) {
    const [r, g, b] = colorOf(S.label[i]);
    image.data[4 * i] = r; image.data[4 * i + 1] = g; image.data[4 * i + 2] = b; image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function paintValue() {
  if (S.tool !== "eraser") return S.selected;
  return S.model.dontcare ? 255 : S.model.order[0];
}

function disc(cx, cy, value) {
  const size = Number($("brush-size").value);
  const r = size / 2;
  for (let y = Math.floor(cy - r); y <= Math.ceil(cy + r); y++) {
    for (let x = Math.floor(cx - r); x <= Math.ceil(cx + r); x++) {
      if (x < 0 || y < 0 || x >= S.w || y >= S.h) continue;
      const dx = x + 0.5 - (cx + 0.5), dy = y + 0.5 - (cy + 0.5);
      if (size <= 1 ? (x === cx && y === cy) : dx * dx + dy * dy <= r * r) S.label[y * S.w + x] = value;
    }
  }
}

function line(a, b, value) {
  const steps = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1])));
  for (let s = 0; s <= steps; s++) disc(Math.round(a[0] + (b[0] - a[0]) * s / steps), Math.round(a[1] + (b[1] - a[1]) * s / steps), value);
}

function fill(x, y, value) {
  const target = S.label[y * S.w + x];
  if (target === value) return;
  const stack = [y * S.w + x];
  while (stack.length) {
    const p = stack.pop();
    if (S.label[p] !== target) continue;
    S.label[p] = value;
    const px = p % S.w, py = (p - px) / S.w;
    if (px > 0) stack.push(p - 1);
    if (px < S.w - 1) stack.push(p + 1);
    if (py > 0) stack.push(p - S.w);
    if (py < S.h - 1) stack.push(p + S.w);
  }
}

function pointAt(event) {
  const canvas = $("label-canvas");
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / rect.width * S.w);
  const y = Math.floor((event.clientY - rect.top) / rect.height * S.h);
  return [Math.min(S.w - 1, Math.max(0, x)), Math.min(S.h - 1, Math.max(0, y))];
}

function remember() { S.undo.push(S.label.slice()); if (S.undo.length > 100) S.undo.shift(); S.redo = []; }

function changed() { render(); if ($("auto").checked) scheduleGenerate(); }

function setupCanvas() {
  const canvas = $("label-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!S.model) return;
    const p = pointAt(event);
    if (S.tool === "fill") { remember(); fill(p[0], p[1], paintValue()); changed(); return; }
    canvas.setPointerCapture(event.pointerId);
    S.painting = S.label.slice(); S.last = p;
    disc(p[0], p[1], paintValue());
    render();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!S.painting) return;
    const p = pointAt(event);
    line(S.last, p, paintValue()); S.last = p;
    render();
  });
  const end = () => {
    if (!S.painting) return;
    S.undo.push(S.painting); S.redo = []; S.painting = null;
    changed();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

function setTool(tool) {
  S.tool = tool;
  for (const b of document.querySelectorAll(".tool")) b.classList.toggle("active", b.dataset.tool === tool);
}

function undo() { if (S.undo.length) { S.redo.push(S.label); S.label = S.undo.pop(); changed(); } }
function redo() { if (S.redo.length) { S.undo.push(S.label); S.label = S.redo.pop(); changed(); } }

// ------------------------------------------------------------------ generating
function scheduleGenerate() {
  clearTimeout(S.timer);
  S.timer = setTimeout(generate, S.config.debounce_ms);
}

async function labelBase64() { return bytesToBase64(await grayPng(S.label, S.w, S.h)); }

async function generate() {
  if (!S.model) return;
  clearTimeout(S.timer);
  S.timer = null;
  const id = ++S.genId;               // the latest request wins: older answers are dropped
  if (S.abort) S.abort.abort();
  S.abort = new AbortController();
  $("status").textContent = "generating…";
  const body = {
    model: S.model.uri, label: await labelBase64(), instance: S.instancePng, style: S.stylePng,
    seed: S.model.multimodal && $("seed").value !== "" ? Number($("seed").value) : null,
    n_samples: Number($("n-samples").value || 1),
  };
  try {
    const out = await api("/api/synthesize", body, S.abort.signal);
    if (id !== S.genId) return;
    showError("");
    showImages(out);
    $("status").textContent = `${out.width}×${out.height}, ${out.ms} ms on the server`;
    S.done = id;
  } catch (err) {
    if (err.name === "AbortError" || id !== S.genId) return;
    $("status").textContent = "";
    showError(err.message);
    S.done = id;
  }
}

function showImages(out) {
  const results = $("results");
  results.innerHTML = "";
  S.images = out.images;
  const n = out.images.length;
  const width = Math.round(S.config.display_px / (n > 1 ? 2 : 1));
  out.images.forEach((b64, k) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.className = "result";
    img.src = `data:image/png;base64,${b64}`;
    img.width = width; img.height = Math.round(width * out.height / out.width);
    if (out.seed !== null) img.dataset.seed = String(out.seed + k);
    figure.appendChild(img);
    const caption = document.createElement("figcaption");
    caption.textContent = out.seed !== null ? `seed ${out.seed + k}` : "";
    figure.appendChild(caption);
    results.appendChild(figure);
  });
  $("download-image").disabled = n === 0;
}

function download(href, name) {
  const a = document.createElement("a");
  a.href = href; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}

// ------------------------------------------------------------------ uploads
async function uploadMap(input, kind) {
  const file = input.files[0];
  input.value = "";
  if (!file) return;
  try {
    const out = await api("/api/labelmap", {
      model: S.model.uri, image: await readFileBase64(file), kind, snap: $("snap").checked,
    });
    showError("");
    if (kind === "label") {
      remember();
      S.label = base64ToBytes(out.indices);
      changed();
    } else {
      S.instancePng = out.png;
      $("clear-instance").hidden = false;
      $("clear-instance").textContent = `drop instance map (${file.name})`;
      if ($("auto").checked) scheduleGenerate();
    }
  } catch (err) {
    showError(`${file.name}: ${err.message}`);
  }
}

async function uploadStyle(input) {
  const file = input.files[0];
  input.value = "";
  if (!file) return;
  S.stylePng = await readFileBase64(file);
  $("clear-style").hidden = false;
  $("clear-style").textContent = `drop style image (${file.name})`;
  generate();
}

// ------------------------------------------------------------------ wiring
function wire() {
  setupCanvas();
  $("model-select").addEventListener("change", (e) => selectModel(e.target.value).catch((err) => showError(err.message)));
  $("class-search").addEventListener("input", renderPalette);
  $("class-search").addEventListener("keydown", (e) => {  // Enter paints with the first match
    const first = $("palette").querySelector("li");
    if (e.key !== "Enter" || !first) return;
    S.selected = Number(first.dataset.index);
    if (S.tool === "eraser") setTool("brush");
    renderPalette();
  });
  for (const b of document.querySelectorAll(".tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => { remember(); S.label.fill(S.model.order[0]); changed(); });
  $("generate").addEventListener("click", generate);
  $("new-style").addEventListener("click", () => { $("seed").value = String(Math.floor(Math.random() * 1e6)); generate(); });
  $("seed").addEventListener("change", generate);
  $("n-samples").addEventListener("change", generate);
  $("upload-label").addEventListener("change", (e) => uploadMap(e.target, "label"));
  $("upload-instance").addEventListener("change", (e) => uploadMap(e.target, "instance"));
  $("upload-style").addEventListener("change", (e) => uploadStyle(e.target));
  $("clear-instance").addEventListener("click", () => { S.instancePng = null; $("clear-instance").hidden = true; generate(); });
  $("clear-style").addEventListener("click", () => { S.stylePng = null; $("clear-style").hidden = true; generate(); });
  $("download-image").addEventListener("click", () => S.images.forEach((b64, k) => download(`data:image/png;base64,${b64}`, `gaugan-${k}.png`)));
  $("download-label-index").addEventListener("click", async () => download(`data:image/png;base64,${await labelBase64()}`, "label-indices.png"));
  $("download-label-color").addEventListener("click", () => download($("label-canvas").toDataURL("image/png"), "label-colors.png"));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT") return;
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
    else if ((e.ctrlKey || e.metaKey) && e.key === "y") { e.preventDefault(); redo(); }
    else if (e.key === "b") setTool("brush"); else if (e.key === "f") setTool("fill"); else if (e.key === "e") setTool("eraser");
  });
}

wire();
loadModels().catch((err) => showError(err.message));
