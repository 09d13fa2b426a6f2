// The annotation page: shows one pair at a time, sends answers and undos to the local server.
"use strict";

const KEYS = {
  r: "recognizable", 1: "recognizable",
  n: "not_recognizable", 2: "not_recognizable",
  s: "skip", 3: "skip",
};
const LABELS = { recognizable: "recognizable", not_recognizable: "not recognizable", skip: "skipped" };

const el = (id) => document.getElementById(id);
const state = { current: null, busy: false };

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const payload = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof payload.detail === "string" ? payload.detail : response.statusText;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function setBusy(busy) {
  state.busy = busy;
  document.body.dataset.ready = busy ? "false" : "true";
  for (const button of document.querySelectorAll("button")) button.disabled = busy;
}

function showProgress(progress) {
  el("progress").textContent = `${progress.done} / ${progress.total}`;
  el("progress-bar").max = Math.max(progress.total, 1);
  el("progress-bar").value = progress.done;
}

function loadImage(img, url) {
  return new Promise((resolve) => {
    img.onload = () => resolve(true);
    img.onerror = () => resolve(false);
    img.src = url;
  });
}

// Show one item; answering is enabled only once both images are on screen.
async function showItem(item, total) {
  state.current = item.id;
  el("finished").hidden = true;
  el("judge").hidden = false;
  el("item-id").textContent = item.id;
  el("item-position").textContent = `(${item.position} of ${total})`;
  el("previous-answer").textContent = item.answer ? `your earlier answer: ${LABELS[item.answer]}` : "";
  const loaded = await Promise.all([
    loadImage(el("original"), item.original),
    loadImage(el("reconstruction"), item.reconstruction),
  ]);
  el("status").textContent = loaded.every(Boolean) ? "" : "an image failed to load; you may skip this item";
}

function showFinished() {
  state.current = null;
  el("judge").hidden = true;
  el("finished").hidden = false;
  el("btn-undo-finished").focus();
}

async function goTo(progress) {
  showProgress(progress);
  if (progress.next === null) {
    showFinished();
  } else {
    await showItem(await api("GET", `/api/items/${encodeURIComponent(progress.next)}`), progress.total);
  }
}

async function run(action) {
  if (state.busy) return;
  setBusy(true);
  try {
    await action();
  } catch (error) {
    el("status").textContent = error.message;
  } finally {
    setBusy(false);
  }
}

function answer(value) {
  if (state.current === null) return;
  run(async () => {
    const result = await api("POST", "/api/answers", { item: state.current, answer: value });
    await goTo(result.progress);
  });
}

function undo() {
  run(async () => {
    let result;
    try {
      result = await api("POST", "/api/undo");
    } catch (error) {
      if (error.status === 409) {
        el("status").textContent = "nothing to undo";
        return;
      }
      throw error;
    }
    showProgress(result.progress);
    if (result.item) {
      await showItem(result.item, result.progress.total);
    } else {
      await goTo(result.progress);
    }
  });
}

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.metaKey) return;
  const key = event.key.toLowerCase();
  if (event.ctrlKey) {
    if (key === "z") {
      event.preventDefault();
      undo();
    }
    return;
  }
  if (key in KEYS) {
    event.preventDefault();
    answer(KEYS[key]);
  } else if (key === "u" || key === "backspace") {
    event.preventDefault();
    undo();
  }
});

for (const button of document.querySelectorAll("button[data-answer]")) {
  button.addEventListener("click", () => answer(button.dataset.answer));
}
el("btn-undo").addEventListener("click", undo);
el("btn-undo-finished").addEventListener("click", undo);

run(async () => {
  const session = await api("GET", "/api/session");
  el("annotator").textContent = session.annotator;
  document.title = `annotate · ${session.source} · ${session.annotator}`;
  await goTo(await api("GET", "/api/progress"));
});
