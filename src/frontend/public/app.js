// The classifier page: draw or upload an image, send it to the API, show the answer.
// Plain browser JavaScript, no build step and no dependencies. Settings come from the
// <meta> tags in index.html; docs/frontend.md explains how to adapt the page.
"use strict";

const $ = (id) => document.getElementById(id);
const metaValue = (name) =>
  (document.querySelector(`meta[name="${name}"]`)?.getAttribute("content") || "").trim();

const config = {
  apiBase: metaValue("api-base").replace(/\/+$/, ""),
  // Empty: the served model's limit (its collect.max_bytes, from /v1/model), so the page
  // takes what the model was trained on; 20 MB (the default) until the model is known.
  pageUploadLimit: Number(metaValue("max-upload-bytes")) || null,
  maxUploadBytes: Number(metaValue("max-upload-bytes")) || 20 * 1024 * 1024,
  drawing: metaValue("drawing") !== "off",
  timeoutMs: 20000,
  maxBars: 10,
};

/* ---------- formatting ---------- */

const percent = (p) => {
  const value = p * 100;
  if (value > 0 && value < 0.1) return "<0.1%";
  return `${value.toFixed(1)}%`;
};

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function formatDate(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const text = new Intl.DateTimeFormat("en-GB", {
    dateStyle: "medium",
    timeStyle: "short",
    timeZone: "UTC",
  }).format(date);
  return `${text} UTC`;
}

// Long names (content hashes, say) keep their start and end: "ce1144dd…40b13.png".
function shorten(text, max) {
  if (text.length <= max) return text;
  const tail = Math.floor((max - 1) / 3);
  return `${text.slice(0, max - 1 - tail)}…${text.slice(-tail)}`;
}

function element(tag, { className, text, title } = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (title) node.title = title;
  return node;
}

/* ---------- talking to the API ---------- */

// A failure the page can explain to a person: a short title and one helpful sentence.
class Problem extends Error {
  constructor(kind, title, detail, serverMessage = "") {
    super(title);
    this.kind = kind;
    this.title = title;
    this.detail = detail;
    this.serverMessage = serverMessage;
  }
}

const UNREACHABLE_HELP =
  "Check that the API is running (make serve, or docker compose up) and try again.";

const IMAGE_TYPES = "PNG, JPEG, GIF, BMP, TIFF or WebP";

function problemFromResponse(status, body) {
  const message = body?.error?.message || "";
  const code = body?.error?.code || "";
  if (code === "overloaded") {
    return new Problem("busy", "The server is busy",
      "Too many images are waiting; try again in a moment.");
  }
  if (code === "image_too_small") {
    return new Problem("too-small", "That image is too small",
      "The model was trained on larger images; choose a bigger one.", message);
  }
  switch (status) {
    case 413:
      return new Problem("too-large",
        code === "too_many_pixels" ? "That image is too large" : "That file is too big",
        "Try a smaller or compressed image.", message);
    case 415:
    case 422:
      return new Problem("not-an-image", "That file is not an image the model can read",
        `Choose a ${IMAGE_TYPES} file.`, message);
    case 429:
      return new Problem("busy", "The server is busy",
        "Too many requests at once; wait a moment and try again.");
    case 502:
    case 504:
      return new Problem("unreachable", "Cannot reach the model server", UNREACHABLE_HELP);
    case 503:
      return new Problem("no-model", "The model is not ready",
        message || "The server has no model loaded yet; try again in a moment.");
    default:
      return new Problem("server", "The server ran into a problem",
        message || `It answered HTTP ${status}. Try again, or look at the server log.`);
  }
}

async function callApi(path, options = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), config.timeoutMs);
  let response;
  try {
    response = await fetch(`${config.apiBase}${path}`, {
      ...options,
      headers: { Accept: "application/json" },
      signal: controller.signal,
    });
  } catch (err) {
    if (err.name === "AbortError") {
      throw new Problem("timeout", "The server took too long to answer",
        "It may be overloaded or stuck; try again in a moment.");
    }
    throw new Problem("unreachable", "Cannot reach the server", UNREACHABLE_HELP);
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page, say): the status code still tells the story.
  }
  if (!response.ok) throw problemFromResponse(response.status, body);
  if (body === null) {
    throw new Problem("server", "The server sent an unexpected answer", "It was not JSON.");
  }
  return { body, response };
}

/* ---------- the server status chip ---------- */

function setServerState(state, text) {
  $("server-state").dataset.state = state;
  $("server-text").textContent = text;
}

/* ---------- the model card ---------- */

let modelLoaded = false;
let readyText = "Ready";

function addFact(list, term, value, title) {
  if (value === undefined || value === null || value === "") return;
  const row = element("div", { className: "fact" });
  row.append(element("dt", { text: term }), element("dd", { text: value, title }));
  list.append(row);
}

