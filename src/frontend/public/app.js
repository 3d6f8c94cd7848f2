// Upload an image, send it to the API, show the ranked prediction.
"use strict";

const apiBase = (document.querySelector('meta[name="api-base"]')?.content || "").replace(/\/$/, "");
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function loadModelInfo() {
  try {
    const response = await fetch(`${apiBase}/v1/model`);
    if (!response.ok) throw new Error(await errorMessage(response));
    const model = await response.json();
    const accuracy = model.metrics?.test?.accuracy;
    $("model-line").textContent = `Model ${model.name} · version ${model.version}` +
      (accuracy !== undefined ? ` · test accuracy ${(accuracy * 100).toFixed(1)}%` : "");
  } catch (err) {
    $("model-line").textContent = `No model available: ${err.message}`;
  }
}

function showPrediction(prediction, millis) {
  $("top-label").textContent = prediction.label;
  $("top-confidence").textContent = `${(prediction.confidence * 100).toFixed(1)}% · ${millis} ms`;
  const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  $("bars").replaceChildren(...ranked.map(([label, p]) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(p * 100).toFixed(1)}%`;
    item.append(name, bar, value);
    return item;
  }));
  $("result").hidden = false;
  setStatus(`Predicted by model version ${prediction.model_version}.`);
}

async function classify(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("result").hidden = true;
  setStatus("Classifying…");
  const form = new FormData();
  form.append("file", file, file.name);
  const started = performance.now();
  let response;
  try {
    response = await fetch(`${apiBase}/v1/predict`, { method: "POST", body: form });
  } catch {
    setStatus("The server is unreachable. Is the API running?", true);
    return;
  }
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return;
  }
  showPrediction(await response.json(), Math.round(performance.now() - started));
}

$("file-input").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) classify(file);
});
const zone = $("drop-zone");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("dragging");
  const [file] = event.dataTransfer.files;
  if (file) classify(file);
});
loadModelInfo();
