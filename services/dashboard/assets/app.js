// The page follows /api/stream (server-sent events, one `state` a tick), pages through
// /api/messages, and acts (redrive, roll back, promote) with the API key typed in.
"use strict";

const $ = (id) => document.getElementById(id);
const short = (id) => (id || "").slice(0, 8);
const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "—");
const fixed = (x, digits = 1) => (x === null || x === undefined ? "—" : x.toFixed(digits));
let latest = null;

function cell(content, className) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content ?? "";
  if (className) td.className = className;
  return td;
}

function row(cells, attributes) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attributes || {})) tr.setAttribute(name, value);
  cells.forEach((c) => tr.appendChild(c));
  return tr;
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function link(text, onClick) {
  const a = document.createElement("a");
  a.href = "#messages";
  a.textContent = text;
  a.addEventListener("click", onClick);
  return a;
}

// A small line chart of `values` (nulls are gaps), as SVG.
function sparkline(values, width = 160, height = 28) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "spark");
  const known = values.filter((v) => v !== null && v !== undefined);
  if (known.length === 0) return svg;
  const low = Math.min(...known), high = Math.max(...known);
  const x = (i) => (values.length === 1 ? width / 2 : (i * (width - 4)) / (values.length - 1) + 2);
  const y = (v) => (high === low ? height / 2 : height - 3 - ((v - low) * (height - 6)) / (high - low));
  const points = values.map((v, i) => (v === null || v === undefined ? null : `${x(i)},${y(v)}`)).filter(Boolean);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  values.forEach((v, i) => {
    if (v === null || v === undefined || values.length > 30) return;
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x(i));
    dot.setAttribute("cy", y(v));
    dot.setAttribute("r", 2.5);
    svg.appendChild(dot);
  });
  return svg;
}

// ---- the loop ----

function aliasRows(aliases) {
  return Object.entries(aliases).map(([alias, model]) =>
    row([cell(alias), cell(model, "model")], { "data-alias": alias }));
}

// The aliases after every move up to `at`. `previous` follows the registry's rule: the
// champion replaced, or after a rollback what preceded the restored champion.
function aliasesAt(moves, at) {
  const aliases = {};
  const champions = [];
  for (const m of moves) {
    if (m.at_ms > at) break;
    aliases[m.alias] = m.model_id;
    if (m.alias !== "champion") continue;
    let previous = m.previous_model_id;
    if (m.reason === "rollback") {
      const earlier = [...champions].reverse().find((c) => c.model_id === m.model_id);
      previous = earlier ? earlier.previous_model_id : null;
    }
    champions.push(m);
    if (previous) aliases.previous = previous;
    else delete aliases.previous;
  }
  return aliases;
}

function renderLoop(state) {
  const l = state.loop;
  $("aliases").replaceChildren(...aliasRows(aliasesAt(state.models.moves, Infinity)));
  $("feedback").textContent = String(l.feedback);
  $("feedback-waiting").textContent = String(l.feedback_waiting);
  $("feedback-last").textContent = when(l.last_feedback_ms);
  if ($("step-names").children.length === 2) {
    l.steps.forEach((s) => $("step-names").appendChild(Object.assign(document.createElement("th"), { textContent: s })));
  }
  $("cycles").replaceChildren(...l.cycles.map((c) => row([
    cell(link(short(c.correlation_id), () => showChain(c.correlation_id))),
    cell(c.cause || "—"),
    ...l.steps.map((s) => cell(c.steps[s] ? when(c.steps[s]).slice(11) : "·", c.steps[s] ? "done" : "todo")),
  ], { "data-cycle": c.correlation_id, "data-at": c.at })));
  renderJobs(state.jobs);
}

function progressBar(job) {
  const bar = document.createElement("progress");
  bar.max = job.max_steps;
  bar.value = job.step;
  const label = document.createElement("span");
  label.textContent = ` ${job.step} / ${job.max_steps}`;
  const holder = document.createElement("span");
  holder.append(bar, label);
  return holder;
}

