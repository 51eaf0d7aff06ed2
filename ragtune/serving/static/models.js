// The model menu and its retrieval defaults, the adapters and the profiles (the second tab).
"use strict";

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
const CALIBRATION = ["min_similarity"];

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

function wireModels() {
  $("model").addEventListener("change", onModelChange);
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
}