// The optimization table, when the API provides one: a list of rows, or an object keyed
// by variant name, at `optimization` or `metrics.optimization`. Returns [] otherwise.
function optimizationRows(model) {
  const source = model.optimization ?? model.metrics?.optimization;
  if (Array.isArray(source)) return source.filter((row) => row && typeof row === "object");
  if (Array.isArray(source?.rows)) return source.rows;
  if (source && typeof source === "object") {
    return Object.entries(source)
      .filter(([, row]) => row && typeof row === "object")
      .map(([variant, row]) => ({ variant, ...row }));
  }
  return [];
}

const COLUMN_NAMES = {
  variant: "Variant", size_bytes: "Size", accuracy: "Accuracy", latency_ms: "Latency",
  macro_f1: "Macro F1", speedup: "Speed-up", served: "Served",
};

function columnName(key) {
  if (COLUMN_NAMES[key]) return COLUMN_NAMES[key];
  const words = key.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function formatCell(key, value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "boolean") return value ? "yes" : "—";
  if (typeof value !== "number") return String(value);
  if (/bytes$/.test(key)) return formatBytes(value);
  // Below a millisecond two significant digits: LiteRT variants of a small model differ
  // at 0.007 vs 0.014 ms, which two decimals would show as the same 0.01 ms.
  if (/_ms$/.test(key)) {
    return value < 1 ? `${Number(value.toPrecision(2))} ms` : `${value.toFixed(value < 10 ? 2 : 1)} ms`;
  }
  if (/(accuracy|f1|precision|recall)/.test(key) && value <= 1) return percent(value);
  if (/(speedup|ratio)/.test(key)) return `${value.toFixed(2)}×`;
  return Number.isInteger(value) ? value.toLocaleString("en") : value.toPrecision(4);
}

function renderOptimization(model) {
  const rows = optimizationRows(model);
  $("optimization").hidden = rows.length === 0;
  if (rows.length === 0) return;
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const headRow = element("tr");
  for (const key of columns) {
    const cell = element("th", { text: columnName(key) });
    cell.scope = "col";
    headRow.append(cell);
  }
  $("optimization-table").tHead.replaceChildren(headRow);
  $("optimization-table").tBodies[0].replaceChildren(...rows.map((row) => {
    const tr = element("tr", { className: row.served || row.selected ? "served" : "" });
    columns.forEach((key, index) => {
      const cell = element(index === 0 ? "th" : "td", { text: formatCell(key, row[key]) });
      if (index === 0) cell.scope = "row";
      tr.append(cell);
    });
    return tr;
  }));
}

function renderModel(model) {
  const test = model.metrics?.test || {};
  const lineage = model.lineage || {};
  const facts = $("model-facts");
  facts.replaceChildren();
  addFact(facts, "Model", model.name);
  addFact(facts, "Version", `${model.version}${model.alias ? ` (${model.alias})` : ""}`);
  if (typeof test.accuracy === "number") addFact(facts, "Test accuracy", percent(test.accuracy));
  if (typeof test.macro_f1 === "number") addFact(facts, "Macro F1", percent(test.macro_f1));
  if (typeof test.examples === "number") {
    addFact(facts, "Test examples", test.examples.toLocaleString("en"));
  }
  if (lineage.data_hash) {
    addFact(facts, "Data version", String(lineage.data_hash).slice(0, 12), lineage.data_hash);
  }
  if (lineage.trained_at) addFact(facts, "Trained", formatDate(lineage.trained_at));
  if (lineage.git_sha && lineage.git_sha !== "unknown") {
    const sha = String(lineage.git_sha).slice(0, 7);
    addFact(facts, "Code", lineage.git_dirty ? `${sha} + local changes` : sha, lineage.git_sha);
  }
  const input = model.input || {};
  if (input.image_size) {
    addFact(facts, "Input", `${input.image_size}×${input.image_size} ${input.color_mode || ""}`.trim());
  }
  if (Array.isArray(model.labels)) {
    const shown = model.labels.length <= 12 ? `: ${model.labels.join(" ")}` : "";
    addFact(facts, "Classes", `${model.labels.length}${shown}`);
  }
  addFact(facts, "Training run", lineage.wandb_run_id);
  facts.hidden = false;
  renderOptimization(model);
  $("model-status").hidden = true;
  $("model-card").setAttribute("aria-busy", "false");
  modelLoaded = true;
}

async function loadModel() {
  try {
    const { body } = await callApi("/v1/model");
    renderModel(body);
    if (!config.pageUploadLimit && body.input?.max_bytes) setUploadLimit(body.input.max_bytes);
    readyText = `${body.name} v${body.version} ready`;
    setServerState("ready", readyText);
  } catch (err) {
    const problem = err instanceof Problem ? err : new Problem("server", "Unexpected error", "");
    $("model-status").textContent = `${problem.title}. ${problem.detail}`;
    $("model-status").hidden = false;
    $("model-card").setAttribute("aria-busy", "false");
    setServerState(problem.kind === "unreachable" ? "offline" : "error",
      problem.kind === "unreachable" ? "Server unreachable" : problem.title);
  }
}

