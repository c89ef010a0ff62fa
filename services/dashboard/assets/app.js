// The page follows /api/stream (server-sent events, one `state` a tick) and redrives dead
// letters through /api/dead-letters/redrive with the key typed in.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function row(cells, attributes) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attributes || {})) tr.setAttribute(name, value);
  cells.forEach((c) => tr.appendChild(c));
  return tr;
}

function lagCell(lag) {
  const td = document.createElement("td");
  for (const [consumer, behind] of Object.entries(lag)) {
    const span = document.createElement("span");
    span.className = behind > 0 ? "lag behind" : "lag";
    span.dataset.consumer = consumer;
    span.textContent = `${consumer} ${behind}`;
    td.appendChild(span);
  }
  return td;
}

function render(state) {
  $("topics").replaceChildren(...state.topics.map((t) =>
    row([cell(t.topic), cell(String(t.messages), "messages"), lagCell(t.lag)], { "data-topic": t.topic })));
  $("aliases").replaceChildren(...Object.entries(state.aliases).map(([alias, model]) =>
    row([cell(alias), cell(model, "model")], { "data-alias": alias })));
  $("moves").replaceChildren(...state.moves.map((m) =>
    row([cell(new Date(m.at_ms).toISOString()), cell(m.alias), cell(m.model_id, "model"),
         cell(m.reason + (m.note ? `: ${m.note}` : "")), cell(m.operator || "registry")])));
  $("letter-count").textContent = String(state.dead_letters.length);
  $("letters").replaceChildren(...state.dead_letters.map((l) => {
    const button = document.createElement("button");
    button.textContent = "Redrive";
    button.addEventListener("click", () => redrive({ ids: [l.id] }));
    const action = document.createElement("td");
    action.appendChild(button);
    return row([cell(l.id), cell(l.source_topic), cell(l.consumer),
                cell(`[${l.error_label}] ${l.error}`), action], { "data-letter": l.id });
  }));
}

async function redrive(which) {
  const body = { ...which, reason: $("reason").value || null };
  const response = await fetch("api/dead-letters/redrive", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${$("key").value}` },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  $("status").textContent = response.ok
    ? `redrove ${answer.redriven} dead letter(s)`
    : answer.error.message;
}

$("redrive-all").addEventListener("click", () => redrive({ all: true }));

const events = new EventSource("api/stream");
events.addEventListener("state", (e) => {
  const state = JSON.parse(e.data);
  $("connection").textContent = state.error ? `bus: ${state.error}` : "live";
  $("connection").className = state.error ? "off" : "on";
  if (!state.error) render(state);
});
events.addEventListener("error", () => {
  $("connection").textContent = "reconnecting…";
  $("connection").className = "off";
});
