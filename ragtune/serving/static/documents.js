// The Documents tab: the collections, their documents (a page at a time), search, adding text
// and uploading files.
"use strict";

const DOC_PAGE = 50;

async function loadCollections() {
  const data = await api("GET", "/v1/collections");
  state.collections = data.data.map((c) => c.name);
  state.collectionStats = Object.fromEntries(data.data.map((c) => [c.name, c]));
  fillSelect($("doc-collection"), state.collections);
  fillSelect($("profile-collection"), ["", ...state.collections], (v) => v || "(none)");
  fillRagCollections();
  showDocCount();
}

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

function wireDocuments() {
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
    $("upload").disabled = true;
    try {
      const r = await uploadFiles(currentCollection(), files);
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
}
