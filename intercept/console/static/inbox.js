// The approval inbox: pending requests with their exact arguments, approve/deny, recent decisions
// and a status strip, kept current by the server-sent event stream (no reload).
//
// Every string from the API is the agent's (tool names, arguments, reasons): the DOM is built with
// textContent only, never innerHTML. Arguments are shown from the record's JSON text as sent
// (key order, number spelling and all), with control and bidirectional characters written as
// visible \uNNNN escapes; the parts the server marks as secret-looking (`secret_spans`, the same
// detector as `intercept approvals show`) are highlighted, and hidden, not removed, while
// "Mask secrets" is on.
"use strict";

const APPROVAL_EVENTS = [
  "approval_requested",
  "approval_decided",
  "approval_expired",
  "approval_consumed",
  "approval_reused",
  "approval_given_back",
];
const HISTORY_QUERY = "/api/approvals?status=approved,denied,consumed,expired";
const HISTORY_LIMIT = 40;
const REFRESH_MS = 15000; // status strip, and the list as a safety net for a missed event
const EVENT_DEBOUNCE_MS = 150;
const RECONNECT_FIRST_MS = 1000;
const RECONNECT_MAX_MS = 30000;
const MAX_NOTICES = 4;
const MASK_STORAGE_KEY = "intercept.maskSecrets";
const SECRET_MASK_TEXT = "••••••";

const state = {
  csrf: null,
  cards: new Map(), // approval id -> {root, record, details, ...}
  firstListDone: false,
  listRun: 0,
  events: null,
  reconnectMs: RECONNECT_FIRST_MS,
  reconnectTimer: null,
  refetchTimer: null,
  nextFieldId: 0,
};

// -- words for the record ---------------------------------------------------------------------------

/** What one approval of this request allows, in words: the same words as the server's
 * `ApprovalScope.describe` (intercept/policy/model.py). */
function scopeText(scope) {
  if (!scope) return "one run of this exact call";
  const runs = scope.uses === 1 ? "one run" : scope.uses ? `${scope.uses} runs` : "any number of runs";
  const what = scope.match === "tool" ? "with any arguments to the tool" : "of this exact call";
  const window = scope.for_s ? ` within ${scope.for_s}s of the approval` : "";
  return `${runs} ${what}${window}`;
}

// -- small DOM helpers -------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function fieldId(prefix) {
  state.nextFieldId += 1;
  return `${prefix}-${state.nextFieldId}`;
}

// -- the API -----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function toLogin() {
  window.location.assign("/login");
}

// GET or POST (JSON body, CSRF header) with the session cookie; {body, text} or an ApiError.
async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" };
  if (options.method === "POST") {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = state.csrf || "";
    init.body = JSON.stringify(options.body || {});
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "the console cannot be reached (is intercept serve still running?)", null);
  }
  const text = await response.text();
  if (response.status === 401) {
    toLogin();
    throw new ApiError(401, "not logged in", null);
  }
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message, body);
  }
  return { body, text };
}

// -- time --------------------------------------------------------------------------------------------

