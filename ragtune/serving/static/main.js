// The metrics strip and the health badge at the top, and the wiring of the whole page.
"use strict";

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

  wireModels();
  wireChat();
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      $("tab-documents").hidden = tab.dataset.tab !== "documents";
      $("tab-adapters").hidden = tab.dataset.tab !== "adapters";
    });
  }
  wireDocuments();

  refreshAll();
  setInterval(refreshMetrics, 5000);
  setInterval(refreshHealth, 10000);
}

document.addEventListener("DOMContentLoaded", wire);
