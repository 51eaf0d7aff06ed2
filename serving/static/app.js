// ragtune playground: plain JavaScript against the server's own HTTP API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],          // /v1/models cards
  profiles: {},        // name -> profile settings
  collections: [],     // names
  history: [],         // earlier turns, sent when "remember" is on
  abort: null,         // AbortController of the answer being streamed
  docOffset: 0,
};
const DOC_PAGE = 50;

// -- HTTP ----------------------------------------------------------------------------------
function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    let message = err.message || ("HTTP " + status);
    if (status === 401 || status === 403) message += " (set the API key at the top right)";
    super(message);
    this.status = status;
    this.param = err.param;
  }
}

async function api(method, path, body, isForm) {
  const init = { method, headers: headers(isForm || body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = isForm ? body : JSON.stringify(body);
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: { message: text } }; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function toast(message, isError) {
  const t = $("toast");
  t.textContent = message;
  t.className = "toast" + (isError ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, isError ? 7000 : 3000);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function snippet(text, n) {
  const s = (text || "").replace(/\s+/g, " ").trim();
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

// -- models, collections, adapters, profiles -------------------------------------------------
async function loadModels() {
  const [models, profiles] = await Promise.all([api("GET", "/v1/models"), api("GET", "/v1/profiles")]);
  state.models = models.data;
  state.profiles = Object.fromEntries(profiles.data.map((p) => [p.name, p]));
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  const kinds = [["auto", "Automatic"], ["profile", "Profiles"], ["adapter", "Adapters"], ["base", "Base model"]];
  for (const [kind, label] of kinds) {
    const cards = state.models.filter((m) => m.kind === kind);
    if (!cards.length) continue;
    const group = el("optgroup", { label });
    for (const m of cards) group.append(el("option", { value: m.id, "data-kind": kind }, m.id));
    select.append(group);
  }
  const ids = state.models.map((m) => m.id);
  select.value = ids.includes(previous) ? previous : (ids.includes("demo") ? "demo" : ids[0]);
  onModelChange();
  renderProfiles(profiles.data);
  fillSelect($("profile-adapter"), ["", ...state.models.filter((m) => m.kind === "adapter").map((m) => m.id)],
    (v) => v || "(base model)");
}

function fillSelect(select, values, label) {
  const previous = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, label ? label(v) : v)));
  if (values.includes(previous)) select.value = previous;
}

async function loadCollections() {
  const data = await api("GET", "/v1/collections");
  state.collections = data.data.map((c) => c.name);
  state.collectionStats = Object.fromEntries(data.data.map((c) => [c.name, c]));
  fillSelect($("doc-collection"), state.collections);
  fillSelect($("profile-collection"), ["", ...state.collections], (v) => v || "(none)");
  fillRagCollections();
  showDocCount();
}

function fillRagCollections() {
  const profile = state.profiles[$("model").value];
  const values = [...state.collections];
  const labels = {};
  if (profile && profile.collection) {
    values.unshift("");
    labels[""] = "profile's: " + profile.collection;
  }
  fillSelect($("rag-collection"), values, (v) => labels[v] || v);
}

// A profile's grounding calibration, under the names the API uses; shown only where it is set.
const CALIBRATION = ["min_similarity", "quotes", "quote_lead", "quote_window", "model_abstains"];

function showCalibration(profile) {
  const set = CALIBRATION.filter((k) => profile && profile[k] !== null && profile[k] !== undefined);
  $("rag-calibration").hidden = set.length === 0;
  $("rag-calibration").textContent = set.length
    ? "profile's grounding calibration: " + set.map((k) => k + " " + profile[k]).join(", ")
    : "";
}

function onModelChange() {
  const name = $("model").value;
  const card = state.models.find((m) => m.id === name);
  const profile = state.profiles[name];
  fillRagCollections();
  showCalibration(profile);
  let info = "";
  if (profile) {
    $("rag-collection").value = profile.collection ? "" : $("rag-collection").value;
    $("rag-topk").value = profile.top_k;
    $("rag-mode").value = profile.mode;
    $("rag-grounding").value = profile.grounding || "free";
    info = "profile: " + (profile.adapter ? "adapter " + profile.adapter : "base model") +
      (profile.collection ? ", collection " + profile.collection : "") +
      (profile.system_prompt ? ", a system prompt" : "");
  } else if (card && card.kind === "auto") {
    info = "the server chooses a profile for each question, with that profile's retrieval settings, " +
      "or falls back when none clearly fits";
  } else if (card) {
    info = card.kind === "adapter" ? "LoRA adapter on " + card.parent : "the base model, no adapter";
  }
  $("model-info").textContent = info;
}

async function loadAdapters() {
  const data = await api("GET", "/v1/adapters");
  const list = $("adapter-list");
  list.replaceChildren();
  if (!data.data.length) list.append(el("li", { class: "empty-item" }, "no adapter loaded"));
  for (const a of data.data) {
    // only admin keys see an adapter's folder; others see its fingerprint
    const where = a.path ? a.path.split("/").slice(-1)[0] : a.fingerprint.slice(0, 12);
    list.append(el("li", { "data-adapter": a.name },
      el("span", { class: "title" }, a.name),
      el("span", { class: "sub" }, "rank " + a.rank + " · " + where + " · v" + a.version),
      el("button", { type: "button", class: "danger", onclick: () => unloadAdapter(a.name) }, "Unload")));
  }
}

function renderProfiles(profiles) {
  const list = $("profile-list");
  list.replaceChildren();
  if (!profiles.length) list.append(el("li", { class: "empty-item" }, "no profile"));
  for (const p of profiles) {
    list.append(el("li", { "data-profile": p.name },
      el("span", { class: "title" }, p.name),
      el("span", { class: "sub" }, (p.adapter || "base") + " · " + (p.collection || "no collection") +
        " · top_k " + p.top_k + " · " + p.mode),
      el("button", { type: "button", class: "danger", onclick: () => deleteProfile(p.name) }, "Delete")));
  }
}

async function unloadAdapter(name) {
  try {
    await api("DELETE", "/v1/adapters/" + encodeURIComponent(name));
    toast("unloaded adapter " + name);
  } catch (e) { toast(e.message, true); }
  await refreshModelsAndAdapters();
}

async function deleteProfile(name) {
  try {
    await api("DELETE", "/v1/profiles/" + encodeURIComponent(name));
    toast("deleted profile " + name);
  } catch (e) { toast(e.message, true); }
  await refreshModelsAndAdapters();
}

async function refreshModelsAndAdapters() {
  await Promise.all([loadModels(), loadAdapters()]).catch((e) => toast(e.message, true));
}

// -- chat ----------------------------------------------------------------------------------
function ragOptions() {
  if (!$("rag-on").checked) return false;
  const rag = {
    top_k: Number($("rag-topk").value) || 3,
    mode: $("rag-mode").value,
    grounding: $("rag-grounding").value,
  };
  const collection = $("rag-collection").value;
  if (collection) rag.collection = collection;
  return rag;
}

function routeLabel(route) {
  // Where `model: auto` sent the question, with the best score: "auto → demo (0.61)".
  const best = Object.values(route.scores || {})[0];
  const score = best === undefined ? "" : " (" + best.toFixed(2) + ")";
  return "auto → " + route.chosen + (route.fallback ? ", no profile fitted" : "") + score;
}

function renderAnswerText(node, text) {
  // Escape, then mark citations like [2] so they can be matched with their source.
  node.replaceChildren();
  const parts = text.split(/(\[\d+\])/);
  for (const part of parts) {
    const m = /^\[(\d+)\]$/.exec(part);
    if (m) node.append(el("span", { class: "cite", "data-n": m[1] }, part));
    else if (part) node.append(document.createTextNode(part));
  }
}

function renderSources(container, sources) {
  container.replaceChildren(el("div", { class: "label" }, "sources"));
  for (const s of sources) {
    container.append(el("div", { class: "source", "data-n": String(s.index), "data-document": s.document_id },
      el("div", { class: "head" },
        el("span", { class: "n" }, "[" + s.index + "]"),
        el("span", { class: "title", title: s.title || s.document_id }, s.title || s.document_id),
        el("span", { class: "score", title: "retrieval score" }, s.score.toFixed(4))),
      el("div", { class: "doc", title: s.source || "" }, s.document_id + (s.source ? " · " + s.source : "")),
      el("p", { class: "snippet" }, snippet(s.text, 220))));
  }
}

function markCited(turn, text) {
  const cited = new Set([...text.matchAll(/\[(\d+)\]/g)].map((m) => m[1]));
  for (const card of turn.querySelectorAll(".source")) {
    const on = cited.has(card.dataset.n);
    card.classList.toggle("cited", on);
    const tag = card.querySelector(".cited-tag");
    if (on && !tag) card.querySelector(".head").append(el("span", { class: "cited-tag" }, "cited"));
    if (!on && tag) tag.remove();
  }
}

async function ask(question) {
  $("empty")?.remove();
  const sourcesBox = el("div", { class: "sources" });
  const textNode = el("div", { class: "text" });
  const meta = el("div", { class: "meta" }, "waiting for the first token…");
  const answer = el("div", { class: "answer streaming" }, textNode, meta);
  const row = el("div", { class: "answer-row no-sources" }, answer, sourcesBox);
  const turn = el("div", { class: "turn" }, el("div", { class: "question" }, question), row);
  $("messages").append(turn);
  turn.scrollIntoView({ block: "end" });

  const model = $("model").value;
  const messages = $("remember").checked ? [...state.history] : [];
  messages.push({ role: "user", content: question });
  const body = {
    model, messages, stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) || 160,
    // auto: the chosen profile's own retrieval settings (unless retrieval is switched off).
    rag: model === "auto" ? ($("rag-on").checked ? undefined : false) : ragOptions(),
  };
  state.abort = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstAt = null;
  let text = "";
  let usage = null;
  let finish = null;
  let route = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body), signal: state.abort.signal,
    });
    if (!resp.ok) {
      let data = null;
      try { data = await resp.json(); } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, data);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of raw.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const payload = line.slice(5).trim();
          if (payload === "[DONE]") continue;
          const event = JSON.parse(payload);
          if (event.error) throw new ApiError(500, event);
          if (event.sources) {
            renderSources(sourcesBox, event.sources);
            row.classList.toggle("no-sources", event.sources.length === 0);
          }
          if (event.usage) usage = event.usage;
          if (event.ragtune && event.ragtune.route) {
            route = event.ragtune.route;
            turn.dataset.route = route.chosen;
            meta.textContent = routeLabel(route) + " · waiting for the first token…";
          }
          for (const choice of event.choices || []) {
            if (choice.delta && choice.delta.content) {
              if (firstAt === null) firstAt = performance.now();
              text += choice.delta.content;
              turn.dataset.deltas = String(Number(turn.dataset.deltas || 0) + 1);
              renderAnswerText(textNode, text);
              markCited(turn, text);
              meta.textContent = "streaming…";
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
      turn.scrollIntoView({ block: "end" });
    }
    const total = performance.now() - started;
    const parts = [route ? routeLabel(route) : model];
    if (firstAt !== null) parts.push("first token " + Math.round(firstAt - started) + " ms");
    parts.push("total " + (total / 1000).toFixed(1) + " s");
    if (usage) parts.push(usage.prompt_tokens + " prompt + " + usage.completion_tokens + " answer tokens");
    if (finish === "length") parts.push("stopped at max tokens");
    meta.textContent = parts.join(" · ");
    state.history.push({ role: "user", content: question }, { role: "assistant", content: text });
  } catch (e) {
    if (e.name === "AbortError") {
      meta.textContent = "stopped";
    } else {
      answer.append(el("div", { class: "error" }, e.message));
      meta.textContent = e.param ? "field: " + e.param : "";
    }
  } finally {
    answer.classList.remove("streaming");
    answer.dataset.done = "1";
    turn.dataset.done = "1";
    state.abort = null;
    setBusy(false);
    refreshMetrics();
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

// -- documents -----------------------------------------------------------------------------
function currentCollection() { return $("doc-collection").value; }
function collectionPath(suffix) { return "/v1/collections/" + encodeURIComponent(currentCollection()) + suffix; }

async function showDocCount() {
  const name = currentCollection();
  if (!name) { $("doc-count").textContent = ""; return; }
  try {
    const s = await api("GET", collectionPath(""));
    $("doc-count").textContent = s.documents + " docs · " + s.chunks + " chunks";
  } catch (e) { $("doc-count").textContent = ""; }
}

async function loadDocuments(append) {
  const list = $("doc-list");
  const name = currentCollection();
  if (!append) { state.docOffset = 0; list.replaceChildren(); }
  $("search-clear").hidden = true;
  if (!name) {
    list.append(el("li", { class: "empty-item" }, "no collection yet: create one above"));
    $("doc-more").hidden = true;
    return;
  }
  const data = await api("GET", collectionPath("/documents?offset=" + state.docOffset + "&limit=" + DOC_PAGE));
  for (const d of data.data) list.append(docItem(d.id, d.title, d.source, d.text));
  if (!append && !data.data.length) list.append(el("li", { class: "empty-item" }, "no documents"));
  state.docOffset += data.data.length;
  $("doc-more").hidden = data.data.length < DOC_PAGE;
}

function docItem(id, title, source, text, score) {
  return el("li", { "data-document": id },
    el("span", { class: "title", title: title || id }, title || id),
    el("span", { class: "sub" }, id + (source ? " · " + source : "") + (score !== undefined ? " · score " + score.toFixed(4) : "")),
    el("button", { type: "button", class: "danger", onclick: () => deleteDocument(id) }, "Delete"),
    el("p", { class: "snippet" }, snippet(text, 160)));
}

async function deleteDocument(id) {
  try {
    await api("DELETE", collectionPath("/documents/" + encodeURIComponent(id)));
    toast("deleted " + id);
  } catch (e) { toast(e.message, true); }
  await loadDocuments(false).catch((e) => toast(e.message, true));
  showDocCount();
}

async function searchDocuments(query) {
  const list = $("doc-list");
  const data = await api("POST", collectionPath("/search"), { query, top_k: 10, mode: $("rag-mode").value });
  list.replaceChildren();
  if (!data.data.length) list.append(el("li", { class: "empty-item" }, "no hits"));
  for (const h of data.data) list.append(docItem(h.document_id, h.title, h.source, h.text, h.score));
  $("doc-more").hidden = true;
  $("search-clear").hidden = false;
}

function slug(text) {
  return (text || "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60);
}

// -- metrics ---------------------------------------------------------------------------------
function parseMetrics(text) {
  // Prometheus text format: name{labels} value
  const rows = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    rows.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return rows;
}

function quantile(rows, name, q) {
  // Like PromQL's histogram_quantile: linear inside the bucket, summed over label sets.
  const buckets = {};
  for (const r of rows) {
    if (r.name !== name + "_bucket") continue;
    const le = r.labels.le === "+Inf" ? Infinity : Number(r.labels.le);
    buckets[le] = (buckets[le] || 0) + r.value;
  }
  const bounds = Object.keys(buckets).map(Number).sort((a, b) => a - b);
  const total = buckets[Infinity] || 0;
  if (!total) return null;
  const rank = q * total;
  let prevBound = 0, prevCount = 0;
  for (const b of bounds) {
    if (buckets[b] >= rank) {
      if (b === Infinity) return { value: prevBound, over: true };
      const inBucket = buckets[b] - prevCount;
      return { value: prevBound + (b - prevBound) * (inBucket ? (rank - prevCount) / inBucket : 1), over: false };
    }
    prevBound = b; prevCount = buckets[b];
  }
  return null;
}

function ms(result) {
  if (!result) return "–";
  const v = result.value * 1000;
  const shown = v >= 100 ? Math.round(v) : v.toFixed(1);
  return (result.over ? "> " : "≈ ") + shown + " ms";
}

async function refreshMetrics() {
  try {
    const resp = await fetch("/metrics", { headers: headers() });
    if (!resp.ok) return;
    const rows = parseMetrics(await resp.text());
    const requests = rows.filter((r) => r.name === "ragtune_model_requests_total").reduce((a, r) => a + r.value, 0);
    $("m-requests").textContent = String(requests);
    $("m-ttft").textContent = ms(quantile(rows, "ragtune_time_to_first_token_seconds", 0.5));
    $("m-retrieval").textContent = ms(quantile(rows, "ragtune_retrieval_seconds", 0.5));
  } catch (_) { /* the strip is best effort */ }
}

async function refreshHealth() {
  const h = $("health");
  try {
    const resp = await fetch("/health", { headers: headers() });
    h.textContent = resp.ok ? "engine ok" : "engine down";
    h.className = "health " + (resp.ok ? "ok" : "bad");
  } catch (_) {
    h.textContent = "server unreachable";
    h.className = "health bad";
  }
}

// -- wiring ----------------------------------------------------------------------------------
async function refreshAll() {
  try {
    await loadCollections();
    await loadModels();
    await Promise.all([loadAdapters(), loadDocuments(false)]);
  } catch (e) {
    toast(e.message, true);
  }
  refreshMetrics();
  refreshHealth();
}

function wire() {
  const key = $("api-key");
  key.value = localStorage.getItem("ragtune-api-key") || "";
  key.addEventListener("change", () => { localStorage.setItem("ragtune-api-key", key.value.trim()); refreshAll(); });
  $("key-form").addEventListener("submit", (ev) => { ev.preventDefault(); key.blur(); });

  $("model").addEventListener("change", onModelChange);
  $("ask-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("question").value.trim();
    if (!q || state.abort) return;
    $("question").value = "";
    ask(q);
  });
  $("question").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("ask-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("new-chat").addEventListener("click", () => {
    state.history = [];
    $("messages").replaceChildren();
  });
  $("messages").addEventListener("mouseover", (ev) => {
    const cite = ev.target.closest(".cite");
    document.querySelectorAll(".source.hover").forEach((s) => s.classList.remove("hover"));
    if (!cite) return;
    const card = cite.closest(".turn").querySelector('.source[data-n="' + cite.dataset.n + '"]');
    if (card) card.classList.add("hover");
  });

  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      $("tab-documents").hidden = tab.dataset.tab !== "documents";
      $("tab-adapters").hidden = tab.dataset.tab !== "adapters";
    });
  }

  $("doc-collection").addEventListener("change", () => {
    loadDocuments(false).catch((e) => toast(e.message, true));
    showDocCount();
  });
  $("doc-more").addEventListener("click", () => loadDocuments(true).catch((e) => toast(e.message, true)));
  $("new-collection-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("new-collection").value.trim();
    if (!name) return;
    try {
      await api("POST", "/v1/collections", { name });
      $("new-collection").value = "";
      await loadCollections();
      $("doc-collection").value = name;
      await loadDocuments(false);
      showDocCount();
      toast("created collection " + name);
    } catch (e) { toast(e.message, true); }
  });
  $("add-text-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const title = $("doc-title").value.trim();
    const text = $("doc-text").value;
    const id = $("doc-id").value.trim() || slug(title) || "note-" + Date.now();
    $("add-text").disabled = true;
    try {
      const r = await api("POST", collectionPath("/documents"), { documents: [{ id, title: title || null, text }] });
      toast((r.added.length ? "added " : r.updated.length ? "updated " : "unchanged ") + id);
      $("doc-id").value = ""; $("doc-title").value = ""; $("doc-text").value = "";
      await loadDocuments(false);
      showDocCount();
    } catch (e) { toast(e.message, true); }
    $("add-text").disabled = false;
  });
  $("upload-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const files = $("upload-file").files;
    if (!files.length) { toast("choose a file first", true); return; }
    const form = new FormData();
    for (const f of files) form.append("file", f, f.name);
    $("upload").disabled = true;
    try {
      const r = await api("POST", collectionPath("/files"), form, true);
      toast("added " + r.added.length + ", updated " + r.updated.length + ", unchanged " + r.unchanged.length);
      $("upload-file").value = "";
      await loadDocuments(false);
      showDocCount();
    } catch (e) { toast(e.message, true); }
    $("upload").disabled = false;
  });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("doc-search").value.trim();
    if (q) searchDocuments(q).catch((e) => toast(e.message, true));
    else loadDocuments(false).catch((e) => toast(e.message, true));
  });
  $("search-clear").addEventListener("click", () => {
    $("doc-search").value = "";
    loadDocuments(false).catch((e) => toast(e.message, true));
  });
  $("load-adapter-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("adapter-name").value.trim();
    const path = $("adapter-path").value.trim() || name;
    if (!name) { toast("give the adapter a name", true); return; }
    $("load-adapter").disabled = true;
    $("load-adapter").textContent = "Loading…";
    try {
      const r = await api("POST", "/v1/adapters", { name, path });
      toast((r.replaced ? "replaced" : "loaded") + " adapter " + name);
      $("adapter-name").value = ""; $("adapter-path").value = "";
    } catch (e) { toast(e.message, true); }
    $("load-adapter").disabled = false;
    $("load-adapter").textContent = "Load adapter";
    await refreshModelsAndAdapters();
  });
  $("profile-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("profile-name").value.trim();
    if (!name) { toast("give the profile a name", true); return; }
    const body = {
      adapter: $("profile-adapter").value || null,
      collection: $("profile-collection").value || null,
      top_k: Number($("rag-topk").value) || 3,
      mode: $("rag-mode").value,
      system_prompt: $("profile-system").value.trim() || null,
    };
    try {
      await api("PUT", "/v1/profiles/" + encodeURIComponent(name), body);
      toast("saved profile " + name);
      $("profile-name").value = ""; $("profile-system").value = "";
      await loadModels();
      $("model").value = name;
      onModelChange();
    } catch (e) { toast(e.message, true); }
  });

  refreshAll();
  setInterval(refreshMetrics, 5000);
  setInterval(refreshHealth, 10000);
}

document.addEventListener("DOMContentLoaded", wire);