function renderJobs(jobs) {
  $("jobs").replaceChildren(...jobs.map((j) => {
    const last = j.loss.length ? j.loss[j.loss.length - 1][1].toFixed(3) : "—";
    const curve = document.createElement("span");
    curve.append(sparkline(j.loss.map((p) => p[1]), 160, 32), ` ${last}`);
    return row([
      cell(link(short(j.job_id), () => showChain(j.correlation_id))), cell(j.run_kind), cell(j.device),
      cell(progressBar(j)), cell(fixed(j.tokens_per_s, 0)), cell(curve, "loss"),
      cell(j.model_id ? short(j.model_id) : "running", "model"),
    ], { "data-job": j.job_id, "data-state": j.model_id ? "done" : "running" });
  }));
}

// ---- topics ----

function rates(series) {
  return series.slice(1).map((v, i) => v - series[i]);
}

function lagCell(topic) {
  const td = document.createElement("td");
  for (const [consumer, behind] of Object.entries(topic.lag)) {
    const span = document.createElement("span");
    span.className = behind > 0 ? "lag behind" : "lag";
    span.dataset.consumer = consumer;
    span.textContent = `${consumer} ${behind}`;
    td.appendChild(span);
    td.appendChild(sparkline(topic.lag_series[consumer] || [], 80, 18));
  }
  return td;
}

function renderTopics(state) {
  $("topics").replaceChildren(...state.topics.map((t) => row([
    cell(t.topic), cell(String(t.messages), "messages"), cell(t.rate.toFixed(1), "rate"),
    cell(sparkline(rates(t.messages_series))), lagCell(t), cell(String(t.dead_letters)),
  ], { "data-topic": t.topic })));
  for (const select of [$("f-topic"), $("f-type")]) {
    if (select.options.length > 1) continue;
    state.topics
      .filter((t) => select.id === "f-topic" || !t.topic.endsWith(".dlq"))
      .forEach((t) => select.appendChild(new Option(t.topic, t.topic)));
  }
}

// ---- dead letters ----

function renderLetters(state) {
  $("letter-count").textContent = String(state.dead_letters_waiting);
  $("letters-note").textContent = state.dead_letters_waiting > state.dead_letters.length
    ? `the oldest ${state.dead_letters.length} of ${state.dead_letters_waiting} shown` : "";
  $("letters").replaceChildren(...state.dead_letters.map((l) => row([
    cell(l.id), cell(l.source_topic), cell(l.consumer), cell(`[${l.error_label}] ${l.error}`),
    cell(button("Redrive", () => act("api/dead-letters/redrive", { ids: [l.id] }))),
  ], { "data-letter": l.id })));
}

// ---- models ----

function gateText(evaluation) {
  if (!evaluation) return "—";
  const checks = evaluation.checks.map((c) =>
    `${c.passed ? "✓" : "✗"} ${c.metric} ${c.candidate.toFixed(3)}` +
    (c.baseline === null ? "" : ` (was ${c.baseline.toFixed(3)})`));
  return `${evaluation.outcome}: ${checks.join("; ") || "no checks"}`;
}

function renderAliasesAt(state) {
  const moves = state.models.moves;
  if (moves.length === 0) return $("aliases-at").replaceChildren();
  const first = moves[0].at_ms, now = state.at_ms || Date.now();
  const at = $("at-slider").value === "1000" && !$("at").value ? Infinity : atChosen(first, now);
  $("aliases-at").replaceChildren(...aliasRows(aliasesAt(moves, at)));
}

function atChosen(first, now) {
  if ($("at").value) return new Date($("at").value + "Z").getTime();
  return first + ((now - first) * Number($("at-slider").value)) / 1000;
}

const CHARTED = ["perplexity", "safety_pass_rate", "latency_p50_ms", "reward_win_rate"];

