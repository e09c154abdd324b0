// nomoat's web UI: chat with streaming, knowledge-base answers with their sources, knowledge-base status.
// Talks only to this server's own API. Text from answers and documents is only ever set as textContent, never
// as HTML, so a hostile document cannot inject markup or script.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], controller: null, key: sessionStorage.getItem("nomoat-key") || "" };

// The URL `nomoat serve` prints carries its token (`/?token=...`, as Jupyter's does): keep it for this tab, then
// take it out of the address bar and history so it is not shared by copying the address.
(function takeTokenFromUrl() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (!token) return;
  state.key = token;
  sessionStorage.setItem("nomoat-key", token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
})();

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (response.status === 401) $("key-box").classList.add("shown");
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function loadStatus() {
  const list = $("kbs");
  try {
    const status = await (await api("/api/kbs")).json();
    $("model").textContent = status.model;
    list.replaceChildren();
    const mode = $("mode");
    mode.replaceChildren(new Option("the model only", "plain"));
    if (!status.data.length) list.append(el("li", "muted", "none yet: nomoat ingest PATH"));
    for (const kb of status.data) {
      const item = el("li");
      item.append(el("strong", "", kb.name), el("br"));
      item.append(el("span", "muted", `${plural(kb.documents, "document")}, ${plural(kb.chunks, "chunk")}`));
      list.append(item);
      mode.append(new Option(`knowledge base “${kb.name}”`, kb.model));
    }
    const preferred = status.data.find((kb) => kb.name === status.rag_kb) || status.data[0];
    if (preferred) mode.value = preferred.model;
  } catch (error) {
    list.replaceChildren(el("li", "muted", "unavailable: " + error.message));
  }
}

function addMessage(role, text) {
  const node = el("div", "msg " + role, text);
  $("log").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

// Server-sent events from a fetch body: yields each "data:" payload.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

function showCitations(node, extra) {
  if (extra.policy_refused) {
    node.append(el("div", "note", "Refused by this assistant's answer policy."));
  }
  if (extra.mode === "extractive") {
    node.append(el("div", "note", "Quoted from your files: the model's own answer did not match them."));
  }
  if (!extra.citations || !extra.citations.length) return;
  const list = el("ul", "citations");
  for (const c of extra.citations) {
    const item = el("li", "citation");
    const button = el("button", "", `[${c.n}] ${c.path}${c.location ? " (" + c.location + ")" : ""}`);
    button.type = "button";
    button.setAttribute("aria-expanded", "false");
    button.addEventListener("click", () => toggleSource(item, button, extra.kb, c));
    item.append(button);
    list.append(item);
  }
  node.append(list);
}

// Opening a citation shows the whole cited passage (fetched by chunk id) with the quote marked.
async function toggleSource(item, button, kb, citation) {
  const open = item.querySelector(".source");
  if (open) { open.remove(); button.setAttribute("aria-expanded", "false"); return; }
  const box = el("div", "source");
  item.append(box);
  button.setAttribute("aria-expanded", "true");
  let text = citation.quote;
  if (citation.chunk_id != null) {
    try {
      const path = `/api/kbs/${encodeURIComponent(kb)}/chunks/${encodeURIComponent(citation.chunk_id)}`;
      text = (await (await api(path)).json()).text;
    } catch (_) { /* the quote alone still says what was cited */ }
  }
  // A location ending "(OCR)" ("page 3, scanned (OCR)"): the passage was read from a picture, not typed text.
  if ((citation.location || "").endsWith("(OCR)")) {
    box.append(el("div", "note ocr", "Read from a picture by OCR: some words may be misread."));
  }
  const at = text.indexOf(citation.quote);
  if (at < 0) { box.append(text); return; }
  box.append(text.slice(0, at), el("mark", "", citation.quote), text.slice(at + citation.quote.length));
}

async function send(message) {
  const mode = $("mode").value;
  const model = mode === "plain" ? $("model").textContent || "default" : mode;
  state.history.push({ role: "user", content: message });
  addMessage("user", message);
  const node = addMessage("assistant", "");
  node.setAttribute("aria-busy", "true");
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  let answer = "";
  let refused = false;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      signal: state.controller.signal,
      body: JSON.stringify({ model, messages: state.history, stream: true }),
    });
    const text = el("span", "text");
    node.append(text);
    for await (const data of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] ? chunk.choices[0].delta.content : "";
      if (delta) { answer += delta; text.textContent = answer; node.scrollIntoView({ block: "end" }); }
      if (chunk.nomoat) showCitations(node, chunk.nomoat);
      if (chunk.nomoat && chunk.nomoat.policy_refused) refused = true;
    }
    // A refused question stays out of the history: sent again, it would have every later turn refused too.
    if (refused) state.history.pop();
    else state.history.push({ role: "assistant", content: answer });
  } catch (error) {
    state.history.pop();  // the question goes unanswered: do not send it again as history
    if (error.name === "AbortError") node.append(el("div", "note", "(stopped)"));
    else { node.className = "msg error"; node.textContent = "Error: " + error.message; }
  } finally {
    node.removeAttribute("aria-busy");
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const message = $("message").value.trim();
  if (!message || state.controller) return;
  $("message").value = "";
  send(message);
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("save-key").addEventListener("click", () => {
  state.key = $("key").value.trim();
  sessionStorage.setItem("nomoat-key", state.key);
  $("key-box").classList.remove("shown");
  loadStatus();
});
loadStatus();
