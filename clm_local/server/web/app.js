// The page's logic: chat and compare, both streaming from /v1/chat/completions, and teach
// (label pairs of base-model answers, train a dial on them, switch the served model to it).
// Plain browser JavaScript, no build step and nothing fetched from elsewhere. Model text is
// only ever written with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];  // {role, content} of the chat view
let chatAbort = null;

function settings() {
  return {
    alpha: parseFloat($("alpha").value),
    mode: $("mode").value,
    temperature: parseFloat($("temperature").value) || 0,
    max_tokens: parseInt($("max-tokens").value, 10) || 200,
  };
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// POST a streamed chat completion; onPiece(text, chunk) for every piece. Resolves with the
// finish reason; rejects with the server's error message.
async function streamChat(body, onPiece, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), signal,
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return finish;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) onPiece(choice.delta.content, chunk);
      else onPiece("", chunk);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "message " + role;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = role === "user" ? "you" : "assistant";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  box.append(meta, body);
  $("messages").append(box);
  return box;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || chatAbort) return;
  showError("");
  $("prompt").value = "";
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const box = addMessage("assistant", "");
  const body = box.querySelector(".text");
  const meta = box.querySelector(".meta");
  chatAbort = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  try {
    box.dataset.pieces = "0";  // how many streamed pieces arrived (the test checks it streamed)
    const finish = await streamChat({ ...settings(), messages: conversation }, (piece, chunk) => {
      body.textContent += piece;
      if (piece) box.dataset.pieces = String(Number(box.dataset.pieces) + 1);
      meta.textContent = `assistant · alpha ${chunk.alpha} · ${chunk.mode}`;
    }, chatAbort.signal);
    box.dataset.finish = finish || "";
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
    box.dataset.finish = "error";
  } finally {
    conversation.push({ role: "assistant", content: body.textContent });
    box.dataset.done = "true";
    chatAbort = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

async function runCompare(event) {
  event.preventDefault();
  const prompt = $("compare-prompt").value.trim();
  const alphas = $("compare-alphas").value.split(",").map((a) => a.trim()).filter(Boolean).map(Number);
  if (!prompt || !alphas.length) return;
  if (alphas.some((a) => !Number.isFinite(a))) { showError("alphas: numbers separated by commas"); return; }
  showError("");
  const results = $("compare-results");
  results.replaceChildren();
  $("compare-run").disabled = true;
  const base = settings();
  const runs = alphas.map((alpha) => {
    const column = document.createElement("div");
    column.className = "column";
    column.dataset.alpha = String(alpha);
    const title = document.createElement("h2");
    title.textContent = `alpha ${alpha}`;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = "waiting…";
    const answer = document.createElement("div");
    answer.className = "answer";
    column.append(title, meta, answer);
    results.append(column);
    const started = performance.now();
    return streamChat({ ...base, alpha, messages: [{ role: "user", content: prompt }] }, (piece, chunk) => {
      answer.textContent += piece;
      meta.textContent = `${chunk.mode} mode · ${((performance.now() - started) / 1000).toFixed(1)} s`;
    }).then((finish) => { column.dataset.finish = finish || ""; })
      .catch((error) => { answer.textContent += " [" + error.message + "]"; column.dataset.finish = "error"; })
      .finally(() => { column.dataset.done = "true"; });
  });
  await Promise.allSettled(runs);
  $("compare-run").disabled = false;
}

function switchView(button) {
  document.querySelectorAll(".tab").forEach((tab) => {
    tab.classList.toggle("active", tab === button);
    $(tab.dataset.view).hidden = tab !== button;
  });
  document.body.dataset.view = button.dataset.view;
  if (button.dataset.view === "teach-view") refreshTeach();
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) { $("model-name").textContent = "(API key needed to list the model)"; return; }
    const model = (await response.json()).data[0];
    $("model-name").textContent = model.id;
    if (model.clm) {
      $("alpha").value = model.clm.alpha_default;
      $("alpha-value").textContent = model.clm.alpha_default;
      $("mode").value = model.clm.mode_default;
    }
  } catch (error) {
    $("model-name").textContent = "server unreachable";
  }
}

$("alpha").addEventListener("input", () => { $("alpha-value").textContent = $("alpha").value; });
$("chat-form").addEventListener("submit", sendChat);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) sendChat(event);
});
$("stop").addEventListener("click", () => chatAbort && chatAbort.abort());
$("new-chat").addEventListener("click", () => { conversation.length = 0; $("messages").replaceChildren(); });
$("compare-form").addEventListener("submit", runCompare);
$("api-key").addEventListener("change", loadModel);
document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => switchView(tab)));
loadModel();