/* ---------- showing a prediction ---------- */

let previewUrl = null;
let requestCounter = 0;
let lastInput = null;

function showOnly(name) {
  for (const id of ["empty", "error", "loading", "result"]) $(id).hidden = id !== name;
}

function showProblem(problem) {
  $("error-title").textContent = problem.title;
  $("error-detail").textContent = problem.detail;
  $("error-server").textContent = problem.serverMessage ? `The server says: ${problem.serverMessage}` : "";
  $("error-server").hidden = !problem.serverMessage;
  $("error").dataset.kind = problem.kind;
  // Trying again helps when the server was down or busy, not when the file is wrong.
  $("retry").hidden = !lastInput || ["too-large", "too-small", "not-an-image"].includes(problem.kind);
  showOnly("error");
}

function serverMillis(response) {
  // Optional: an API that sends `Server-Timing: inference;dur=3.2` gets it shown too.
  const match = /dur=([\d.]+)/.exec(response.headers.get("server-timing") || "");
  return match ? Number(match[1]) : null;
}

function renderPrediction(prediction, { millis, serverMs, source }) {
  const ranked = Object.entries(prediction.probabilities || {}).sort((a, b) => b[1] - a[1]);
  $("top-label").textContent = prediction.label;
  $("top-confidence").textContent = `${percent(prediction.confidence)} confident`;
  $("bars").replaceChildren(...ranked.slice(0, config.maxBars).map(([label, p], index) => {
    const item = element("li", { className: index === 0 ? "top" : "" });
    const track = element("span", { className: "bar-track" });
    const fill = element("span", { className: "bar-fill" });
    fill.style.width = `${Math.max(p * 100, 0.5).toFixed(1)}%`;
    track.append(fill);
    track.setAttribute("aria-hidden", "true");
    item.append(
      element("span", { className: "bar-label", text: label }),
      track,
      element("span", { className: "bar-value", text: percent(p) }),
    );
    return item;
  }));
  const parts = [`${millis} ms round trip`];
  if (serverMs !== null) parts.push(`${serverMs.toFixed(1)} ms on the server`);
  parts.push(`model version ${prediction.model_version}`);
  if (ranked.length > config.maxBars) parts.push(`top ${config.maxBars} of ${ranked.length} classes`);
  parts.push(shorten(source, 40));
  $("result-meta").textContent = parts.join(" · ");
  showOnly("result");
  $("announcer").textContent =
    `Prediction: ${prediction.label}, ${percent(prediction.confidence)} confident.`;
}

// On a narrow screen the answer is below the inputs: bring it into view, except while
// someone is still drawing (auto-predict would yank the pad away between strokes).
function revealResult() {
  const card = $("result-card");
  const box = card.getBoundingClientRect();
  if (box.top >= 0 && box.top < window.innerHeight * 0.6) return;
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  card.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
}

async function classify(blob, filename, source, { reveal = true } = {}) {
  lastInput = { blob, filename, source };
  const ticket = ++requestCounter;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  $("preview").src = previewUrl;
  showOnly("loading");
  $("result-card").setAttribute("aria-busy", "true");
  $("announcer").textContent = "Classifying…";

  const form = new FormData();
  form.append("file", blob, filename);
  const started = performance.now();
  try {
    const { body, response } = await callApi("/v1/predict", { method: "POST", body: form });
    if (ticket !== requestCounter) return; // a newer request superseded this one
    renderPrediction(body, {
      millis: Math.round(performance.now() - started),
      serverMs: serverMillis(response),
      source,
    });
    if (reveal) revealResult();
    if (modelLoaded) setServerState("ready", readyText);
    else loadModel();
  } catch (err) {
    if (ticket !== requestCounter) return;
    const problem = err instanceof Problem
      ? err
      : new Problem("server", "Something went wrong", String(err));
    if (problem.kind === "unreachable") setServerState("offline", "Server unreachable");
    showProblem(problem);
    if (reveal) revealResult();
    $("announcer").textContent = "";
  } finally {
    if (ticket === requestCounter) $("result-card").setAttribute("aria-busy", "false");
  }
}

/* ---------- files: picker, drag and drop, paste ---------- */