function renderModels(state) {
  const m = state.models;
  renderAliasesAt(state);
  $("moves").replaceChildren(...[...m.moves].reverse().map((v) => row([
    cell(when(v.at_ms)), cell(v.alias), cell(v.model_id, "model"),
    cell(v.reason + (v.note ? `: ${v.note}` : "")), cell(v.operator || "registry"),
    cell(gateText(v.evaluation), "gate"),
  ], { "data-move": v.reason, "data-alias": v.alias })));
  $("charts").replaceChildren(...CHARTED.map((name) => {
    const figure = document.createElement("figure");
    const values = m.versions.map((v) => v.metrics[name] ?? null);
    figure.appendChild(sparkline(values, 220, 60));
    const last = values.filter((v) => v !== null).pop();
    figure.appendChild(Object.assign(document.createElement("figcaption"),
      { textContent: `${name}${last === undefined ? " (none yet)" : `: ${last.toFixed(3)}`}` }));
    figure.dataset.metric = name;
    return figure;
  }));
  $("versions").replaceChildren(...[...m.versions].reverse().map((v) => row([
    cell(v.model_id, "model"), cell(when(v.trained_at_ms)), cell(v.run_kind), cell(short(v.parent_model_id) || "—"),
    cell(`${v.dataset_ids.map(short).join(", ")} · ${short(v.tokenizer_id)}`),
    cell(link(`${v.cause || "cycle"} ${short(v.correlation_id)}`, () => showChain(v.correlation_id))),
    cell(Object.entries(v.metrics).map(([k, x]) => `${k} ${x.toFixed(3)}`).join(", "), "metrics"),
    cell(button("Promote", () => act("api/models/move", { action: "promote", model_id: v.model_id }))),
  ], { "data-version": v.model_id })));
}

// ---- serving ----

function renderServing(state) {
  const s = state.serving;
  $("routes").replaceChildren(...s.routes.map((r) => row([
    cell(short(r.model_id), "model"), cell(r.route), cell(String(r.requests), "requests"), cell(String(r.streamed)),
    cell(fixed(r.latency_p50_ms)), cell(fixed(r.latency_p95_ms)), cell(fixed(r.latency_p99_ms)),
    cell(fixed(r.tokens_per_s)), cell(`${r.prompt_tokens} · ${r.completion_tokens}`),
  ], { "data-route": `${r.model_id}/${r.route}` })));
  $("serving-models").replaceChildren(...s.models.map((m) => row([
    cell(short(m.model_id), "model"), cell(String(m.reported_requests)), cell(String(m.errors)),
    cell(String(m.blocked)), cell(String(m.feedback), "feedback"), cell(String(m.negative_feedback)),
    cell(fixed(m.mean_rating, 2)),
  ], { "data-model": m.model_id })));
}

function render(state) {
  latest = state;
  renderLoop(state);
  renderTopics(state);
  renderLetters(state);
  renderModels(state);
  renderServing(state);
  $("held").textContent = `(${state.held} held)`;
}

// ---- the message browser ----

let cursor = null;

function filters() {
  const q = new URLSearchParams();
  const put = (name, value) => { if (value) q.set(name, value); };
  put("topic", $("f-topic").value);
  put("type", $("f-type").value);
  put("correlation", $("f-correlation").value.trim());
  if ($("f-since").value) q.set("since_ms", new Date($("f-since").value + "Z").getTime());
  if ($("f-until").value) q.set("until_ms", new Date($("f-until").value + "Z").getTime());
  return q;
}

// The depth of each message in its chain (by causation), for a causal view.
function depths(messages) {
  const byId = new Map(messages.filter((m) => m.event).map((m) => [m.event.header.event_id, m]));
  const depth = (m, seen = 0) => {
    const cause = m.event && m.event.header.causation_id;
    return cause && byId.has(cause) && seen < 50 ? 1 + depth(byId.get(cause), seen + 1) : 0;
  };
  return messages.map((m) => depth(m));
}

async function loadMessages(append) {
  const q = filters();
  const chain = q.has("correlation");
  if (chain) q.set("order", "asc");
  if (append && cursor !== null) q.set("before", cursor);
  const response = await fetch(`api/messages?${q}`);
  const page = await response.json();
  if (!response.ok) { $("page-note").textContent = page.error.message; return; }
  cursor = page.next_before;
  $("older").disabled = cursor === null;
  $("chain-title").textContent = chain ? `The causal chain of ${q.get("correlation")}, oldest first` : "";
  const levels = chain ? depths(page.messages) : page.messages.map(() => 0);
  const rows = page.messages.flatMap((m, i) => messageRows(m, levels[i]));
  if (append) rows.forEach((r) => $("messages-list").appendChild(r));
  else $("messages-list").replaceChildren(...rows);
  $("page-note").textContent = `${$("messages-list").querySelectorAll("tr.message").length} of ${page.total} shown`;
}