// -- Teach ---------------------------------------------------------------------------------------
// Both answers come from the base model (alpha 0, DPO's reference policy) at temperature 0.9
// with two seeds; a pick is saved at once, ties and skips save nothing.

const TEACH_TEMPERATURE = 0.9;
const teach = {
  prompts: [], next: 0,  // a loaded prompt list and the index of the next prompt to ask
  pair: null,            // {prompt, answers: [a, b], ready, aborts}
  posting: false, count: 0, needed: null, state: "idle", polling: false,
  preferences: {},       // the last GET /v1/clm/preferences, updated by each pick's reply
};

// One call to the API: the JSON reply, or an Error with the server's one-line message.
async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (_) { /* no JSON body */ }
  if (!response.ok) {
    const message = data && data.error && data.error.message;
    const error = new Error(message || `${path}: ${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function teachError(message) {
  const box = $("teach-error");
  box.textContent = message || "";
  box.hidden = !message;
}

function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "…";
  const s = Math.max(0, Math.round(value));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function setChoices() {
  const pair = teach.pair;
  const pickable = Boolean(pair && pair.ready && !teach.posting);
  $("teach-pick-a").disabled = !pickable;
  $("teach-pick-b").disabled = !pickable;
  $("teach-tie").disabled = !pair || teach.posting;
  $("teach-skip").disabled = !pair || teach.posting;
  $("teach-pair").dataset.ready = pickable ? "true" : "false";
}

function clearPair() {
  if (teach.pair) teach.pair.aborts.forEach((abort) => abort.abort());
  teach.pair = null;
  for (const column of [$("teach-a"), $("teach-b")]) {
    column.querySelector(".answer").textContent = "";
    column.querySelector(".meta").textContent = "";
    delete column.dataset.done;
    delete column.dataset.finish;
  }
  setChoices();
}

// Two answers to one prompt, streamed side by side; A and B become pickable when both are whole.
async function askTwice(prompt) {
  clearPair();
  teachError("");
  const pair = { prompt, answers: ["", ""], ready: false, aborts: [], failed: false };
  teach.pair = pair;
  setChoices();
  const seed = Math.floor(Math.random() * 1e9);
  const maxTokens = settings().max_tokens;
  const runs = [$("teach-a"), $("teach-b")].map((column, i) => {
    const answer = column.querySelector(".answer");
    const meta = column.querySelector(".meta");
    meta.textContent = `seed ${seed + i} · waiting…`;
    const abort = new AbortController();
    pair.aborts.push(abort);
    const body = {
      alpha: 0, temperature: TEACH_TEMPERATURE, seed: seed + i, max_tokens: maxTokens,
      messages: [{ role: "user", content: prompt }],
    };
    return streamChat(body, (piece) => {
      pair.answers[i] += piece;
      answer.textContent = pair.answers[i];
    }, abort.signal).then((finish) => {
      column.dataset.finish = finish || "";
      meta.textContent = `seed ${seed + i} · ` + (finish === "length" ? "cut at max tokens" : "whole");
    }).catch((error) => {
      column.dataset.finish = "error";
      if (error.name !== "AbortError" && teach.pair === pair) { pair.failed = true; teachError(error.message); }
    }).finally(() => { column.dataset.done = "true"; });
  });
  await Promise.allSettled(runs);
  if (teach.pair !== pair) return;  // skipped or replaced meanwhile
  const [a, b] = pair.answers;
  pair.ready = !pair.failed && Boolean(a.trim()) && Boolean(b.trim()) && a !== b;
  if (!pair.failed && a === b) teachError("the two answers are the same: tie or skip");
  setChoices();
}

function showCount(reply) {
  const state = { ...teach.preferences, ...reply };  // a POST's reply has only count and needed
  teach.preferences = state;
  teach.count = state.count;
  teach.needed = state.needed;
  const box = $("teach-count");
  box.dataset.count = String(state.count);
  const noun = state.count === 1 ? "pair" : "pairs";
  const notes = [];
  if (state.count >= state.needed) notes.push("ready to train");
  if (state.other_base) notes.push(`${state.other_base} pairs of another base model not counted`);
  if (state.bad_lines && state.bad_lines.length) {
    notes.push(`${state.bad_lines.length} unusable lines skipped (first: line ${state.bad_lines[0].line}, ` +
      `${state.bad_lines[0].reason})`);
  }
  box.textContent = `${state.count} ${noun} collected, training needs ${state.needed}` +
    notes.map((note) => " · " + note).join("");
  updateTrainButtons();
}

function updateTrainButtons() {
  const running = teach.state === "running";
  $("teach-train").disabled = running || teach.needed === null || teach.count < teach.needed;
  $("teach-cancel").disabled = !running;
}

// After a pick, a tie or a skip: the next prompt of the list, or a fresh prompt to type.
function moveOn() {
  clearPair();
  const n = teach.prompts.length;
  if (teach.next < n) {
    const prompt = teach.prompts[teach.next++];
    $("teach-list").textContent = `prompt ${teach.next} of ${n}`;
    $("teach-prompt").value = prompt;
    askTwice(prompt);
  } else {
    if (n) $("teach-list").textContent = `all ${n} prompts of the list done`;
    $("teach-prompt").focus();
    $("teach-prompt").select();
  }
}

async function pick(choice) {  // "a", "b", "tie" or "skip"
  const pair = teach.pair;
  if (!pair || teach.posting) return;
  if (choice === "a" || choice === "b") {
    if (!pair.ready) return;
    const [chosen, rejected] = choice === "a" ? pair.answers : [pair.answers[1], pair.answers[0]];
    teach.posting = true;
    setChoices();
    try {
      showCount(await api("POST", "/v1/clm/preferences", { prompt: pair.prompt, chosen, rejected }));
      teachError("");
    } catch (error) {
      teachError(error.message);  // the pair stays on screen: pick again to retry
      return;
    } finally {
      teach.posting = false;
      setChoices();
    }
  }
  moveOn();
}

function parsePrompts(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) {  // a JSON array of prompts
    try { return JSON.parse(trimmed).map(promptOf).filter(Boolean); } catch (_) { /* lines below */ }
  }
  const prompts = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line) continue;
    if (line.startsWith("{") || line.startsWith("\"")) {
      try { const prompt = promptOf(JSON.parse(line)); if (prompt) prompts.push(prompt); continue; }
      catch (_) { /* not JSON: the line is the prompt */ }
    }
    prompts.push(line);
  }
  return prompts;
}

// A prompt from a JSON value: a string, {"prompt": string}, or chat messages (the last user turn).
function promptOf(value) {
  if (value && typeof value === "object" && !Array.isArray(value)) value = value.prompt ?? value.messages;
  if (Array.isArray(value)) {
    const users = value.filter((m) => m && m.role === "user" && typeof m.content === "string");
    value = users.length ? users[users.length - 1].content : null;
  }
  return typeof value === "string" && value.trim() ? value.trim() : null;
}

async function loadPromptFile() {
  const file = $("teach-file").files[0];
  $("teach-file").blur();  // the shortcuts stay off while an input has the focus
  if (!file) return;
  const prompts = parsePrompts(await file.text());
  if (!prompts.length) { teachError(`${file.name}: no prompts in it`); return; }
  teachError("");
  teach.prompts = prompts;
  teach.next = 0;
  moveOn();
}

function showTraining(status) {
  teach.state = status.state;
  const line = $("teach-progress");
  const bar = $("teach-bar");
  line.dataset.state = status.state;
  const running = status.state === "running";
  bar.hidden = !(running && status.steps);
  if (status.steps) { bar.max = status.steps; bar.value = status.step || 0; }
  if (running) {
    const parts = [`training: ${status.stage || "starting"}`];
    if (status.steps) parts.push(`step ${status.step || 0}/${status.steps}`);
    if (status.loss !== null && status.loss !== undefined) parts.push(`loss ${status.loss.toFixed(3)}`);
    if (status.reward_accuracy !== null && status.reward_accuracy !== undefined) {
      parts.push(`reward accuracy ${(100 * status.reward_accuracy).toFixed(0)}%`);
    }
    parts.push(`ETA ${seconds(status.eta_seconds)}`);
    line.textContent = parts.join(" · ");
  } else if (status.state === "done") {
    line.textContent = `trained: dial ${status.dial || "?"}` + (status.message ? ` (${status.message})` : "");
  } else if (status.state === "failed") {
    line.textContent = "training failed";
    teachError(status.message || "training failed");
  } else if (status.state === "cancelled") {
    line.textContent = "training cancelled";
  } else {
    line.textContent = "";
  }
  updateTrainButtons();
}

async function pollTraining() {
  if (teach.polling) return;
  teach.polling = true;
  try {
    for (;;) {
      const status = await api("GET", "/v1/clm/train");
      showTraining(status);
      if (status.state !== "running") {
        if (status.state === "done") { refreshDials(); refreshCount(); }
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  } catch (error) {
    teachError(error.message);
  } finally {
    teach.polling = false;
  }
}

async function startTraining() {
  teachError("");
  $("teach-train").disabled = true;
  try {
    showTraining({ state: "running", stage: "starting", ...await api("POST", "/v1/clm/train", {}) });
  } catch (error) {
    teachError(error.message);
    updateTrainButtons();
    return;
  }
  pollTraining();
}

async function cancelTraining() {
  $("teach-cancel").disabled = true;
  try {
    const status = await api("DELETE", "/v1/clm/train");
    if (status && status.state) showTraining(status);
  } catch (error) {
    teachError(error.message);
    updateTrainButtons();
  }
}

function describeTime(created) {
  if (typeof created === "number") return new Date(created * 1000).toLocaleString();
  const date = created ? new Date(created) : null;
  return date && !Number.isNaN(date.getTime()) ? date.toLocaleString() : String(created || "");
}

// The held-out pairs' reward accuracy: whether P learned the preference, not only the pairs.
function describeHeldOut(held) {
  if (!held || typeof held !== "object") return "";
  if (typeof held.reward_accuracy !== "number") return "";
  const pairs = typeof held.pairs === "number" ? ` on ${held.pairs} pairs never trained on` : "";
  return `held-out accuracy ${(100 * held.reward_accuracy).toFixed(0)}%${pairs}`;
}

// The dials of this base, and first the model the server started with (name null); the one
// being served is marked and its button disabled.
async function refreshDials() {
  let data;
  try { data = await api("GET", "/v1/clm/dials"); } catch (error) { teachError(error.message); return; }
  const list = $("teach-dials");
  list.replaceChildren();
  const entries = [{ name: null, label: "the model served at start", details: "" }];
  for (const dial of data.dials) {
    const details = [`${dial.pairs} pairs`, describeTime(dial.created), describeHeldOut(dial.held_out)];
    entries.push({ name: dial.name, label: dial.name, details: details.filter(Boolean).join(" · ") });
  }
  for (const entry of entries) {
    const active = entry.name === (data.active ?? null);
    const item = document.createElement("li");
    item.className = (entry.name === null ? "start" : "dial") + (active ? " active" : "");
    if (entry.name !== null) item.dataset.name = entry.name;
    const name = document.createElement("strong");
    name.textContent = entry.label;
    const details = document.createElement("span");
    details.className = "muted";
    details.textContent = entry.details;
    const use = document.createElement("button");
    use.type = "button";
    use.className = "use";
    use.textContent = active ? "serving" : "use";
    use.disabled = active;
    use.addEventListener("click", () => useDial(entry.name, use));
    item.append(name, " ", details, " ", use);
    list.append(item);
  }
  if (!data.dials.length) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "no dial yet: collect pairs and press Train";
    list.append(empty);
  }
}

async function useDial(name, button) {
  teachError("");
  document.querySelectorAll("#teach-dials button.use").forEach((b) => { b.disabled = true; });
  button.textContent = "switching…";
  try {
    await api("POST", "/v1/clm/dials/active", { name });
  } catch (error) {
    teachError(error.message);
  }
  await refreshDials();
  loadModel();
}

async function refreshCount() {
  try { showCount(await api("GET", "/v1/clm/preferences")); } catch (error) { teachError(error.message); }
}

async function refreshTeach() {
  refreshCount();
  refreshDials();
  try {
    const status = await api("GET", "/v1/clm/train");
    showTraining(status);
    if (status.state === "running") pollTraining();
  } catch (error) {
    teachError(error.message);
  }
}

function submitTeachPrompt(event) {
  event.preventDefault();
  const prompt = $("teach-prompt").value.trim();
  if (!prompt) return;
  $("teach-prompt").blur();  // so that 1/2/T/S work at once
  askTwice(prompt);
}

// 1/← A, 2/→ B, T/= tie, S skip: only in the teach view, never while typing in a field.
const TEACH_KEYS = { "1": "a", ArrowLeft: "a", "2": "b", ArrowRight: "b", t: "tie", T: "tie", "=": "tie",
  s: "skip", S: "skip" };
document.addEventListener("keydown", (event) => {
  if ($("teach-view").hidden || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
  const target = event.target;
  if (target instanceof Element && (target.closest("input, textarea, select") || target.isContentEditable)) return;
  const choice = TEACH_KEYS[event.key];
  if (!choice) return;
  event.preventDefault();
  pick(choice);
});
$("teach-form").addEventListener("submit", submitTeachPrompt);
$("teach-prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) submitTeachPrompt(event);
});
$("teach-file").addEventListener("change", loadPromptFile);
$("teach-pick-a").addEventListener("click", () => pick("a"));
$("teach-pick-b").addEventListener("click", () => pick("b"));
$("teach-tie").addEventListener("click", () => pick("tie"));
$("teach-skip").addEventListener("click", () => pick("skip"));
$("teach-train").addEventListener("click", startTraining);
$("teach-cancel").addEventListener("click", cancelTraining);
$("teach-help").querySelector("#teach-temperature").textContent = String(TEACH_TEMPERATURE);
