// ragtune playground: plain JavaScript against the server's own HTTP API (no build step).
// The page's scripts share one global scope and load in order (index.html): this one first, with
// the API client and the helpers the others use; then models.js, documents.js, chat.js, main.js.
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

// The streamed answer: the response itself, its body read as server-sent events by the caller.
async function chatStream(body, signal) {
  const resp = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body), signal,
  });
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, data);
  }
  return resp;
}

// Files into a collection as multipart/form-data, one `file` field each.
function uploadFiles(collection, files) {
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  return api("POST", "/v1/collections/" + encodeURIComponent(collection) + "/files", form, true);
}

// -- helpers -------------------------------------------------------------------------------
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

function fillSelect(select, values, label) {
  const previous = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, label ? label(v) : v)));
  if (values.includes(previous)) select.value = previous;
}

function snippet(text, n) {
  const s = (text || "").replace(/\s+/g, " ").trim();
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

function slug(text) {
  return (text || "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60);
}
