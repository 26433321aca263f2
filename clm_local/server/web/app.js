// The page's logic: chat and compare, both streaming from /v1/chat/completions.
// Plain browser JavaScript, no build step and nothing fetched from elsewhere.
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