function messageRows(m, level) {
  const header = m.event ? m.event.header : null;
  const detail = row([cell("")], { class: "detail", hidden: "" });
  const body = document.createElement("pre");
  body.textContent = JSON.stringify({ headers: m.headers, event: m.event, error: m.error }, null, 2);
  detail.firstChild.colSpan = 6;
  detail.firstChild.appendChild(body);
  const type = cell("\u2003".repeat(level) + (level ? "↳ " : "") + (m.event_type || "?"), "type");
  const correlation = header
    ? cell(link(short(header.correlation_id), (e) => { e.stopPropagation(); showChain(header.correlation_id); }))
    : cell(m.error || "", "error");
  const main = row([cell(String(m.seq)), cell(when(header ? header.occurred_at : m.timestamp_ms)),
    cell(`${m.topic}:${m.partition}:${m.offset}`), type, correlation, cell(`${m.framing} ${m.schema}`)],
  { class: "message", "data-seq": m.seq, "data-framing": m.framing });
  main.addEventListener("click", () => detail.toggleAttribute("hidden"));
  return [main, detail];
}

function showChain(correlation) {
  $("f-topic").value = "";
  $("f-type").value = "";
  $("f-since").value = "";
  $("f-until").value = "";
  $("f-correlation").value = correlation;
  location.hash = "#messages";
  loadMessages(false);
}

$("filters").addEventListener("submit", (e) => { e.preventDefault(); loadMessages(false); });
$("f-clear").addEventListener("click", () => { $("filters").reset(); loadMessages(false); });
$("older").addEventListener("click", () => loadMessages(true));

// ---- schemas ----

async function loadSchemas() {
  const response = await fetch("api/schemas");
  const answer = await response.json();
  if (!response.ok) { $("registry").textContent = answer.error.message; return; }
  $("registry").textContent = `from ${answer.registry}`;
  $("subjects").replaceChildren(...answer.subjects.map((s) => row([
    cell(s.subject), cell(s.topic || "—"), cell(s.versions.join(", ")), cell(s.compatibility || "—"),
    cell(s.latest_id === null ? "—" : String(s.latest_id)),
    cell(s.current === null ? "—" : s.current ? "yes" : "no"),
  ], { "data-subject": s.subject })));
}

$("schemas-refresh").addEventListener("click", loadSchemas);

// ---- actions ----

async function act(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${$("key").value}` },
    body: JSON.stringify({ ...body, reason: $("reason").value || null }),
  });
  const answer = await response.json();
  $("status").textContent = !response.ok ? answer.error.message
    : answer.redriven !== undefined ? `redrove ${answer.redriven} dead letter(s)`
      : `request ${short(answer.requested)} sent`;
}

$("redrive-all").addEventListener("click", () => act("api/dead-letters/redrive", { all: true }));
$("rollback").addEventListener("click", () => act("api/models/move", { action: "rollback" }));
$("retrain").addEventListener("click", () => act("api/retrain", {}));
for (const id of ["at", "at-slider"]) {
  $(id).addEventListener("input", () => {
    if (id === "at-slider") $("at").value = "";
    if (latest) renderAliasesAt(latest);
  });
}
$("at-now").addEventListener("click", () => { $("at").value = ""; $("at-slider").value = 1000; if (latest) renderAliasesAt(latest); });

// ---- pages and the stream ----

function showPage() {
  const page = (location.hash || "#loop").slice(1);
  document.querySelectorAll("section[data-page]").forEach((s) => { s.hidden = s.dataset.page !== page; });
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("here", a.hash === `#${page}`));
  if (page === "messages" && !$("messages-list").children.length) loadMessages(false);
  if (page === "schemas" && !$("subjects").children.length) loadSchemas();
}
window.addEventListener("hashchange", showPage);
showPage();

const events = new EventSource("api/stream");
events.addEventListener("state", (e) => {
  const state = JSON.parse(e.data);
  $("connection").textContent = state.error ? state.error : "live";
  $("connection").className = state.error ? "off" : "on";
  render(state);
});
events.addEventListener("error", () => {
  $("connection").textContent = "reconnecting…";
  $("connection").className = "off";
});