function acceptFile(file, source) {
  if (!file) return;
  if (file.size > config.maxUploadBytes) {
    showProblem(new Problem("too-large", "That file is too big",
      `${file.name} is ${formatBytes(file.size)}; the limit is ` +
      `${formatBytes(config.maxUploadBytes)}. Try a smaller or compressed image.`));
    return;
  }
  if (file.type && !file.type.startsWith("image/")) {
    showProblem(new Problem("not-an-image", "That file is not an image",
      `${file.name} is ${file.type}. Choose a ${IMAGE_TYPES} file.`));
    return;
  }
  classify(file, file.name || "image", source);
}

function setUploadLimit(bytes) {
  config.maxUploadBytes = bytes;
  $("limit-hint").textContent = `${IMAGE_TYPES}, up to ${formatBytes(bytes)}.`;
}

function setUpFiles() {
  setUploadLimit(config.maxUploadBytes);
  $("file-input").addEventListener("change", (event) => {
    acceptFile(event.target.files[0], `uploaded ${event.target.files[0]?.name || "file"}`);
    event.target.value = ""; // choosing the same file again still triggers a change
  });

  const zone = $("drop-zone");
  zone.addEventListener("click", (event) => {
    if (event.target === zone || event.target.closest(".drop-title, .drop-icon")) {
      $("file-input").click();
    }
  });
  // Dropping anywhere on the page works; the zone lights up while something is dragged.
  let depth = 0;
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) zone.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) acceptFile(file, `dropped ${file.name}`);
  });

  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])][0];
    if (!file) return;
    event.preventDefault();
    acceptFile(file, "pasted image");
  });
}

/* ---------- the drawing pad ---------- */

// Strokes are kept as lists of points so the export can re-draw them centred and scaled,
// the way the training digits look: white ink on black, filling most of the square.
const EXPORT_SIZE = 64;
const strokes = [];
let autoTimer = null;

function setUpDrawing() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const inkWidth = pad.width / 11;
  let current = null;

  function paintBackground() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
  }

  function pointFrom(event) {
    const box = pad.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * pad.width) / box.width,
      ((event.clientY - box.top) * pad.height) / box.height,
    ];
  }

  function drawSegment(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = inkWidth;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  }

  function setHasInk(hasInk) {
    $("predict-drawing").disabled = !hasInk;
    $("clear-drawing").disabled = !hasInk;
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    clearTimeout(autoTimer);
    const point = pointFrom(event);
    current = [point];
    strokes.push(current);
    drawSegment(point, point);
    setHasInk(true);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) {
      const point = pointFrom(each);
      drawSegment(current[current.length - 1], point);
      current.push(point);
    }
  });
  const finishStroke = () => {
    if (!current) return;
    current = null;
    if ($("auto-predict").checked) {
      clearTimeout(autoTimer);
      autoTimer = setTimeout(() => predictDrawing({ reveal: false }), 350);
    }
  };
  pad.addEventListener("pointerup", finishStroke);
  pad.addEventListener("pointercancel", finishStroke);

  $("clear-drawing").addEventListener("click", () => {
    clearTimeout(autoTimer);
    strokes.length = 0;
    paintBackground();
    setHasInk(false);
    if (lastInput?.source === "your drawing") {
      requestCounter += 1; // drop any answer still on its way
      showOnly("empty");
      $("result-card").setAttribute("aria-busy", "false");
    }
    $("announcer").textContent = "Drawing cleared.";
  });
  $("predict-drawing").addEventListener("click", () => {
    clearTimeout(autoTimer);
    predictDrawing({ reveal: true });
  });
  paintBackground();
}

function exportDrawing() {
  const points = strokes.flat();
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = $("pad");
  // A tiny scribble is not blown up to fill the square.
  const side = Math.max(maxX - minX, maxY - minY, pad.width * 0.2);
  const scale = (EXPORT_SIZE * 0.72) / side;
  const out = document.createElement("canvas");
  out.width = EXPORT_SIZE;
  out.height = EXPORT_SIZE;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, EXPORT_SIZE, EXPORT_SIZE);
  ctx.translate(EXPORT_SIZE / 2, EXPORT_SIZE / 2);
  ctx.scale(scale, scale);
  ctx.translate(-(minX + maxX) / 2, -(minY + maxY) / 2);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = (EXPORT_SIZE * 0.17) / scale;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) {
    ctx.beginPath();
    ctx.moveTo(...stroke[0]);
    for (const point of stroke) ctx.lineTo(...point);
    ctx.stroke();
  }
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function predictDrawing({ reveal }) {
  if (strokes.length === 0) return;
  const blob = await exportDrawing();
  if (blob) classify(blob, "drawing.png", "your drawing", { reveal });
}

/* ---------- start ---------- */

function retryLast() {
  if (lastInput) classify(lastInput.blob, lastInput.filename, lastInput.source);
  if (!modelLoaded) loadModel();
}

function start() {
  if (config.drawing) setUpDrawing();
  else $("draw-panel").hidden = true;
  setUpFiles();
  $("retry").addEventListener("click", retryLast);
  loadModel();
}

start();