function parseTime(text) {
  if (typeof text !== "string") return NaN;
  return Date.parse(text.replace(/(\.\d{3})\d+/, "$1")); // microseconds: not every engine reads them
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function ago(text) {
  const at = parseTime(text);
  return Number.isNaN(at) ? "?" : `${duration(Date.now() - at)} ago`;
}

function shortTime(text) {
  const at = parseTime(text);
  return Number.isNaN(at) ? String(text) : new Date(at).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// -- JSON exactly as sent ----------------------------------------------------------------------------

// A tree of the JSON text: objects keep their key order (a JS object would move "1" before "b")
// and numbers their spelling (1.0, 12345678901234567890), so the approver sees what will run.
// Nodes: {kind: "object", entries: [[key, node]...]}, {kind: "array", items}, {kind: "string", value},
// {kind: "number" | "literal", raw}.
function parseJsonTree(text) {
  let pos = 0;
  const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const LITERAL = /true|false|null/y;
  const WHITESPACE = /[ \t\n\r]*/y;

  function skip() {
    WHITESPACE.lastIndex = pos;
    WHITESPACE.exec(text);
    pos = WHITESPACE.lastIndex;
  }
  function take(pattern) {
    pattern.lastIndex = pos;
    const match = pattern.exec(text);
    if (!match) throw new SyntaxError(`unexpected JSON at ${pos}`);
    pos = pattern.lastIndex;
    return match[0];
  }
  function expect(ch) {
    skip();
    if (text[pos] !== ch) throw new SyntaxError(`expected ${ch} at ${pos}`);
    pos += 1;
  }
  function value() {
    skip();
    const ch = text[pos];
    if (ch === "{") {
      pos += 1;
      const entries = [];
      skip();
      if (text[pos] === "}") {
        pos += 1;
        return { kind: "object", entries };
      }
      for (;;) {
        skip();
        const key = JSON.parse(take(STRING));
        expect(":");
        entries.push([key, value()]);
        skip();
        if (text[pos] === ",") {
          pos += 1;
          continue;
        }
        expect("}");
        return { kind: "object", entries };
      }
    }
    if (ch === "[") {
      pos += 1;
      const items = [];
      skip();
      if (text[pos] === "]") {
        pos += 1;
        return { kind: "array", items };
      }
      for (;;) {
        items.push(value());
        skip();
        if (text[pos] === ",") {
          pos += 1;
          continue;
        }
        expect("]");
        return { kind: "array", items };
      }
    }
    if (ch === '"') return { kind: "string", value: JSON.parse(take(STRING)) };
    if (ch === "t" || ch === "f" || ch === "n") return { kind: "literal", raw: take(LITERAL) };
    return { kind: "number", raw: take(NUMBER) };
  }

  const tree = value();
  skip();
  if (pos !== text.length) throw new SyntaxError(`trailing data at ${pos}`);
  return tree;
}

function member(tree, key) {
  if (!tree || tree.kind !== "object") return undefined;
  const found = tree.entries.find(([name]) => name === key);
  return found ? found[1] : undefined;
}

// Characters that could hide or reorder text on screen, written as \uNNNN (besides what JSON escapes:
// C0 controls, quotes, backslashes, lone surrogates).
const UNSAFE_CHARS = /[\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
// Escapes a reader should notice (not the \n and \t of ordinary text): drawn with a dotted underline.
const FLAGGED_CHARS = /([\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff])/;

function escapeJsonText(text) {
  return JSON.stringify(text)
    .slice(1, -1)
    .replace(UNSAFE_CHARS, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// `text` as the inside of a JSON string, flagged escapes in spans of their own.
function appendEscaped(into, text) {
  text.split(FLAGGED_CHARS).forEach((piece, index) => {
    if (!piece) return;
    if (index % 2) {
      const flagged = el("span", "j-esc", escapeJsonText(piece));
      flagged.title = `U+${piece.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
      into.append(flagged);
    } else {
      into.append(escapeJsonText(piece));
    }
  });
}

function pathKey(path) {
  return JSON.stringify(path);
}

// secret_spans as a map: path -> {whole, spans: [[start, end], ...]} (offsets in code points).
function marksByPath(spans) {
  const marks = new Map();
  for (const span of Array.isArray(spans) ? spans : []) {
    if (!span || !Array.isArray(span.path)) continue;
    const key = pathKey(span.path);
    const mark = marks.get(key) || { whole: false, spans: [] };
    if (Number.isInteger(span.start) && Number.isInteger(span.end)) mark.spans.push([span.start, span.end]);
    else mark.whole = true;
    marks.set(key, mark);
  }
  for (const mark of marks.values()) mark.spans.sort((a, b) => a[0] - b[0]);
  return marks;
}

// A highlighted secret-looking part: the text, and the mask shown instead of it while masking.
function secretPart(fill) {
  const outer = el("span", "secret");
  const shown = el("span", "secret-text");
  fill(shown);
  const mask = el("span", "secret-mask", SECRET_MASK_TEXT);
  mask.title = "secret-looking value, masked";
  outer.append(shown, mask);
  return outer;
}

function renderString(text, spans, into) {
  const node = el("span", "j-str");
  node.append('"');
  if (spans.length === 0) {
    appendEscaped(node, text);
  } else {
    const points = Array.from(text); // code points, as the server counts offsets
    let done = 0;
    for (const [start, end] of spans) {
      if (start < done || end > points.length || start >= end) continue;
      appendEscaped(node, points.slice(done, start).join(""));
      const part = points.slice(start, end).join("");
      node.append(secretPart((shown) => appendEscaped(shown, part)));
      done = end;
    }
    appendEscaped(node, points.slice(done).join(""));
  }
  node.append('"');
  into.append(node);
}

function renderNode(node, path, level, marks, into) {
  const mark = marks ? marks.get(pathKey(path)) : undefined;
  if (node.kind === "string") {
    renderString(node.value, mark ? (mark.whole ? [[0, Array.from(node.value).length]] : mark.spans) : [], into);
    return;
  }
  if (mark && mark.whole) {
    into.append(secretPart((shown) => renderNode(node, path, level, null, shown)));
    return;
  }
  if (node.kind === "number") {
    into.append(el("span", "j-num", node.raw));
    return;
  }
  if (node.kind === "literal") {
    into.append(el("span", "j-lit", node.raw));
    return;
  }
  const [open, close, children] =
    node.kind === "object"
      ? ["{", "}", node.entries]
      : ["[", "]", node.items.map((item, index) => [index, item])];
  if (children.length === 0) {
    into.append(open + close);
    return;
  }
  const inner = "\n" + "  ".repeat(level + 1);
  into.append(open);
  children.forEach(([key, child], index) => {
    into.append((index ? "," : "") + inner);
    if (node.kind === "object") {
      const name = el("span", "j-key", '"');
      appendEscaped(name, key);
      name.append('"');
      into.append(name, ": ");
    }
    renderNode(child, [...path, key], level + 1, marks, into);
  });
  into.append("\n" + "  ".repeat(level) + close);
}

function renderArguments(tree, spans) {
  const pre = el("pre", "json");
  renderNode(tree, [], 0, marksByPath(spans), pre);
  return pre;
}

// -- notices and announcements -----------------------------------------------------------------------

function notice(text, bad = false) {
  const box = byId("notices");
  const item = el("p", bad ? "notice bad" : "notice", text);
  box.prepend(item);
  while (box.childElementCount > MAX_NOTICES) box.lastElementChild.remove();
}

function announce(text) {
  const region = byId("announce");
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = text;
  }, 50);
}

function describe(record) {
  return `${record.tool} on ${record.server} (${record.id})`;
}

// -- pending cards -----------------------------------------------------------------------------------

function fact(list, label, value) {
  list.append(el("dt", "", label));
  const dd = el("dd", "", value);
  list.append(dd);
  return dd;
}

function buildCard(record) {
  const root = el("article", "card");
  root.dataset.approvalId = record.id;
  const titleId = fieldId("title");
  root.setAttribute("aria-labelledby", titleId);

  const title = el("h3", "card-title");
  title.id = titleId;
  title.append(el("span", "tool", record.tool), " ", el("span", "server", `on ${record.server}`));
  const staleBadge = el("span", "badge stale", "stale: rule changed");
  staleBadge.hidden = true;
  title.append(" ", staleBadge);
  root.append(title);

  const facts = el("dl", "facts");
  const rule = fact(facts, "Rule", record.rule);
  // Who asked: the proxy's --agent, and the name the client gave itself (never trusted).
  if (record.agent) fact(facts, "Agent", record.agent);
  if (record.client) fact(facts, "Client", `${record.client} (as the client names itself)`);
  const requested = fact(facts, "Requested", "");
  const expires = fact(facts, "Expires", "");
  fact(facts, "Id", record.id);
  const repeats = fact(facts, "Asked", "");
  fact(facts, "Approving allows", scopeText(record.scope));
  const votes = fact(facts, "Votes", "");
  root.append(facts);

  const argsLabelId = fieldId("args");
  const argsLabel = el("p", "args-label", "Arguments");
  argsLabel.id = argsLabelId;
  const box = el("div", "json-box");
  box.tabIndex = 0; // long lines scroll: reachable by keyboard
  box.setAttribute("role", "region");
  box.setAttribute("aria-labelledby", argsLabelId);
  box.append(el("pre", "json", "loading the exact arguments…"));
  root.append(argsLabel, box);

  const decideRow = el("div", "decide");
  const reasonWrap = el("div", "reason");
  const reasonId = fieldId("reason");
  const reasonLabel = el("label", "", "Reason (optional)");
  reasonLabel.htmlFor = reasonId;
  const reason = el("input");
  reason.type = "text";
  reason.id = reasonId;
  reason.maxLength = 2000;
  reason.autocomplete = "off";
  reasonWrap.append(reasonLabel, reason);
  const approve = el("button", "approve", "Approve");
  approve.type = "button";
  const deny = el("button", "deny", "Deny");
  deny.type = "button";
  approve.disabled = true; // until the exact arguments are on screen
  deny.disabled = true;
  decideRow.append(reasonWrap, approve, deny);
  root.append(decideRow);

  const result = el("p", "card-result");
  result.setAttribute("role", "alert");
  result.hidden = true;
  root.append(result);

  const card = { root, record, rule, requested, expires, repeats, votes, staleBadge, argsLabel, box, reason, approve, deny, result, busy: false, loaded: false };
  approve.addEventListener("click", () => decide(card, true));
  deny.addEventListener("click", () => decide(card, false));
  updateCard(card, record);
  return card;
}

function updateCard(card, record) {
  card.record = record;
  card.rule.textContent = record.rule;
  card.staleBadge.hidden = !record.stale;
  card.repeats.textContent = record.request_count > 1 ? `${record.request_count} times` : "once";
  tickCard(card);
}

function tickCard(card) {
  const record = card.record;
  card.requested.textContent = `${ago(record.created_at)} (${shortTime(record.created_at)})`;
  const left = parseTime(record.expires_at) - Date.now();
  card.expires.textContent = Number.isNaN(left)
    ? String(record.expires_at)
    : left > 0
      ? `in ${duration(left)} (${shortTime(record.expires_at)})`
      : "now";
  card.expires.classList.toggle("soon", left < 5 * 60 * 1000);
}

async function loadDetails(card) {
  try {
    const { body, text } = await api(`/api/approvals/${encodeURIComponent(card.record.id)}`);
    let tree;
    try {
      tree = member(parseJsonTree(text), "arguments");
    } catch (error) {
      tree = undefined;
    }
    if (tree === undefined) throw new ApiError(0, "the record's arguments could not be read", null);
    card.box.replaceChildren(renderArguments(tree, body.secret_spans));
    card.argsLabel.textContent = body.arguments_exact
      ? "Arguments (exact: this is what will run)"
      : "Arguments (redacted copy: the exact ones are no longer kept)";
    card.votes.textContent = votesText(body.votes);
    card.loaded = true;
    setButtons(card, !card.busy);
  } catch (error) {
    if (error.status === 401) return;
    card.box.replaceChildren(el("pre", "json", `could not load the arguments: ${error.message}`));
  }
}

function votesText(votes) {
  // Who voted so far, and whether each vote is signed with the approver's key.
  if (!votes || votes.length === 0) return "none yet";
  return votes
    .map((vote) => `${vote.actor} ${vote.decision === "approve" ? "approved" : "denied"}${vote.signed ? " (signed)" : ""}`)
    .join(", ");
}

function setButtons(card, enabled) {
  card.approve.disabled = !enabled || !card.loaded;
  card.deny.disabled = !enabled || !card.loaded;
}

function showCardResult(card, text, bad) {
  card.result.textContent = text;
  card.result.classList.toggle("bad", bad);
  card.result.hidden = false;
}

async function decide(card, approve) {
  if (card.busy) return;
  card.busy = true;
  setButtons(card, false);
  const verb = approve ? "approve" : "deny";
  const reason = card.reason.value.trim();
  try {
    const { body } = await api(`/api/approvals/${encodeURIComponent(card.record.id)}/${verb}`, {
      method: "POST",
      body: reason ? { reason } : {},
    });
    card.votes.textContent = votesText(body.votes);
    if (body.status === "pending") {
      // A vote towards a quorum: the request waits for the other approvers.
      const yes = (body.votes || []).filter((vote) => vote.decision === "approve").length;
      const text = `Your vote is in for ${describe(body)}: ${yes} of ${body.quorum} approvals; it runs once the others approve.`;
      showCardResult(card, text, false);
      notice(text);
      card.decided = true;
      scheduleRefresh();
      return;
    }
    const done = approve ? "Approved" : "Denied";
    const text = body.changed === false ? `Already ${done.toLowerCase()}: ${describe(body)}` : `${done} ${describe(body)}`;
    showCardResult(card, text, false);
    notice(text + (approve ? ": the agent's identical retry may now run once." : "."));
    card.decided = true;
  } catch (error) {
    if (error.status === 401) return;
    const now = error.body && error.body.approval ? ` It is now ${error.body.approval.status}.` : "";
    const text = `Could not ${verb} ${describe(card.record)}: ${error.message}.${now}`;
    showCardResult(card, text, true);
    notice(text, true);
    card.busy = false;
    setButtons(card, error.status !== 409);
  }
  scheduleRefresh();
}

function removeCard(id) {
  const card = state.cards.get(id);
  if (!card) return;
  const hadFocus = card.root.contains(document.activeElement);
  card.root.remove();
  state.cards.delete(id);
  if (!card.decided && state.firstListDone) {
    notice(`${describe(card.record)} is no longer pending (see Recent decisions).`);
  }
  if (hadFocus) byId("pending-heading").focus();
}

async function refreshPending() {
  const run = ++state.listRun;
  let records;
  try {
    ({ body: { approvals: records } } = await api("/api/approvals?status=pending"));
  } catch (error) {
    if (error.status === 401) return;
    const box = byId("pending-error");
    box.textContent = `Could not load pending requests: ${error.message}`;
    box.hidden = false;
    return;
  }
  if (run !== state.listRun) return; // a newer refresh is under way
  byId("pending-error").hidden = true;
  const ids = new Set(records.map((r) => r.id));
  for (const id of [...state.cards.keys()]) if (!ids.has(id)) removeCard(id);

  const list = byId("pending-list");
  const fresh = records
    .filter((r) => !state.cards.has(r.id))
    .sort((a, b) => parseTime(a.created_at) - parseTime(b.created_at)); // prepend oldest first: newest ends on top
  for (const record of fresh) {
    const card = buildCard(record);
    state.cards.set(record.id, card);
    if (state.firstListDone) card.root.classList.add("is-new");
    list.prepend(card.root);
    loadDetails(card);
  }
  for (const record of records) if (state.cards.has(record.id)) updateCard(state.cards.get(record.id), record);
  if (state.firstListDone && fresh.length) {
    announce(
      fresh.length === 1
        ? `New approval request: ${fresh[0].tool} on ${fresh[0].server}`
        : `${fresh.length} new approval requests`,
    );
  }
  state.firstListDone = true;
  byId("pending-count").textContent = records.length ? `(${records.length})` : "";
  byId("pending-empty").hidden = records.length > 0;
  byId("stat-pending").textContent = String(records.length);
}

// -- history -----------------------------------------------------------------------------------------

function lastChange(record) {
  if (record.status === "consumed" && record.consumed_at) return record.consumed_at;
  if (record.status === "expired") {
    const at = parseTime(record.expires_at);
    return !Number.isNaN(at) && at < Date.now() ? record.expires_at : record.decided_at || record.created_at;
  }
  return record.decided_at || record.created_at;
}

function cell(row, label, content) {
  const td = el("td");
  td.dataset.label = label;
  if (content instanceof Node) td.append(content);
  else td.textContent = content === null || content === undefined ? "" : String(content);
  row.append(td);
}

async function refreshHistory() {
  let records;
  try {
    ({ body: { approvals: records } } = await api(HISTORY_QUERY));
  } catch (error) {
    return;
  }
  const recent = records
    .map((record) => ({ record, at: lastChange(record) }))
    .sort((a, b) => (parseTime(b.at) || 0) - (parseTime(a.at) || 0))
    .slice(0, HISTORY_LIMIT);
  const rows = recent.map(({ record, at }) => {
    const row = el("tr");
    row.dataset.approvalId = record.id;
    const when = el("span", "", ago(at));
    when.title = shortTime(at);
    cell(row, "When", when);
    cell(row, "Status", el("span", `badge ${record.status}`, record.status));
    cell(row, "Tool", record.tool);
    cell(row, "Server", record.server);
    cell(row, "Rule", record.rule);
    cell(row, "By", record.decided_by || "–");
    cell(row, "Reason", record.reason || "");
    return row;
  });
  byId("history-rows").replaceChildren(...rows);
  byId("history-table").hidden = rows.length === 0;
  byId("history-empty").hidden = rows.length > 0;
}

// -- status strip ------------------------------------------------------------------------------------

async function refreshStatus() {
  try {
    const { body } = await api("/api/status");
    byId("stat-proxies").textContent = String(body.proxies_alive);
    const calls = body.calls_last_hour || {};
    byId("stat-calls").textContent =
      `${calls.allowed || 0} allowed, ${calls.denied || 0} denied, ${calls.approval_required || 0} held`;
    byId("stat-pending").textContent = String(body.pending);
  } catch (error) {
    // the next tick tries again; a lost session already went to /login
  }
}

// -- live updates ------------------------------------------------------------------------------------

function refreshAll() {
  refreshPending();
  refreshHistory();
  refreshStatus();
}

function scheduleRefresh() {
  if (state.refetchTimer !== null) return;
  state.refetchTimer = window.setTimeout(() => {
    state.refetchTimer = null;
    refreshAll();
  }, EVENT_DEBOUNCE_MS);
}

function setConnection(name, text) {
  const node = byId("connection");
  node.dataset.state = name;
  node.textContent = text;
}

function connectEvents() {
  if (state.events) state.events.close();
  setConnection("connecting", "connecting…");
  const source = new EventSource("/api/events/stream");
  state.events = source;
  source.addEventListener("open", () => {
    state.reconnectMs = RECONNECT_FIRST_MS;
    setConnection("live", "live");
    refreshAll(); // whatever happened while we were not listening
  });
  for (const type of APPROVAL_EVENTS) source.addEventListener(type, scheduleRefresh);
  source.addEventListener("tool_call", () => window.setTimeout(refreshStatus, EVENT_DEBOUNCE_MS));
  source.addEventListener("error", () => {
    source.close();
    if (state.events !== source) return;
    state.events = null;
    setConnection("reconnecting", `reconnecting in ${Math.round(state.reconnectMs / 1000)}s…`);
    window.clearTimeout(state.reconnectTimer);
    state.reconnectTimer = window.setTimeout(async () => {
      try {
        await api("/api/session"); // a lost session goes to /login instead of retrying forever
      } catch (error) {
        if (error.status === 401) return;
      }
      connectEvents();
    }, state.reconnectMs);
    state.reconnectMs = Math.min(state.reconnectMs * 2, RECONNECT_MAX_MS);
  });
}

// -- mask toggle -------------------------------------------------------------------------------------

function setupMask() {
  const toggle = byId("mask-secrets");
  let stored = false;
  try {
    stored = window.localStorage.getItem(MASK_STORAGE_KEY) === "1";
  } catch (error) {
    stored = false;
  }
  toggle.checked = stored;
  const apply = () => {
    document.body.classList.toggle("masked", toggle.checked);
    try {
      window.localStorage.setItem(MASK_STORAGE_KEY, toggle.checked ? "1" : "0");
    } catch (error) {
      // private mode: the toggle still works for this page
    }
  };
  toggle.addEventListener("change", apply);
  apply();
}

// -- start -------------------------------------------------------------------------------------------

async function start() {
  setupMask();
  let session;
  try {
    ({ body: session } = await api("/api/session"));
  } catch (error) {
    if (error.status !== 401) {
      const box = byId("pending-error");
      box.textContent = `Could not reach the console: ${error.message}`;
      box.hidden = false;
    }
    return;
  }
  state.csrf = session.csrf;
  byId("actor").textContent = session.actor + (session.bound_to_person ? "" : " (admin token)");
  byId("logout-csrf").value = session.csrf || "";
  refreshAll();
  connectEvents();
  window.setInterval(() => {
    for (const card of state.cards.values()) tickCard(card);
  }, 1000);
  window.setInterval(() => {
    refreshStatus();
    refreshPending();
  }, REFRESH_MS);
  window.setInterval(refreshHistory, REFRESH_MS * 4); // its "ago" column
}

document.addEventListener("DOMContentLoaded", start);
