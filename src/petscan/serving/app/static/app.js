// petscan web page: upload images one per request (a few at a time, so the server can
// explain them as one batch), show each answer as a card, keep the rows for the CSV.
"use strict";

const PARALLEL = 4;
const state = { info: null, rows: [], queue: [], running: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function shortRun(run) {
  return run ? run.slice(0, 8) : "unknown";
}

function modelLabel(model) {
  const version = model.version ? `${model.name} v${model.version}` : model.uri;
  return `${version} \u00b7 MLflow run ${shortRun(model.run_id)}`;
}

async function loadInfo() {
  try {
    const reply = await fetch("/api/info");
    state.info = await reply.json();
  } catch (err) {
    $("model-info").textContent = "The server does not answer.";
    return;
  }
  const model = state.info.model;
  const info = $("model-info");
  info.textContent = "";
  info.append(el("div", null, `Model ${model.version ? model.name + " version " + model.version : model.uri}`));
  info.append(el("div", null, `MLflow run ${model.run_id || "unknown"}`));
  info.append(el("div", null, `Backbone: ${model.weights_label || "unknown"}`));
  $("random-init").hidden = model.random_init !== true;
  const other = otherBackbone(model);
  $("other-backbone").hidden = !other;
  $("other-backbone").textContent = other ? `${other}: the numbers and heatmaps on this page ` +
    "come from this backbone, not from RadImageNet's." : "";
  const mp = state.info.max_pixels / 1e6;
  const pixels = mp ? `, at most ${mp >= 1 ? mp.toFixed(0) : mp.toPrecision(2)} megapixels` : "";
  $("limits").textContent =
    `PNG, JPEG, 16-bit grey, RGBA, TIFF, \u2026 up to ${state.info.max_upload_mb} MB each${pixels}`;
}

// The label of a backbone that is neither random-init nor RadImageNet (the demo's, ImageNet).
function otherBackbone(model) {
  const label = model.weights_label;
  return model.random_init === false && label && label !== "RadImageNet" ? label : null;
}

function flags(model) {
  const box = el("div", "flags");
  const other = otherBackbone(model);
  if (other) {
    box.append(el("div", "flag warning", other));
  } else if (model.random_init === true) {
    box.append(el("div", "flag warning", "RANDOM-INIT backbone (not RadImageNet): demonstration only"));
  } else if (model.random_init !== false) {
    box.append(el("div", "flag warning", "Backbone weights unknown: treat as a demonstration"));
  }
  box.append(el("div", "flag research", "Research use only: not a medical device"));
  return box;
}

function cardHead(name, detail) {
  const head = el("div", "card-head");
  head.append(el("span", "file", name));
  head.lastChild.title = name;
  if (detail) head.append(el("span", "dims", detail));
  return head;
}

function pendingCard(file) {
  const card = el("article", "card pending");
  card.append(cardHead(file.name, ""), el("div", "message", "Analysing\u2026"));
  $("results").append(card);
  return card;
}

function showError(card, name, message) {
  card.className = "card error";
  const body = el("div", "body");
  body.append(flags(state.info ? state.info.model : {}));
  card.replaceChildren(cardHead(name, "not analysed"), el("div", "message", message), body);
}

function showResult(card, result) {
  card.className = "card result";
  const picture = el("div", "picture");
  const img = el("img");
  img.src = result.overlay;
  img.alt = `Grad-CAM overlay of ${result.file}`;
  picture.append(img);
  const body = el("div", "body");
  const predicted = el("div", "predicted");
  predicted.append("Predicted: ", el("b", null, result.predicted_class));
  body.append(predicted);
  const classes = Object.keys(result.probabilities);
  for (const name of classes) {
    const p = result.probabilities[name];
    const bar = el("div", name === result.predicted_class ? "bar best" : "bar");
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    bar.append(el("span", "label", name), track, el("span", "value", `${(100 * p).toFixed(1)}%`));
    body.append(bar);
  }
  body.append(flags(result.model));
  body.append(el("div", "provenance", modelLabel(result.model)));
  card.replaceChildren(
    cardHead(result.file, `${result.width} \u00d7 ${result.height}`),
    picture,
    el("div", "caption", `Grad-CAM: where the evidence for \u201c${result.explained_class}\u201d lies`),
    body,
  );
}

async function analyse(file) {
  const card = pendingCard(file);
  const limit = state.info ? state.info.max_upload_mb * 1024 * 1024 : Infinity;
  let row = { file: file.name };
  if (file.size === 0) {
    row.error = "empty file (0 bytes)";
  } else if (file.size > limit) {
    row.error = `larger than the upload limit of ${state.info.max_upload_mb} MB`;
  } else {
    try {
      const reply = await fetch(`/api/predict?name=${encodeURIComponent(file.name)}`, {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream" },
        body: file,
      });
      let data;
      try {
        data = await reply.json();
      } catch (err) {
        data = { error: `the server answered HTTP ${reply.status}` };
      }
      row = reply.ok ? data : { file: file.name, error: data.error || `HTTP ${reply.status}` };
    } catch (err) {
      row.error = "the upload failed (is the server running?)";
    }
  }
  if (row.error) showError(card, file.name, row.error);
  else showResult(card, row);
  state.rows.push(row);
  updateToolbar();
}

function pump() {
  while (state.running < PARALLEL && state.queue.length) {
    const file = state.queue.shift();
    state.running += 1;
    analyse(file).finally(() => {
      state.running -= 1;
      pump();
    });
  }
  updateToolbar();
}

function addFiles(files) {
  for (const file of files) state.queue.push(file);
  pump();
}

function updateToolbar() {
  const done = state.rows.length;
  const failed = state.rows.filter((r) => r.error).length;
  const waiting = state.queue.length + state.running;
  const plural = (n) => (n === 1 ? "image" : "images");
  let text = "No images yet.";
  if (done) {
    text = `${done} ${plural(done)}: ${done - failed} analysed` + (failed ? `, ${failed} not usable` : "");
  }
  if (waiting) text += ` \u00b7 ${waiting} in progress`;
  $("summary").textContent = text;
  $("csv").disabled = done === 0;
  $("clear").disabled = done === 0 || waiting > 0;
}

// A cell a spreadsheet could read as a formula (it starts with = + - @, a tab or a line break:
// a file name such as "=HYPERLINK(...).png") gets a leading ' so it stays text (OWASP "CSV
// injection"). Every cell of the CSV goes through here, header and model fields included.
function csvCell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r\n]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function toCsv() {
  const model = state.info ? state.info.model : {};
  const classes = model.classes || [];
  const header = ["file", "predicted_class", ...classes, "explained_class", "peak_col", "peak_row",
    "model_name", "model_version", "mlflow_run_id", "random_init_backbone", "error", "notice"];
  const lines = [header.map(csvCell).join(",")];
  for (const row of state.rows) {
    const m = row.model || model;
    const p = row.probabilities || {};
    lines.push([
      row.file, row.predicted_class, ...classes.map((c) => (c in p ? p[c].toFixed(6) : "")),
      row.explained_class, row.peak ? row.peak[0] : "", row.peak ? row.peak[1] : "",
      m.name, m.version, m.run_id, m.random_init, row.error,
      "Research use only: not a medical device",
    ].map(csvCell).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

function downloadCsv() {
  const blob = new Blob([toCsv()], { type: "text/csv" });
  const link = el("a");
  link.href = URL.createObjectURL(blob);
  link.download = "petscan-results.csv";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function setUp() {
  const drop = $("drop");
  $("files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
  $("csv").addEventListener("click", downloadCsv);
  $("clear").addEventListener("click", () => {
    state.rows = [];
    $("results").replaceChildren();
    updateToolbar();
  });
  loadInfo();
}

setUp();
