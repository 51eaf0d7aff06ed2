// The chat: one turn per question, its answer streamed in beside the sources it was given, the
// citations in it marked and their sources highlighted.
"use strict";

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

function newTurn(question) {
  // The turn's nodes, appended to the conversation: the question, the answer and its sources.
  $("empty")?.remove();
  const sourcesBox = el("div", { class: "sources" });
  const textNode = el("div", { class: "text" });
  const meta = el("div", { class: "meta" }, "waiting for the first token…");
  const answer = el("div", { class: "answer streaming" }, textNode, meta);
  const row = el("div", { class: "answer-row no-sources" }, answer, sourcesBox);
  const turn = el("div", { class: "turn" }, el("div", { class: "question" }, question), row);
  $("messages").append(turn);
  turn.scrollIntoView({ block: "end" });
  return { turn, row, answer, textNode, meta, sourcesBox };
}

function chatBody(model, question) {
  const messages = $("remember").checked ? [...state.history] : [];
  messages.push({ role: "user", content: question });
  return {
    model, messages, stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) || 160,
    // auto: the chosen profile's own retrieval settings (unless retrieval is switched off).
    rag: model === "auto" ? ($("rag-on").checked ? undefined : false) : ragOptions(),
  };
}

async function readEvents(resp, view, run) {
  // Server-sent events: `data: {json}` lines, events apart by a blank line, `data: [DONE]` last.
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
        onEvent(JSON.parse(payload), view, run);
      }
    }
    view.turn.scrollIntoView({ block: "end" });
  }
}

function onEvent(event, view, run) {
  const turn = view.turn;
  if (event.error) throw new ApiError(500, event);
  if (event.sources) {
    renderSources(view.sourcesBox, event.sources);
    view.row.classList.toggle("no-sources", event.sources.length === 0);
  }
  if (event.usage) run.usage = event.usage;
  if (event.ragtune && event.ragtune.route) {
    run.route = event.ragtune.route;
    turn.dataset.route = run.route.chosen;
    view.meta.textContent = routeLabel(run.route) + " · waiting for the first token…";
  }
  for (const choice of event.choices || []) {
    if (choice.delta && choice.delta.content) {
      if (run.firstAt === null) run.firstAt = performance.now();
      run.text += choice.delta.content;
      turn.dataset.deltas = String(Number(turn.dataset.deltas || 0) + 1);
      renderAnswerText(view.textNode, run.text);
      markCited(turn, run.text);
      view.meta.textContent = "streaming…";
    }
    if (choice.finish_reason) run.finish = choice.finish_reason;
  }
}

function runSummary(model, run) {
  // The line under a finished answer: model (or route), first token, total, tokens, why it stopped.
  const total = performance.now() - run.started;
  const parts = [run.route ? routeLabel(run.route) : model];
  if (run.firstAt !== null) parts.push("first token " + Math.round(run.firstAt - run.started) + " ms");
  parts.push("total " + (total / 1000).toFixed(1) + " s");
  if (run.usage) parts.push(run.usage.prompt_tokens + " prompt + " + run.usage.completion_tokens + " answer tokens");
  if (run.finish === "length") parts.push("stopped at max tokens");
  return parts.join(" · ");
}

async function ask(question) {
  const view = newTurn(question);
  const model = $("model").value;
  const body = chatBody(model, question);
  state.abort = new AbortController();
  setBusy(true);
  const run = { started: performance.now(), firstAt: null, text: "", usage: null, finish: null, route: null };
  try {
    const resp = await chatStream(body, state.abort.signal);
    await readEvents(resp, view, run);
    view.meta.textContent = runSummary(model, run);
    state.history.push({ role: "user", content: question }, { role: "assistant", content: run.text });
  } catch (e) {
    if (e.name === "AbortError") {
      view.meta.textContent = "stopped";
    } else {
      view.answer.append(el("div", { class: "error" }, e.message));
      view.meta.textContent = e.param ? "field: " + e.param : "";
    }
  } finally {
    view.answer.classList.remove("streaming");
    view.answer.dataset.done = "1";
    view.turn.dataset.done = "1";
    state.abort = null;
    setBusy(false);
    refreshMetrics();
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

function wireChat() {
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
}
