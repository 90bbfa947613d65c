// agenthub dashboard: one vanilla ES2020 file, no build step, no external assets.
//
// Data flow: REST (`/api/v1/...`, bearer token) loads what a page shows; one hub-wide Server-Sent Events stream
// (`/events/stream`) keeps it live. The stream's event ids are "<discovery seq>.<activity seq>"; the page keeps
// the newest position it has applied and, when the connection drops, reopens the stream itself with
// `last_event_id=` so every event after it arrives exactly once. Events at or behind that position, and
// discoveries already held (by id), are ignored, so a replay never shows anything twice.
//
// Everything the API returns is put in the page as text (never as HTML).
"use strict";

(() => {
  const TOKEN_KEY = "agenthub.token";
  const DISCOVERY_TYPES = ["pattern", "anomaly", "connection", "solution", "question", "insight"];
  const AGENT_STATES = ["created", "starting", "running", "idle", "busy", "stopping", "stopped", "error", "failed"];
  const TASK_STATES = ["bidding", "assigned", "running", "completed", "failed", "cancelled", "expired"];
  const MAX_DISCOVERIES = 2000; // kept in memory; the oldest are forgotten first
  const MAX_ACTIVITY = 30; // recent events shown on the overview
  const THREAD_DEPTH = 25; // related_to links followed upwards
  const RECONNECT_MAX_MS = 15000;

  // -- small DOM helpers ---------------------------------------------------------------------------------------

  /** Create an element: attrs are attributes, except on* (listeners) and a few properties; children are nodes,
   * strings (as text) or arrays of them; null/undefined/false children are skipped. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (key === "value" || key === "checked" || key === "selected") el[key] = value;
      else if (key === "class") el.className = value;
      else if (key === "style") el.style.cssText = value; // CSSOM: allowed by the page's CSP, unlike an attribute
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** Replace an element's children (with `append`'s rules: arrays flattened, null skipped). */
  function setChildren(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 2) return "just now";
    if (seconds < 90) return `${seconds} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400 * 2) return `${Math.round(seconds / 3600)} h ago`;
    return fmtTime(iso);
  }

  /** A <time> whose text is kept relative ("12 s ago") by the ticker. */
  function relTime(iso) {
    return h("time", { datetime: iso || "", "data-relative": iso || "", title: fmtTime(iso) }, ago(iso));
  }

  function fmtNumber(n, digits = 0) {
    if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
  }

  function newKey() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context; this does not
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  const splitList = (s) => String(s || "").split(",").map((x) => x.trim()).filter(Boolean);
  const shorten = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
  const badge = (kind, value) => h("span", { class: `badge ${kind}-${value}` }, value);
  const json = (value) => h("pre", { class: "json" }, JSON.stringify(value, null, 2));

  // -- state -------------------------------------------------------------------------------------------------

  const store = {
    token: sessionStorage.getItem(TOKEN_KEY),
    whoami: null,
    metrics: null,
    discoveries: new Map(), // discovery_id -> discovery
    agents: new Map(), // agent_id -> AgentInfo
    agentsLoaded: false,
    tasks: new Map(), // task_id -> TaskInfo
    tasksLoaded: false,
    activity: [], // newest first: {kind, at, text, href}
  };

  const role = () => (store.whoami && store.whoami.role) || "viewer";
  const canWrite = () => role() !== "viewer";
  const isOperator = () => role() === "operator";
  const ownAgent = () => (store.whoami && store.whoami.agent_id) || null;
  const canActAs = (id) => isOperator() || (role() === "agent" && id === ownAgent());
  const discoveryId = (d) => d.discovery_id || d.id;
  const discoveryTime = (d) => d.timestamp || d.created_at;

  // -- API ---------------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, title, detail) {
      super(detail);
      this.status = status;
      this.title = title;
      this.detail = detail;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (store.token) headers.Authorization = `Bearer ${store.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, { method, headers, cache: "no-store",
                                 body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, "Network error", `the hub did not answer (${err.message})`);
    }
    let data = null;
    if ((resp.headers.get("content-type") || "").includes("json")) {
      try { data = await resp.json(); } catch (_) { data = null; }
    }
    if (!resp.ok) {
      const detail = (data && (data.detail || data.title)) || `${resp.status} ${resp.statusText}`;
      const error = new ApiError(resp.status, (data && data.title) || resp.statusText, detail);
      if (resp.status === 401 && store.whoami) signOut(`Signed out: ${detail}`);
      throw error;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // -- live updates ------------------------------------------------------------------------------------------

  const stream = {
    source: null,
    pos: null, // {d, e}: the newest event applied; null until the first `connected`
    timer: null,
    failures: 0,
    connects: 0,
  };

  function setStreamStatus(state, text) {
    const el = $("#stream-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text || state;
  }

  function openStream() {
    closeStream();
    const params = new URLSearchParams();
    if (store.token) params.set("access_token", store.token);
    if (stream.pos) params.set("last_event_id", `${stream.pos.d}.${stream.pos.e}`);
    const url = `/events/stream?${params}`;
    const source = new EventSource(url);
    stream.source = source;
    setStreamStatus("connecting", "connecting…");
    const mine = (fn) => (ev) => { if (stream.source === source) fn(ev); };
    source.addEventListener("connected", mine(onConnected));
    source.addEventListener("metrics_update", mine((ev) => onMetrics(JSON.parse(ev.data))));
    for (const kind of ["discovery", "agent", "task", "bid", "transfer", "approval"]) {
      source.addEventListener(kind, mine((ev) => onStreamEvent(kind, ev)));
    }
    // The browser would reconnect by itself, but only from the last id *it* saw; reconnecting here resumes from
    // the position this page has applied, with a backoff.
    source.onerror = mine(() => {
      closeStream();
      stream.failures += 1;
      setStreamStatus("offline", "reconnecting…");
      diagnoseStream(url).then((status) => {
        if (status === 401) {
          signOut("Signed out: the hub no longer accepts this token.");
          return;
        }
        if (status === 400 && stream.pos) {
          // The hub refuses our position (its log was reset, say): start afresh and reload what is shown.
          stream.pos = null;
          store.discoveries.clear();
        }
        const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** Math.min(stream.failures, 5));
        setStreamStatus("offline", `reconnecting in ${Math.round(delay / 1000)} s`);
        scheduleStream(delay);
      });
    });
  }

  /** Why the stream failed: the status of the same request made with HEAD (0 when the hub did not answer). */
  async function diagnoseStream(url) {
    try {
      return (await fetch(url, { method: "HEAD", cache: "no-store" })).status;
    } catch (_) {
      return 0;
    }
  }

  function closeStream() {
    clearTimeout(stream.timer);
    stream.timer = null;
    if (stream.source) stream.source.close();
    stream.source = null;
  }

  function scheduleStream(delay) {
    clearTimeout(stream.timer);
    stream.timer = setTimeout(openStream, delay);
  }

  function onConnected(ev) {
    const data = JSON.parse(ev.data || "{}");
    stream.failures = 0;
    stream.connects += 1;
    setStreamStatus("live", "live");
    if (stream.pos === null) {
      // A fresh start: the stream brings what happens from now on; REST brings the latest before it.
      stream.pos = { d: Number(data.discovery_cursor) || 0, e: Number(data.activity_cursor) || 0 };
      loadLatestDiscoveries(stream.pos.d).catch(showGlobalError);
      if (stream.connects > 1) route(); // started afresh after a refused resume: the page loads again
    }
    // On a resume the hub replays everything after our position: nothing to reload.
  }

  function onStreamEvent(kind, ev) {
    const [d, e] = String(ev.lastEventId || "").split(".").map(Number);
    const data = JSON.parse(ev.data);
    if (stream.pos && Number.isFinite(d) && Number.isFinite(e)) {
      const seen = kind === "discovery" ? d <= stream.pos.d : e <= stream.pos.e;
      if (seen) return; // a replayed event this page has applied already
      stream.pos = { d: Math.max(stream.pos.d, d), e: Math.max(stream.pos.e, e) };
    }
    switch (kind) {
      case "discovery": addDiscoveries([data.discovery || data], true); break;
      case "agent": applyAgentEvent(data); break;
      case "task": applyTaskEvent(data); break;
      case "bid": applyBidEvent(data); break;
      case "transfer": break;
      default: break;
    }
    noteActivity(kind, data);
    notify(kind, data);
  }

  function onMetrics(metrics) {
    store.metrics = metrics;
    showPendingApprovals(metrics.approvals ? metrics.approvals.pending : 0);
    notify("metrics", metrics);
  }

  // -- the store's updates -----------------------------------------------------------------------------------

  function addDiscoveries(items, live) {
    const added = [];
    for (const d of items) {
      const id = discoveryId(d);
      if (!id || store.discoveries.has(id)) continue;
      store.discoveries.set(id, d);
      added.push(d);
    }
    if (store.discoveries.size > MAX_DISCOVERIES) {
      const oldest = sortedDiscoveries().slice(MAX_DISCOVERIES);
      for (const d of oldest) store.discoveries.delete(discoveryId(d));
    }
    if (added.length && !live) notify("discoveries-loaded", added);
    return added;
  }

  function sortedDiscoveries() {
    return Array.from(store.discoveries.values()).sort((a, b) => b.sequence - a.sequence);
  }

  async function loadLatestDiscoveries(cursor) {
    const page = await api("GET", `/api/v1/discoveries?cursor=${Math.max(0, cursor - 100)}&limit=100`);
    addDiscoveries(page.items, false);
  }

  async function loadOlderDiscoveries() {
    const list = sortedDiscoveries();
    const oldest = list.length ? list[list.length - 1].sequence : (stream.pos ? stream.pos.d + 1 : 1);
    if (oldest <= 1) return 0;
    const limit = Math.min(100, oldest - 1);
    const page = await api("GET", `/api/v1/discoveries?cursor=${oldest - 1 - limit}&limit=${limit}`);
    return addDiscoveries(page.items, false).length;
  }

  async function fetchDiscovery(id) {
    if (store.discoveries.has(id)) return store.discoveries.get(id);
    const d = await api("GET", `/api/v1/discoveries/${enc(id)}`);
    return d;
  }

  async function loadAgents() {
    const list = await api("GET", "/api/v1/agents");
    store.agents = new Map(list.agents.map((a) => [a.agent_id, a]));
    store.agentsLoaded = true;
    notify("agents-loaded");
  }

  async function loadAgent(id) {
    const agent = await api("GET", `/api/v1/agents/${enc(id)}`);
    store.agents.set(agent.agent_id, agent);
    return agent;
  }

  async function loadTasks() {
    const list = await api("GET", "/api/v1/tasks?limit=200");
    store.tasks = new Map(list.tasks.map((t) => [t.task_id, t]));
    store.tasksLoaded = true;
    notify("tasks-loaded");
  }

  async function loadTask(id) {
    const task = await api("GET", `/api/v1/tasks/${enc(id)}`);
    store.tasks.set(task.task_id, task);
    return task;
  }

  /** Calls `fn(key)` once per key at most every `ms`, the last request winning. */
  function debouncer(ms) {
    const timers = new Map();
    return (key, fn) => {
      clearTimeout(timers.get(key));
      timers.set(key, setTimeout(() => { timers.delete(key); fn(key); }, ms));
    };
  }
  const refetchSoon = debouncer(150);

  function applyAgentEvent(ev) {
    const agent = store.agents.get(ev.agent_id);
    if (agent && ev.to_state) agent.state = ev.to_state;
    if (agent && ev.kind === "restart") agent.restarts = (agent.restarts || 0) + 1;
    if (current.wantsAgents || current.wantsAgent === ev.agent_id) {
      refetchSoon(`agent:${ev.agent_id}`, () => loadAgent(ev.agent_id).then(
        () => notify("agent-loaded", ev.agent_id),
        (err) => { if (err.status === 404) { store.agents.delete(ev.agent_id); notify("agents-loaded"); } }));
    }
  }

  function applyTaskEvent(ev) {
    const task = store.tasks.get(ev.task_id);
    if (task && ev.to_state) task.state = ev.to_state;
    if (current.wantsTasks || current.wantsTask === ev.task_id) {
      refetchSoon(`task:${ev.task_id}`, () => loadTask(ev.task_id).then(
        () => notify("task-loaded", ev.task_id), () => {}));
    }
  }

  function applyBidEvent(ev) {
    const task = store.tasks.get(ev.task_id);
    if (task && Number(ev.bid_count) > (task.bid_count || 0)) task.bid_count = Number(ev.bid_count);
  }

  function noteActivity(kind, data) {
    let text;
    let href = null;
    switch (kind) {
      case "discovery": {
        const d = data.discovery || data;
        text = `${d.agent_id} shared a ${d.discovery_type}: ${shorten(d.content || "", 80)}`;
        href = `#/discoveries/${enc(discoveryId(d))}`;
        break;
      }
      case "agent":
        text = `agent ${data.agent_id}: ${data.kind}${data.to_state ? ` → ${data.to_state}` : ""}` +
               `${data.detail ? ` (${shorten(data.detail, 80)})` : ""}`;
        href = `#/agents/${enc(data.agent_id)}`;
        break;
      case "task":
        text = `task ${data.task_id}: ${data.kind}${data.to_state ? ` → ${data.to_state}` : ""}`;
        href = `#/tasks/${enc(data.task_id)}`;
        break;
      case "bid":
        text = `task ${data.task_id}: ${data.bid_count} sealed bid${data.bid_count === 1 ? "" : "s"}`;
        href = `#/tasks/${enc(data.task_id)}`;
        break;
      case "approval":
        text = `approval ${data.approval_id} ${data.change === "requested" ? `requested by ${data.requested_by}` :
          `${data.state} by ${data.decided_by}`}: ${shorten(data.reason || "", 80)}`;
        href = "#/approvals";
        break;
      case "transfer":
        text = `${data.kind}: ${(data.postings || []).map((p) => `${p.account_id} ${p.amount > 0 ? "+" : ""}${p.amount}`)
          .join(", ")}`;
        break;
      default:
        return;
    }
    store.activity.unshift({ kind, at: data.at || new Date().toISOString(), text, href });
    store.activity.length = Math.min(store.activity.length, MAX_ACTIVITY);
  }

  // -- pages and routing -------------------------------------------------------------------------------------

  let current = { el: null }; // the page on screen: {el, onEvent(kind, data), dispose(), wantsAgent, wantsTask}

  function notify(kind, data) {
    if (current.onEvent) {
      try { current.onEvent(kind, data); } catch (err) { console.error(err); }
    }
  }

  const ROUTES = [
    [/^\/?$/, () => overviewPage(), "overview"],
    [/^\/discoveries\/?$/, () => discoveriesPage(), "discoveries"],
    [/^\/discoveries\/(.+)$/, (m) => discoveryPage(m[1]), "discoveries"],
    [/^\/agents\/?$/, () => agentsPage(), "agents"],
    [/^\/agents\/(.+)$/, (m) => agentPage(m[1]), "agents"],
    [/^\/tasks\/?$/, () => tasksPage(), "tasks"],
    [/^\/tasks\/(.+)$/, (m) => taskPage(m[1]), "tasks"],
    [/^\/accounts\/?$/, () => accountsPage(), "accounts"],
    [/^\/accounts\/(.+)$/, (m) => accountPage(m[1]), "accounts"],
    [/^\/tokens\/?$/, () => tokensPage(), "tokens"],
    [/^\/approvals\/?$/, () => approvalsPage(), "approvals"],
    [/^\/consent\/(.+)$/, (m) => consentPage(m[1]), null],
  ];

  function route() {
    if (!store.whoami) return;
    const path = location.hash.replace(/^#/, "") || "/";
    if (!path.startsWith("/")) return; // an in-page anchor, not a route
    let page = null;
    let section = null;
    for (const [pattern, make, name] of ROUTES) {
      const m = path.match(pattern);
      if (m) {
        page = make(m.map((x, i) => (i ? safeDecode(x) : x)));
        section = name;
        break;
      }
    }
    if (!page) page = notFoundPage(path);
    if (current.dispose) current.dispose();
    current = page;
    const view = $("#view");
    setChildren(view, page.el);
    for (const a of $$("#nav a")) {
      if (a.dataset.route === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const title = $("h1", page.el);
    document.title = `${title ? title.textContent : "agenthub"} · agenthub`;
    if (routedOnce) {
      view.focus({ preventScroll: true }); // where a keyboard or screen reader user goes on
      window.scrollTo(0, 0);
    }
    routedOnce = true;
  }
  let routedOnce = false;

  function safeDecode(s) {
    try { return decodeURIComponent(s); } catch (_) { return s; }
  }

  function pageShell(title, ...children) {
    return h("section", { class: "page" }, h("h1", {}, title), ...children);
  }

  function notFoundPage(path) {
    return { el: pageShell("Not found", h("p", {}, `Nothing lives at ${path}. `, h("a", { href: "#/" }, "Overview"))) };
  }

  function loadingNote() {
    return h("p", { class: "muted" }, "Loading…");
  }

  function errorNote(err) {
    return h("p", { class: "error", role: "alert" }, err.detail || err.message || String(err));
  }

  function showGlobalError(err) {
    const box = $("#global-error") || h("p", { id: "global-error", class: "error banner", role: "alert" });
    box.textContent = err.detail || err.message || String(err);
    if (!box.isConnected) $("#view").prepend(box);
  }

  // -- forms -------------------------------------------------------------------------------------------------

  function field(label, input, hint) {
    const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
    input.id = id;
    const hintEl = hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null;
    if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
    return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl);
  }

  function select(name, options, value) {
    return h("select", { name }, options.map((o) => {
      const [v, label] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, label);
    }));
  }

  /** A form that writes: submit runs `action(form)`, shows a problem's detail next to the form, disables its
   * buttons meanwhile. Marked data-write so a viewer's page can be checked for having none. */
  function writeForm(attrs, children, action) {
    const status = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    const form = h("form", { ...attrs, "data-write": "", novalidate: true }, children, status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      await runAction(form, status, () => action(form));
    });
    return form;
  }

  /** Run a write once at a time per form or button. Buttons are marked aria-disabled rather than disabled
   * meanwhile, so keyboard focus stays where it was. */
  async function runAction(container, status, action) {
    if (container.dataset.busy) return;
    container.dataset.busy = "1";
    const buttons = $$("button", container);
    status.textContent = "";
    status.classList.remove("error", "ok");
    buttons.forEach((b) => b.setAttribute("aria-disabled", "true"));
    try {
      const message = await action();
      if (message) {
        status.textContent = message;
        status.classList.add("ok");
      }
    } catch (err) {
      status.textContent = err.detail || err.message || String(err);
      status.classList.add("error");
    } finally {
      delete container.dataset.busy;
      buttons.forEach((b) => b.removeAttribute("aria-disabled"));
    }
  }

  /** A button that writes; a problem's detail goes to `statusEl` (a shared line, e.g. above a table whose rows
   * are re-rendered) or to a status line beside the button. */
  function actionButton(label, action, attrs = {}, statusEl = null) {
    const status = statusEl || h("span", { class: "form-status", role: "status", "aria-live": "polite" });
    const button = h("button", { type: "button", ...attrs }, label);
    const wrap = h("span", { class: "action", "data-write": "" }, button, statusEl ? null : status);
    button.addEventListener("click", () => runAction(wrap, status, action));
    return wrap;
  }

  /** Re-render `container` with `build()`, giving focus back to the element with the same data-focus-key. */
  function rerender(container, build) {
    const active = document.activeElement;
    const key = active && container.contains(active) ? active.dataset.focusKey : null;
    build();
    if (key) {
      const again = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
      if (again) again.focus();
    }
  }

  function parseJsonField(form, name, what) {
    const raw = form.elements[name].value.trim();
    if (!raw) return undefined;
    try {
      const value = JSON.parse(raw);
      if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("not an object");
      return value;
    } catch (err) {
      throw new Error(`${what} must be a JSON object (${err.message})`);
    }
  }

  function numberOf(form, name, what) {
    const raw = form.elements[name].value.trim();
    const value = Number(raw);
    if (!raw || !Number.isFinite(value)) throw new Error(`${what} must be a number`);
    return value;
  }

  // -- overview ----------------------------------------------------------------------------------------------

  function overviewPage() {
    const tiles = h("div", { class: "tiles" });
    const activity = h("ol", { class: "activity" });
    const el = pageShell("Overview", tiles,
      h("section", { class: "panel" }, h("h2", {}, "Latest activity"), activity));

    function render() {
      const m = store.metrics;
      if (!m) {
        setChildren(tiles, loadingNote());
        return;
      }
      const agents = m.agents || {};
      const tasks = (m.tasks && m.tasks.by_state) || {};
      const discoveries = m.discoveries || {};
      const health = m.health || {};
      const suspended = typeof m.heartbeats === "string" && m.heartbeats.startsWith("suspended");
      const pending = (m.approvals && m.approvals.pending) || 0;
      setChildren(tiles, 
        tile("Agents", "agents", fmtNumber(agents.total), suspended ? `Heartbeats ${m.heartbeats}` :
             `${fmtNumber(agents.busy)} busy, ${fmtNumber(agents.idle)} idle`,
             stateBars(agents.by_state || {}, AGENT_STATES, "agent"), suspended ? "warn" : null),
        tile("Discoveries", "discoveries", fmtNumber(discoveries.total), "per minute, by type",
             perMinuteChart(discoveries.per_minute || [], m.timestamp)),
        tile("Tasks", "tasks", fmtNumber(Object.values(tasks).reduce((a, b) => a + b, 0)), "by state",
             stateBars(tasks, TASK_STATES, "task")),
        tile("Approvals", "approvals", fmtNumber(pending), h("a", { href: "#/approvals" },
             pending ? "waiting for an operator" : "none pending"), null, pending ? "warn" : null),
        tile("Stream clients", "sse", fmtNumber(m.sse_clients), "connected SSE clients"),
        tile("Open breakers", "breakers", fmtNumber(m.open_breakers),
             m.open_breakers ? "agents get no routed work" : "all closed", null,
             m.open_breakers ? "warn" : null),
        tile("NATS", "nats", healthText(health.nats),
             `${fmtNumber(m.nats && m.nats.messages_per_sec, 1)} msg/s, ` +
             `${fmtNumber(m.nats && m.nats.connections)} connections`, null, healthClass(health.nats)),
        tile("PostgreSQL", "postgres", healthText(health.postgres), health.postgres === "ok" ? "reachable" :
             (health.postgres || "unknown"), null, healthClass(health.postgres)),
        tile("Hub process", "process", `${fmtNumber(m.system && m.system.cpu_percent, 1)} % CPU`,
             `${fmtNumber(m.system && m.system.memory_mb, 1)} MB memory`),
      );
      tiles.append(h("p", { class: "muted updated" }, "Updated ", relTime(m.timestamp)));
    }

    function renderActivity() {
      setChildren(activity, ...(store.activity.length ? store.activity.map((a) => h("li", { class: `act-${a.kind}` },
        relTime(a.at), " ", a.href ? h("a", { href: a.href }, a.text) : a.text)) :
        [h("li", { class: "muted" }, "Nothing yet: events appear here as they happen.")]));
    }

    render();
    renderActivity();
    return {
      el,
      onEvent(kind) {
        if (kind === "metrics") render();
        else if (["discovery", "agent", "task", "bid", "transfer", "approval"].includes(kind)) renderActivity();
      },
    };
  }

  function healthText(value) {
    if (value === undefined) return "—";
    return value === "ok" ? "OK" : "Down";
  }

  function healthClass(value) {
    if (value === undefined) return null;
    return value === "ok" ? "good" : "bad";
  }

  function tile(title, key, value, caption, extra, tone) {
    return h("article", { class: `tile${tone ? ` tone-${tone}` : ""}`, "data-tile": key },
      h("h2", {}, title), h("p", { class: "tile-value" }, value), h("p", { class: "tile-caption" }, caption), extra);
  }

  function stateBars(counts, order, kind) {
    const names = [...order.filter((s) => s in counts), ...Object.keys(counts).filter((s) => !order.includes(s))];
    const max = Math.max(1, ...names.map((s) => counts[s]));
    if (!names.length) return h("p", { class: "muted" }, "none");
    return h("ul", { class: "bars" }, names.map((s) => h("li", {},
      h("span", { class: "bar-label" }, s),
      h("span", { class: "bar-track", "aria-hidden": "true" },
        h("span", { class: `bar-fill ${kind}-${s}`, style: `width:${(100 * counts[s]) / max}%` })),
      h("span", { class: "bar-value" }, fmtNumber(counts[s])))));
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  /** Stacked bars for the last 15 minutes (one slot a minute, the newest on the right), coloured by discovery
   * type, with a legend and a text alternative. */
  function perMinuteChart(perMinute, timestamp) {
    const SLOTS = 15;
    const floor = (t) => Math.floor(new Date(t).getTime() / 60000);
    const last = timestamp ? floor(timestamp) : Math.max(...perMinute.map((m) => floor(m.minute)), floor(Date.now()));
    const slots = Array.from({ length: SLOTS }, () => ({}));
    for (const m of perMinute) {
      const index = SLOTS - 1 - (last - floor(m.minute));
      if (index >= 0 && index < SLOTS) slots[index] = m.by_type || {};
    }
    const totals = slots.map((byType) => Object.values(byType).reduce((a, b) => a + b, 0));
    const max = Math.max(1, ...totals);
    const width = 300;
    const height = 80;
    const slot = width / SLOTS;
    const sum = totals.reduce((a, b) => a + b, 0);
    const label = `${sum} discoveries in the last ${SLOTS} minutes, at most ${Math.max(...totals)} in one minute`;
    const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height + 2}`, role: "img",
                                "aria-label": label, preserveAspectRatio: "none" }, svg("title", {}, label));
    chart.append(svg("line", { x1: 0, y1: height + 1, x2: width, y2: height + 1, class: "axis" }));
    slots.forEach((byType, i) => {
      let y = height;
      for (const type of DISCOVERY_TYPES) {
        const n = byType[type] || 0;
        if (!n) continue;
        const barH = (height * n) / max;
        y -= barH;
        const minutesAgo = SLOTS - 1 - i;
        chart.append(svg("rect", { x: i * slot + 1, y, width: Math.max(1, slot - 2), height: barH,
                                   class: `fill-${type}` },
                         svg("title", {}, `${minutesAgo ? `${minutesAgo} min ago` : "this minute"}: ${n} ${type}`)));
      }
    });
    const seen = DISCOVERY_TYPES.filter((t) => slots.some((byType) => byType[t]));
    return h("figure", { class: "chart-figure" }, chart,
      h("div", { class: "chart-axis", "aria-hidden": "true" }, h("span", {}, `${SLOTS} min ago`), h("span", {}, "now")),
      h("figcaption", { class: "legend" }, seen.length ? seen.map((t) => h("span", { class: `key key-${t}` }, t))
        : "no discoveries lately"));
  }

  // -- discoveries -------------------------------------------------------------------------------------------

  const feedFilter = { type: "", role: "", agent: "", minConfidence: 0 };

  function matchesFilter(d) {
    return (!feedFilter.type || d.discovery_type === feedFilter.type) &&
      (!feedFilter.role || d.agent_role.toLowerCase().includes(feedFilter.role.toLowerCase())) &&
      (!feedFilter.agent || d.agent_id.toLowerCase().includes(feedFilter.agent.toLowerCase())) &&
      d.confidence >= feedFilter.minConfidence;
  }

  function discoveryItem(d, extraClass) {
    const id = discoveryId(d);
    return h("li", { class: `discovery type-${d.discovery_type}${extraClass ? ` ${extraClass}` : ""}`,
                     "data-discovery-id": id },
      h("div", { class: "discovery-head" },
        badge("type", d.discovery_type),
        h("a", { href: `#/discoveries/${enc(id)}`, class: "discovery-link" }, `#${d.sequence}`),
        h("span", { class: "meta" }, "by ", h("a", { href: `#/agents/${enc(d.agent_id)}` }, d.agent_id),
          ` (${d.agent_role}) · confidence ${Number(d.confidence).toFixed(2)} · `, relTime(discoveryTime(d)))),
      h("p", { class: "discovery-content" }, shorten(d.content, 600)),
      (d.related_to || (d.tags && d.tags.length)) ? h("p", { class: "meta" },
        d.related_to ? ["in reply to ", h("a", { href: `#/discoveries/${enc(d.related_to)}` }, d.related_to)] : null,
        d.related_to && d.tags && d.tags.length ? " · " : null,
        d.tags && d.tags.length ? ["tags: ", d.tags.join(", ")] : null) : null);
  }

  function shareForm(relatedTo, onShared) {
    const own = ownAgent();
    const agentInput = h("input", { name: "agent_id", required: true, autocomplete: "off",
                                    value: own || "operator", readonly: own ? true : null,
                                    pattern: "[A-Za-z0-9_-]{1,64}" });
    return writeForm({ class: "card form-grid", "aria-label": relatedTo ? "Reply" : "Share a discovery" }, [
      field("Agent id", agentInput, own ? "your token acts as this agent" : null),
      field("Role", h("input", { name: "agent_role", required: true, value: own ? "agent" : "operator" })),
      field("Type", select("discovery_type", DISCOVERY_TYPES, relatedTo ? "solution" : "insight")),
      field("Confidence", h("input", { name: "confidence", type: "number", min: 0, max: 1, step: 0.05,
                                       value: "0.8", required: true })),
      h("div", { class: "field wide" }, field("Content", h("textarea", { name: "content", rows: 3, required: true }))),
      field("Related to", h("input", { name: "related_to", value: relatedTo || "", autocomplete: "off" }),
            "the id of the discovery this answers (optional)"),
      field("Tags", h("input", { name: "tags", autocomplete: "off" }), "comma separated"),
      h("div", { class: "actions" }, h("button", { type: "submit" }, relatedTo ? "Reply" : "Share")),
    ], async (form) => {
      const f = form.elements;
      const body = {
        agent_id: f.agent_id.value.trim(), agent_role: f.agent_role.value.trim(),
        discovery_type: f.discovery_type.value, content: f.content.value,
        confidence: numberOf(form, "confidence", "confidence"), tags: splitList(f.tags.value),
      };
      if (f.related_to.value.trim()) body.related_to = f.related_to.value.trim();
      const shared = await api("POST", "/api/v1/discoveries", body);
      f.content.value = "";
      if (onShared) onShared(shared);
      return `Shared #${shared.sequence} (${shared.discovery_id}).`;
    });
  }

  function discoveriesPage() {
    const list = h("ol", { class: "feed", "aria-label": "Discoveries, newest first" });
    const count = h("p", { class: "muted", role: "status" });
    const older = h("button", { type: "button", class: "secondary", hidden: true }, "Load older");
    const olderStatus = h("span", { class: "form-status", role: "status" });
    older.addEventListener("click", async () => {
      older.disabled = true;
      try {
        const n = await loadOlderDiscoveries();
        olderStatus.textContent = n ? "" : "No older discoveries.";
        renderList();
      } catch (err) {
        olderStatus.textContent = err.detail || err.message;
      } finally {
        older.disabled = false;
      }
    });

    const typeSel = select("type", [["", "all types"], ...DISCOVERY_TYPES], feedFilter.type);
    const roleIn = h("input", { name: "role", value: feedFilter.role, list: "roles-list", autocomplete: "off" });
    const agentIn = h("input", { name: "agent", value: feedFilter.agent, list: "agents-list", autocomplete: "off" });
    const confIn = h("input", { name: "min_confidence", type: "number", min: 0, max: 1, step: 0.05,
                                value: String(feedFilter.minConfidence) });
    const rolesList = h("datalist", { id: "roles-list" });
    const agentsList = h("datalist", { id: "agents-list" });
    const filters = h("form", { class: "filters", role: "search", "aria-label": "Filter discoveries" },
      field("Type", typeSel), field("Role", roleIn), field("Agent", agentIn), field("Min confidence", confIn),
      h("div", { class: "actions" }, h("button", { type: "reset", class: "secondary" }, "Clear")),
      rolesList, agentsList);
    const applyFilters = () => {
      feedFilter.type = typeSel.value;
      feedFilter.role = roleIn.value.trim();
      feedFilter.agent = agentIn.value.trim();
      feedFilter.minConfidence = Number(confIn.value) || 0;
      renderList();
    };
    filters.addEventListener("input", applyFilters);
    filters.addEventListener("change", applyFilters);
    filters.addEventListener("submit", (ev) => ev.preventDefault());
    filters.addEventListener("reset", () => setTimeout(applyFilters, 0));

    const share = canWrite() ? h("details", { class: "share" }, h("summary", {}, "Share a discovery"),
      shareForm(null, null)) : null;

    const el = pageShell("Discoveries", share, filters, count, list, h("p", {}, older, " ", olderStatus));

    function renderList() {
      const all = sortedDiscoveries();
      const shown = all.filter(matchesFilter);
      setChildren(list, ...shown.map((d) => discoveryItem(d)));
      if (!shown.length) list.append(h("li", { class: "muted empty" }, all.length ? "No discovery matches the filters."
        : "No discoveries yet."));
      count.textContent = `${shown.length} shown of ${all.length} loaded`;
      older.hidden = !all.length || all[all.length - 1].sequence <= 1;
      const roles = new Set(all.map((d) => d.agent_role));
      const agents = new Set(all.map((d) => d.agent_id));
      setChildren(rolesList, ...Array.from(roles, (r) => h("option", { value: r })));
      setChildren(agentsList, ...Array.from(agents, (a) => h("option", { value: a })));
    }

    renderList();
    return {
      el,
      onEvent(kind, data) {
        if (kind === "discovery") {
          const d = data.discovery || data;
          const id = discoveryId(d);
          // Already rendered (or filtered out): nothing to add. Otherwise put it in order without a full render.
          if (!matchesFilter(d) || list.querySelector(`[data-discovery-id="${CSS.escape(id)}"]`)) return;
          const empty = $(".empty", list);
          if (empty) empty.remove();
          const before = $$("[data-discovery-id]", list).find((li) =>
            store.discoveries.get(li.dataset.discoveryId)?.sequence < d.sequence);
          const item = discoveryItem(d, "fresh");
          if (before) list.insertBefore(item, before); else list.append(item);
          const all = store.discoveries.size;
          count.textContent = `${$$("[data-discovery-id]", list).length} shown of ${all} loaded`;
        } else if (kind === "discoveries-loaded") {
          renderList();
        }
      },
    };
  }

  function discoveryPage(id) {
    const body = h("div", {}, loadingNote());
    const replies = h("ol", { class: "feed replies", "aria-label": "Replies" });
    const el = pageShell(`Discovery ${id}`, h("p", {}, h("a", { href: "#/discoveries" }, "← All discoveries")), body);
    let loaded = null;

    function renderReplies() {
      const found = sortedDiscoveries().filter((d) => d.related_to === id).reverse();
      setChildren(replies, ...found.map((d) => discoveryItem(d)));
      if (!found.length) replies.append(h("li", { class: "muted empty" }, "No replies among the loaded discoveries."));
    }

    (async () => {
      try {
        const d = await fetchDiscovery(id);
        loaded = d;
        // Follow related_to upwards: the thread this one belongs to, root first.
        const ancestors = [];
        const seen = new Set([id]);
        let parentId = d.related_to;
        let cut = null;
        while (parentId && ancestors.length < THREAD_DEPTH && !seen.has(parentId)) {
          seen.add(parentId);
          try {
            const parent = await fetchDiscovery(parentId);
            ancestors.unshift(parent);
            parentId = parent.related_to;
          } catch (err) {
            cut = `${parentId}: ${err.detail || err.message}`;
            break;
          }
        }
        if (parentId && !cut && ancestors.length >= THREAD_DEPTH) cut = "the thread goes further up";
        renderReplies();
        setChildren(body, 
          h("section", { class: "panel" }, h("h2", {}, "Thread"),
            cut ? h("p", { class: "muted" }, `Earlier: ${cut}`) : null,
            h("ol", { class: "feed thread" }, ancestors.map((a) => discoveryItem(a, "ancestor")),
              discoveryItem(d, "current"))),
          h("section", { class: "panel" }, h("h2", {}, "Full content"),
            h("p", { class: "full-content" }, d.content),
            h("dl", { class: "facts" },
              fact("Id", discoveryId(d)), fact("Sequence", d.sequence), fact("Agent", d.agent_id),
              fact("Role", d.agent_role), fact("Type", d.discovery_type), fact("Confidence", d.confidence),
              fact("Tags", (d.tags || []).join(", ") || "—"), fact("Shared", fmtTime(discoveryTime(d))))),
          h("section", { class: "panel" }, h("h2", {}, "Replies"), replies,
            canWrite() ? h("details", { class: "share" }, h("summary", {}, "Reply"), shareForm(id, null)) : null));
      } catch (err) {
        setChildren(body, errorNote(err));
      }
    })();

    return {
      el,
      onEvent(kind, data) {
        if (!loaded) return;
        if (kind === "discovery" && (data.discovery || data).related_to === id) renderReplies();
        if (kind === "discoveries-loaded") renderReplies();
      },
    };
  }

  function fact(term, value) {
    return [h("dt", {}, term), h("dd", {}, value instanceof Node || Array.isArray(value) ? value :
      (value === null || value === undefined || value === "" ? "—" : String(value)))];
  }

  // -- agents ------------------------------------------------------------------------------------------------

  function agentActions(agent, statusEl) {
    if (!isOperator()) return null;
    const id = agent.agent_id;
    const stopped = agent.desired === "stopped" || ["stopped", "failed"].includes(agent.state);
    const done = (updated) => {
      store.agents.set(updated.agent_id, { ...store.agents.get(updated.agent_id), ...updated });
      notify("agent-loaded", updated.agent_id);
    };
    return h("span", { class: "row-actions" },
      stopped ? null : actionButton("Stop", async () => done(await api("DELETE", `/api/v1/agents/${enc(id)}`)),
        { class: "danger small", "aria-label": `Stop ${id}`, "data-focus-key": `stop:${id}` }, statusEl),
      actionButton(stopped ? "Start again" : "Restart",
        async () => done(await api("POST", `/api/v1/agents/${enc(id)}/restart`)),
        { class: "secondary small", "aria-label": `Restart ${id}`, "data-focus-key": `restart:${id}` }, statusEl));
  }

  function spawnForm() {
    const executor = select("executor", [["scripted", "scripted"], ["wasm", "wasm"]], "scripted");
    const behaviour = select("behaviour", ["worker", "responder", "analyzer"], "worker");
    const text = h("textarea", { name: "text", rows: 2 });
    const scriptedOnly = [field("Behaviour", behaviour), h("div", { class: "field wide analyzer-only" },
      field("Text to analyse", text, "analyzer: one discovery per sentence"))];
    const toggle = () => {
      const scripted = executor.value === "scripted";
      for (const el of scriptedOnly) el.hidden = !scripted || (el.classList.contains("analyzer-only") &&
                                                               behaviour.value !== "analyzer");
    };
    executor.addEventListener("change", toggle);
    behaviour.addEventListener("change", toggle);
    const form = writeForm({ class: "card form-grid", id: "spawn-form", "aria-label": "Spawn an agent" }, [
      field("Agent id", h("input", { name: "agent_id", autocomplete: "off", pattern: "[A-Za-z0-9_-]{1,64}" }),
            "optional: a generated id otherwise"),
      field("Role", h("input", { name: "role", required: true, value: "worker" })),
      field("Capabilities", h("input", { name: "capabilities", autocomplete: "off" }), "comma separated"),
      field("Executor", executor),
      ...scriptedOnly,
      field("Restart policy", select("restart", ["permanent", "transient", "temporary"], "permanent")),
      h("div", { class: "field wide" }, field("Executor config (JSON)", h("textarea", { name: "executor_config",
        rows: 2, placeholder: '{"price_percent": 50}' }), "optional; merged over the fields above")),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Spawn")),
    ], async (f) => {
      const e = f.elements;
      const config = executor.value === "scripted" ? { behaviour: behaviour.value } : {};
      if (executor.value === "scripted" && behaviour.value === "analyzer" && text.value.trim()) config.text = text.value;
      Object.assign(config, parseJsonField(f, "executor_config", "executor config") || {});
      const body = { role: e.role.value.trim(), capabilities: splitList(e.capabilities.value),
                     executor: executor.value, executor_config: config,
                     restart_policy: { restart: e.restart.value } };
      if (e.agent_id.value.trim()) body.agent_id = e.agent_id.value.trim();
      const agent = await api("POST", "/api/v1/agents", body);
      store.agents.set(agent.agent_id, agent);
      notify("agents-loaded");
      e.agent_id.value = "";
      return `Spawned ${agent.agent_id} (${agent.state}).`;
    });
    toggle();
    return form;
  }

  function agentsPage() {
    const tbody = h("tbody");
    const actionStatus = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    const table = h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Agents table" },
      h("table", { class: "data", id: "agents-table" },
        h("caption", { class: "visually-hidden" }, "Agents, updated live"),
        h("thead", {}, h("tr", {}, ["Agent", "Role", "State", "Restarts", "Last heartbeat", "Breaker", "Executor",
          "Capabilities", isOperator() ? "Actions" : null].filter(Boolean).map((c) => h("th", { scope: "col" }, c)))),
        tbody));
    const status = h("div");
    const el = pageShell("Agents",
      isOperator() ? h("details", { class: "share" }, h("summary", {}, "Spawn an agent"), spawnForm()) : null,
      status, actionStatus, table);

    const render = () => rerender(tbody, () => {
      const agents = Array.from(store.agents.values()).sort((a, b) => a.agent_id.localeCompare(b.agent_id));
      setChildren(tbody, ...agents.map((a) => h("tr", { "data-agent-id": a.agent_id, "data-state": a.state },
        h("th", { scope: "row" }, h("a", { href: `#/agents/${enc(a.agent_id)}` }, a.agent_id)),
        h("td", {}, a.role),
        h("td", { class: "state-cell" }, badge("agent", a.state)),
        h("td", { class: "num" }, a.restarts),
        h("td", { class: "nowrap" }, relTime(a.last_heartbeat)),
        h("td", {}, badge("breaker", a.breaker_state || "closed")),
        h("td", {}, a.executor),
        h("td", {}, (a.capabilities || []).join(", ") || "—"),
        isOperator() ? h("td", {}, agentActions(a, actionStatus)) : null)));
      if (!agents.length) {
        tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, store.agentsLoaded ? "No agents." : "Loading…")));
      }
    });

    loadAgents().catch((err) => setChildren(status, errorNote(err)));
    render();
    return {
      el,
      wantsAgents: true,
      onEvent(kind) {
        if (kind === "agent" || kind === "agents-loaded" || kind === "agent-loaded") render();
        else if (kind === "metrics") loadAgents().catch(() => {}); // heartbeats are not events: refresh them
      },
    };
  }

  function agentPage(id) {
    const state = h("div", {}, loadingNote());
    const actionStatus = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    const actions = h("p", { class: "button-row" });
    const metrics = h("div");
    const config = h("div");
    const history = h("div");
    const el = pageShell(`Agent ${id}`, h("p", {}, h("a", { href: "#/agents" }, "← All agents")),
      h("section", { class: "panel" }, h("h2", {}, "State"), state, isOperator() ? [actions, actionStatus] : null),
      h("section", { class: "panel" }, h("h2", {}, "Metrics"), metrics),
      h("section", { class: "panel" }, h("h2", {}, "Configuration"), config),
      h("section", { class: "panel" }, h("h2", {}, "Event history"), history));
    let actionsSig = null;

    function render(agent) {
      setChildren(state, h("dl", { class: "facts" },
        fact("State", badge("agent", agent.state)), fact("Desired", agent.desired),
        fact("Role", agent.role), fact("Capabilities", (agent.capabilities || []).join(", ")),
        fact("Executor", agent.executor), fact("Process", agent.pid),
        fact("Restarts", agent.restarts), fact("Last heartbeat", relTime(agent.last_heartbeat)),
        fact("Breaker", badge("breaker", agent.breaker_state || "closed")),
        fact("Reputation", agent.reputation === null || agent.reputation === undefined ? null
          : Number(agent.reputation).toFixed(3)),
        fact("Last error", agent.last_error), fact("Binary version", agent.binary_version),
        fact("Owner", agent.owner), fact("Created", fmtTime(agent.created_at)),
        fact("Account", h("a", { href: `#/accounts/${enc(`agent:${agent.agent_id}`)}` }, `agent:${agent.agent_id}`))));
      const sig = `${agent.state}/${agent.desired}`;
      if (isOperator() && sig !== actionsSig) {
        actionsSig = sig;
        rerender(actions, () => setChildren(actions, agentActions(agent, actionStatus)));
      }
      const m = agent.metrics || {};
      setChildren(metrics, Object.keys(m).length ? h("dl", { class: "facts" },
        Object.entries(m).map(([k, v]) => fact(k.replace(/_/g, " "),
          typeof v === "number" ? fmtNumber(v, 2) : (typeof v === "object" && v !== null ? JSON.stringify(v) : v))))
        : h("p", { class: "muted" }, "No metrics reported yet."));
      setChildren(config, json({ executor_config: agent.executor_config, restart_policy: agent.restart_policy,
                                    heartbeat_seconds: agent.heartbeat_seconds }));
      setChildren(history, eventsTable(agent.recent_events || []));
    }

    const refresh = () => loadAgent(id).then(render, (err) => setChildren(state, errorNote(err)));
    refresh();
    return {
      el,
      wantsAgent: id,
      onEvent(kind, data) {
        if (kind === "agent-loaded" && data === id) render(store.agents.get(id));
        else if (kind === "metrics") refresh(); // heartbeats and metrics are not events
      },
    };
  }

  function eventsTable(events) {
    if (!events.length) return h("p", { class: "muted" }, "No events.");
    const sorted = events.slice().sort((a, b) => new Date(b.at) - new Date(a.at));
    return h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Event history" },
      h("table", { class: "data" },
        h("thead", {}, h("tr", {}, ["When", "Kind", "Change", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, sorted.map((e) => h("tr", {},
          h("td", { class: "nowrap" }, fmtTime(e.at)), h("td", {}, e.kind),
          h("td", { class: "nowrap" }, e.from_state || e.to_state ? `${e.from_state || "—"} → ${e.to_state || "—"}` : ""),
          h("td", { class: "detail" }, e.detail || ""))))));
  }

  // -- tasks -------------------------------------------------------------------------------------------------

  function bidsText(task) {
    const n = task.bid_count || 0;
    return task.state === "bidding" ? `${n} sealed bid${n === 1 ? "" : "s"}` : `${n} bid${n === 1 ? "" : "s"}`;
  }

  function submitTaskForm() {
    const own = ownAgent();
    return writeForm({ class: "card form-grid", id: "task-form", "aria-label": "Submit a task" }, [
      field("Requester", h("input", { name: "requester_id", required: true, autocomplete: "off",
                                      value: own || "", readonly: own ? true : null }),
            own ? "your token acts as this agent" : "pays from requester:<id>"),
      field("Budget", h("input", { name: "budget", type: "number", min: 1, step: 1, required: true, value: "100" }),
            "credits, held in escrow"),
      h("div", { class: "field wide" }, field("Description", h("textarea", { name: "description", rows: 2,
                                                                               required: true }))),
      field("Capabilities", h("input", { name: "capabilities", autocomplete: "off" }), "comma separated"),
      field("Bidding seconds", h("input", { name: "bidding_seconds", type: "number", min: 0.1, step: "any",
                                            value: "10", required: true })),
      field("Priority", h("input", { name: "priority", type: "number", min: 1, max: 10, step: 1, value: "5" })),
      h("div", { class: "field wide" }, field("Parameters (JSON)", h("textarea", { name: "parameters", rows: 2,
        placeholder: '{"text": "a b c"}' }), "optional")),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Submit task")),
    ], async (f) => {
      const e = f.elements;
      const body = {
        requester_id: e.requester_id.value.trim(), description: e.description.value,
        required_capabilities: splitList(e.capabilities.value), budget: numberOf(f, "budget", "budget"),
        bidding_seconds: numberOf(f, "bidding_seconds", "bidding seconds"),
        priority: numberOf(f, "priority", "priority"),
        parameters: parseJsonField(f, "parameters", "parameters") || {},
        idempotency_key: newKey(),
      };
      const task = await api("POST", "/api/v1/tasks", body);
      store.tasks.set(task.task_id, task);
      location.hash = `#/tasks/${enc(task.task_id)}`;
      return null;
    });
  }

  function tasksPage() {
    const tbody = h("tbody");
    const status = h("div");
    const el = pageShell("Tasks and auctions",
      canWrite() ? h("details", { class: "share" }, h("summary", {}, "Submit a task"), submitTaskForm()) : null,
      status,
      h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Tasks table" },
        h("table", { class: "data" },
          h("caption", { class: "visually-hidden" }, "Tasks, newest first, updated live"),
          h("thead", {}, h("tr", {}, ["Task", "Description", "State", "Bids", "Winner", "Price", "Budget", "Requester"]
            .map((c) => h("th", { scope: "col" }, c)))),
          tbody)));

    function render() {
      const tasks = Array.from(store.tasks.values()).sort((a, b) => new Date(b.created_at) - new Date(a.created_at));
      setChildren(tbody, ...tasks.map((t) => h("tr", { "data-task-id": t.task_id, "data-state": t.state },
        h("th", { scope: "row" }, h("a", { href: `#/tasks/${enc(t.task_id)}` }, t.task_id)),
        h("td", { class: "detail" }, shorten(t.description, 80)),
        h("td", {}, badge("task", t.state)),
        h("td", { class: "bids" }, bidsText(t)),
        h("td", {}, t.winner || "—"),
        h("td", { class: "num" }, t.price === null || t.price === undefined ? "—" : fmtNumber(t.price)),
        h("td", { class: "num" }, fmtNumber(t.budget)),
        h("td", {}, t.requester_id))));
      if (!tasks.length) {
        tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, store.tasksLoaded ? "No tasks." : "Loading…")));
      }
    }

    loadTasks().catch((err) => setChildren(status, errorNote(err)));
    render();
    return {
      el,
      wantsTasks: true,
      onEvent(kind) {
        if (["task", "bid", "tasks-loaded", "task-loaded"].includes(kind)) render();
      },
    };
  }

  function taskPage(id) {
    const facts = h("div", {}, loadingNote());
    const actions = h("div", { class: "task-actions" });
    const description = h("div");
    const bids = h("div");
    const result = h("div");
    const events = h("div");
    const el = pageShell(`Task ${id}`, h("p", {}, h("a", { href: "#/tasks" }, "← All tasks")),
      h("section", { class: "panel auction" }, h("h2", {}, "Auction"), facts, actions),
      h("section", { class: "panel" }, h("h2", {}, "Description"), description),
      h("section", { class: "panel" }, h("h2", {}, "Bids"), bids),
      h("section", { class: "panel" }, h("h2", {}, "Result"), result),
      h("section", { class: "panel" }, h("h2", {}, "Events"), events));
    let countdown = null;
    let actionsSig = null;

    function render(task) {
      const bidding = task.state === "bidding";
      countdown = bidding ? h("span", { class: "countdown", "data-closes": task.bidding_closes_at }) : null;
      el.dataset.taskState = task.state;
      setChildren(facts, h("dl", { class: "facts" },
        fact("State", badge("task", task.state)),
        fact("Bids", h("span", { class: "bid-count", "data-bid-count": task.bid_count || 0 }, bidsText(task),
          bidding ? " (prices stay sealed until the auction closes)" : null)),
        fact(bidding ? "Closes" : "Closed", [fmtTime(task.bidding_closes_at), countdown ? " · " : null, countdown]),
        fact("Winner", task.winner ? h("a", { href: `#/agents/${enc(task.winner)}`, class: "winner" }, task.winner)
          : (bidding ? "not yet" : "none")),
        fact("Price", task.price === null || task.price === undefined ? null : fmtNumber(task.price)),
        fact("Welfare", task.welfare === null || task.welfare === undefined ? null : fmtNumber(task.welfare, 2)),
        fact("Budget", fmtNumber(task.budget)),
        fact("Escrow", task.escrow_state ? h("span", { class: "escrow-state" }, badge("escrow", task.escrow_state))
          : null),
        fact("Requester", h("a", { href: `#/accounts/${enc(`requester:${task.requester_id}`)}` },
          `requester:${task.requester_id}`)),
        fact("Capabilities", (task.required_capabilities || []).join(", ")),
        fact("Priority", task.priority), fact("Submitted", fmtTime(task.created_at))));
      const sig = JSON.stringify([task.state, task.escrow_state, task.winner]);
      if (sig !== actionsSig) { // rebuilt only when what may be done changes, so a half-typed form survives
        actionsSig = sig;
        rerender(actions, () => setChildren(actions, ...taskActions(task)));
      }
      setChildren(description, h("p", { class: "full-content" }, task.description),
        Object.keys(task.parameters || {}).length ? [h("h3", {}, "Parameters"), json(task.parameters)] : []);
      setChildren(bids, task.bids ? bidsTable(task)
        : h("p", { class: "muted" }, `${bidsText(task)}; the prices are shown when the auction closes.`));
      setChildren(result, task.result ? json(task.result) : h("p", { class: "muted" }, "No result yet."));
      setChildren(events, eventsTable(task.events || []));
      tickCountdown();
    }

    function tickCountdown() {
      if (!countdown || !countdown.isConnected) return;
      const left = (new Date(countdown.dataset.closes).getTime() - Date.now()) / 1000;
      countdown.textContent = left > 0 ? `${Math.ceil(left)} s left` : "closing…";
    }

    const timer = setInterval(tickCountdown, 500);
    const refresh = () => loadTask(id).then(render, (err) => setChildren(facts, errorNote(err)));
    refresh();
    return {
      el,
      wantsTask: id,
      dispose() { clearInterval(timer); },
      onEvent(kind, data) {
        if (kind === "task-loaded" && data === id) render(store.tasks.get(id));
        else if (kind === "bid" && data.task_id === id && store.tasks.has(id)) render(store.tasks.get(id));
      },
    };
  }

  function bidsTable(task) {
    if (!task.bids.length) return h("p", { class: "muted" }, "No bids.");
    return h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Bids" },
      h("table", { class: "data" },
        h("thead", {}, h("tr", {}, ["Agent", "Asked", "Estimate", "Reputation", "Placed"]
          .map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, task.bids.slice().sort((a, b) => a.price - b.price).map((b) => h("tr",
          { class: b.agent_id === task.winner ? "won" : null },
          h("th", { scope: "row" }, b.agent_id, b.agent_id === task.winner ? " (winner)" : ""),
          h("td", { class: "num" }, fmtNumber(b.price)), h("td", { class: "num" }, `${fmtNumber(b.estimated_seconds, 1)} s`),
          h("td", { class: "num" }, Number(b.reputation).toFixed(3)), h("td", {}, fmtTime(b.placed_at)))))));
  }

  function taskActions(task) {
    const base = `/api/v1/tasks/${enc(task.task_id)}`;
    const after = (updated) => {
      store.tasks.set(updated.task_id, updated);
      notify("task-loaded", updated.task_id);
    };
    const requester = canActAs(task.requester_id);
    const held = task.escrow_state === "held";
    const parts = [];
    if (requester && task.state === "completed" && held) {
      parts.push(actionButton("Accept and pay", async () => after(await api("POST", `${base}/accept`,
        { idempotency_key: newKey() })), { class: "primary", "data-focus-key": "accept" }));
    }
    if (requester && ["bidding", "assigned"].includes(task.state) && held) {
      parts.push(actionButton("Cancel task", async () => after(await api("POST", `${base}/cancel`,
        { idempotency_key: newKey() })), { class: "danger", "data-focus-key": "cancel" }));
    }
    const parties = [task.requester_id, task.winner].filter((p) => p && canActAs(p));
    if (parties.length && held && task.winner) {
      parts.push(h("details", { class: "share" }, h("summary", {}, "Dispute"),
        writeForm({ class: "card form-grid", "aria-label": "Dispute" }, [
          field("By", select("by", parties, parties[0])),
          h("div", { class: "field wide" }, field("Evidence", h("textarea", { name: "evidence", rows: 2, required: true }))),
          h("div", { class: "actions" }, h("button", { type: "submit", class: "danger" }, "Dispute")),
        ], async (f) => {
          after(await api("POST", `${base}/dispute`, { by: f.elements.by.value, evidence: f.elements.evidence.value,
                                                       idempotency_key: newKey() }));
          return null;
        })));
    }
    if (isOperator() && task.escrow_state === "disputed") {
      const outcome = select("outcome", [["release", "release to the agent"], ["refund", "refund the requester"],
                                         ["split", "split"]], "release");
      parts.push(writeForm({ class: "card form-grid", "aria-label": "Resolve the dispute" }, [
        h("h3", { class: "wide" }, "Resolve the dispute"),
        field("Outcome", outcome),
        field("Agent share (%)", h("input", { name: "agent_share_percent", type: "number", min: 0, max: 100, step: 1,
                                              value: "50" }), "for a split"),
        h("div", { class: "actions" }, h("button", { type: "submit" }, "Resolve")),
      ], async (f) => {
        after(await api("POST", `${base}/resolve`, { outcome: outcome.value,
          agent_share_percent: numberOf(f, "agent_share_percent", "agent share"), idempotency_key: newKey() }));
        return null;
      }));
    }
    return parts;
  }

  // -- accounts ----------------------------------------------------------------------------------------------

  function accountsPage() {
    const input = h("input", { name: "account", required: true, autocomplete: "off",
                               placeholder: "requester:carol", value: ownAgent() ? `agent:${ownAgent()}` : "" });
    const form = h("form", { class: "card inline-form", "aria-label": "Open an account" },
      field("Account id", input, "requester:<id>, agent:<id>, platform or mint"),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Open")));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (input.value.trim()) location.hash = `#/accounts/${enc(input.value.trim())}`;
    });
    const known = new Set(["platform"]);
    for (const t of store.tasks.values()) known.add(`requester:${t.requester_id}`);
    for (const a of store.agents.values()) known.add(`agent:${a.agent_id}`);
    if (ownAgent()) { known.clear(); known.add(`agent:${ownAgent()}`); known.add(`requester:${ownAgent()}`); }
    return {
      el: pageShell("Accounts", form, h("section", { class: "panel" }, h("h2", {}, "Known accounts"),
        h("ul", { class: "links" }, Array.from(known).sort().map((a) => h("li", {},
          h("a", { href: `#/accounts/${enc(a)}` }, a)))))),
    };
  }

  function accountPage(id) {
    const summary = h("div", {}, loadingNote());
    const tbody = h("tbody");
    const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older entries");
    const el = pageShell(`Account ${id}`, h("p", {}, h("a", { href: "#/accounts" }, "← Accounts")), summary,
      isOperator() ? depositForm(id, () => refresh()) : null,
      h("section", { class: "panel" }, h("h2", {}, "Ledger"),
        h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Ledger" },
          h("table", { class: "data" },
            h("thead", {}, h("tr", {}, ["Transfer", "When", "Kind", "Amount", "Memo", "Escrow"]
              .map((c) => h("th", { scope: "col" }, c)))), tbody)),
        h("p", {}, more)));
    let nextBefore = null;

    const row = (e) => h("tr", { "data-transfer-id": e.transfer_id },
      h("td", { class: "num" }, e.transfer_id), h("td", { class: "nowrap" }, fmtTime(e.at)), h("td", {}, e.kind),
      h("td", { class: `num ${e.amount < 0 ? "out" : "in"}` }, `${e.amount > 0 ? "+" : ""}${fmtNumber(e.amount)}`),
      h("td", { class: "detail" }, e.memo || ""), h("td", {}, e.escrow_id || "—"));

    async function refresh() {
      try {
        const [account, page] = await Promise.all([api("GET", `/api/v1/accounts/${enc(id)}`),
                                                   api("GET", `/api/v1/accounts/${enc(id)}/ledger?limit=50`)]);
        setChildren(summary, h("section", { class: "panel" }, h("dl", { class: "facts" },
          fact("Balance", h("strong", { class: "balance" }, fmtNumber(account.balance))),
          account.reputation === null || account.reputation === undefined ? null
            : fact("Reputation", Number(account.reputation).toFixed(3)))));
        setChildren(tbody, ...page.entries.map(row));
        if (!page.entries.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No entries.")));
        nextBefore = page.next_before;
        more.hidden = nextBefore === null || nextBefore === undefined;
      } catch (err) {
        setChildren(summary, errorNote(err));
      }
    }

    more.addEventListener("click", async () => {
      more.disabled = true;
      try {
        const page = await api("GET", `/api/v1/accounts/${enc(id)}/ledger?limit=50&before=${nextBefore}`);
        tbody.append(...page.entries.map(row));
        nextBefore = page.next_before;
        more.hidden = nextBefore === null || nextBefore === undefined;
      } catch (err) {
        summary.append(errorNote(err));
      } finally {
        more.disabled = false;
      }
    });

    refresh();
    return {
      el,
      onEvent(kind, data) {
        if (kind === "transfer" && (data.postings || []).some((p) => p.account_id === id)) {
          refetchSoon(`account:${id}`, refresh);
        }
      },
    };
  }

  function depositForm(accountId, done) {
    return h("details", { class: "share" }, h("summary", {}, "Deposit"),
      writeForm({ class: "card form-grid", id: "deposit-form", "aria-label": "Deposit" }, [
        field("Amount", h("input", { name: "amount", type: "number", min: 1, step: 1, required: true })),
        h("div", { class: "actions" }, h("button", { type: "submit" }, "Deposit")),
      ], async (f) => {
        const account = await api("POST", `/api/v1/accounts/${enc(accountId)}/deposit`,
          { amount: numberOf(f, "amount", "amount"), idempotency_key: newKey() });
        f.elements.amount.value = "";
        done();
        return `Deposited; balance ${fmtNumber(account.balance)}.`;
      }));
  }

  // -- tokens (operators) ------------------------------------------------------------------------------------

  const EXPIRIES = [["", "never (until revoked)"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"],
                    ["2592000", "30 days"], ["7776000", "90 days"]];

  function tokenForm(onCreated) {
    const secret = h("div", { class: "token-secret", hidden: true });
    const form = writeForm({ class: "card form-grid", id: "token-form", "aria-label": "Create a token" }, [
      field("Role", select("role", ["agent", "viewer", "operator"], "agent")),
      field("Agent id", h("input", { name: "agent_id", autocomplete: "off", pattern: "[A-Za-z0-9_-]{1,64}" }),
            "agent tokens only: the agent it acts as"),
      field("Expires", select("expires", EXPIRIES, "2592000")),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Create token")),
    ], async (f) => {
      const e = f.elements;
      const body = { role: e.role.value };
      if (e.agent_id.value.trim()) body.agent_id = e.agent_id.value.trim();
      if (e.expires.value) body.expires_in_seconds = Number(e.expires.value);
      const created = await api("POST", "/api/v1/tokens", body);
      setChildren(secret, h("p", {}, `Token ${created.token_id}: copy it now, it is not shown again.`),
        h("code", { class: "secret" }, created.token));
      secret.hidden = false;
      e.agent_id.value = "";
      onCreated();
      return `Created ${created.role} token ${created.token_id}.`;
    });
    return h("div", {}, form, secret);
  }

  function tokensPage() {
    if (!isOperator()) return { el: pageShell("Tokens", h("p", {}, "Only operators manage tokens.")) };
    const tbody = h("tbody");
    const status = h("div");
    const actionStatus = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    const showAll = h("input", { type: "checkbox", name: "all" });
    const table = h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Tokens table" },
      h("table", { class: "data", id: "tokens-table" },
        h("caption", { class: "visually-hidden" }, "Tokens, newest first"),
        h("thead", {}, h("tr", {}, ["Token", "Role", "Agent", "State", "Created", "Expires", "Last used", "Actions"]
          .map((c) => h("th", { scope: "col" }, c)))),
        tbody));
    const el = pageShell("Tokens",
      h("details", { class: "share" }, h("summary", {}, "Create a token"), tokenForm(() => load())),
      h("label", { class: "check" }, showAll, "Show revoked and expired tokens"),
      status, actionStatus, table);

    const row = (t) => h("tr", { "data-token-id": t.token_id, "data-state": t.state },
      h("th", { scope: "row" }, h("code", {}, t.token_id)),
      h("td", {}, t.role),
      h("td", {}, t.agent_id || "—"),
      h("td", {}, badge("token", t.state)),
      h("td", { class: "nowrap" }, fmtTime(t.created_at)),
      h("td", { class: "nowrap" }, t.expires_at ? fmtTime(t.expires_at) : "never"),
      h("td", { class: "nowrap" }, relTime(t.last_used_at)),
      h("td", {}, t.state === "active" ? actionButton("Revoke", async () => {
        await api("DELETE", `/api/v1/tokens/${enc(t.token_id)}`);
        await load();
      }, { class: "danger small", "aria-label": `Revoke ${t.token_id}`, "data-focus-key": `revoke:${t.token_id}` },
      actionStatus) : null));

    async function load() {
      try {
        const listed = await api("GET", `/api/v1/tokens${showAll.checked ? "?all=true" : ""}`);
        setChildren(status);
        rerender(tbody, () => {
          setChildren(tbody, ...listed.items.map(row));
          if (!listed.items.length) tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No tokens.")));
        });
      } catch (err) {
        setChildren(status, errorNote(err));
      }
    }

    showAll.addEventListener("change", load);
    setChildren(tbody, h("tr", {}, h("td", { colspan: 8, class: "muted" }, "Loading…")));
    load();
    return { el };
  }

  // -- approvals -------------------------------------------------------------------------------------------------

  /** The pending count beside the nav's Approvals link, from every metrics_update. */
  function showPendingApprovals(pending) {
    const count = $("#nav-pending");
    if (!count) return;
    count.textContent = pending ? String(pending) : "";
    count.hidden = !pending;
    count.setAttribute("aria-label", `${pending} pending`);
  }

  /** Approvals newest first (pending ones by default): an operator approves or denies a pending one, with a note,
   * from its row; everyone else reads (an agent, its own). Every `approval` event of the stream reloads the list. */
  function approvalsPage() {
    const tbody = h("tbody");
    const status = h("div");
    const actionStatus = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    const stateSel = select("state", [["pending", "Pending"], ["", "All"], ["approved", "Approved"],
                                      ["denied", "Denied"], ["expired", "Expired"]], "pending");
    const filters = h("form", { class: "filters", role: "search", "aria-label": "Filter approvals" },
      field("State", stateSel));
    const columns = ["Approval", "State", "Kind", "Subject", "Reason", "Requested", "Decision", "Actions"];
    const table = h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Approvals table" },
      h("table", { class: "data", id: "approvals-table" },
        h("caption", { class: "visually-hidden" }, "Approvals, newest first"),
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
        tbody));
    const el = pageShell("Approvals", filters, status, actionStatus, table);

    const decide = (a, decision, note) => async () => {
      await api("POST", `/api/v1/approvals/${enc(a.approval_id)}/decision`,
                { decision, note: note.value.trim() || null });
      await load();
    };

    const actions = (a) => {
      if (!isOperator() || a.state !== "pending") return null;
      const note = h("input", { name: "note", maxlength: 1000, placeholder: "Note (optional)", autocomplete: "off",
                                "aria-label": `Note for ${a.approval_id}`, "data-write": "",
                                "data-focus-key": `note:${a.approval_id}` });
      return h("div", { class: "approval-actions" }, note,
        actionButton("Approve", decide(a, "approve", note), { class: "small", "aria-label": `Approve ${a.approval_id}`,
                                                                "data-focus-key": `approve:${a.approval_id}` },
                     actionStatus),
        actionButton("Deny", decide(a, "deny", note), { class: "danger small", "aria-label": `Deny ${a.approval_id}`,
                                                          "data-focus-key": `deny:${a.approval_id}` }, actionStatus));
    };

    const decision = (a) => {
      if (a.state === "pending") return ["expires ", h("span", { class: "nowrap" }, fmtTime(a.expires_at))];
      return [h("span", { class: "decision" }, `${a.decision} by ${a.decided_by}`), " ", relTime(a.decided_at),
        a.note ? h("div", { class: "muted note" }, a.note) : null];
    };

    const row = (a) => h("tr", { "data-approval-id": a.approval_id, "data-state": a.state },
      h("th", { scope: "row" }, h("code", {}, a.approval_id)),
      h("td", {}, badge("approval", a.state)),
      h("td", {}, a.kind),
      h("td", {}, h("a", { href: `#/accounts/${enc(a.subject)}` }, a.subject)),
      h("td", { class: "reason" }, h("div", {}, a.reason),
        Object.keys(a.detail || {}).length ? h("details", {}, h("summary", {}, "Detail"), json(a.detail)) : null),
      h("td", { class: "nowrap" }, a.requested_by, " ", relTime(a.created_at)),
      h("td", {}, decision(a)),
      h("td", {}, actions(a)));

    async function load() {
      try {
        const query = stateSel.value ? `?state=${enc(stateSel.value)}&limit=200` : "?limit=200";
        const listed = await api("GET", `/api/v1/approvals${query}`);
        setChildren(status);
        rerender(tbody, () => {
          setChildren(tbody, ...listed.approvals.map(row));
          if (!listed.approvals.length) {
            tbody.append(h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "No approvals.")));
          }
        });
      } catch (err) {
        setChildren(status, errorNote(err));
      }
    }

    stateSel.addEventListener("change", load);
    filters.addEventListener("submit", (ev) => ev.preventDefault());
    setChildren(tbody, h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Loading…")));
    load();
    return { el, onEvent(kind) { if (kind === "approval") load(); } };
  }

  // -- OAuth consent ---------------------------------------------------------------------------------------------

  /** An MCP client's sign-in (OAuth) waits here for an operator: who asks, where the code goes, and what its
   * tokens may do. Approving or denying sends this tab to the client's redirect URI. */
  function consentPage(requestId) {
    const title = "Sign-in request";
    if (!isOperator()) {
      return { el: pageShell(title, h("p", {}, "Only an operator can answer a sign-in request: sign out and sign in "
        + "with an operator token, then open the client's link again.")) };
    }
    const body = h("div", {}, loadingNote());
    const el = pageShell(title, body);
    const go = (result) => {
      setChildren(body, h("p", { class: "ok", id: "consent-outcome", "data-outcome": result.outcome },
        result.outcome === "approved" ? "Approved: returning to the client…" : "Denied: returning to the client…"));
      location.assign(result.redirect_to);
    };
    api("GET", `/oauth/consent/${enc(requestId)}`).then((req) => {
      const form = writeForm({ class: "card form-grid", id: "consent-form", "aria-label": "Answer the sign-in request" }, [
        field("Role", select("role", [["agent", "agent: acts as one agent id"], ["viewer", "viewer: read only"],
                                      ["operator", "operator: everything"]], "agent")),
        field("Agent id", h("input", { name: "agent_id", autocomplete: "off", pattern: "[A-Za-z0-9_-]{1,64}" }),
              "agent grants only: the agent the client's tokens act as"),
        h("div", { class: "actions" }, h("button", { type: "submit", id: "consent-approve" }, "Approve"),
          actionButton("Deny", async () => go(await api("POST", `/oauth/consent/${enc(requestId)}`,
                                                          { approve: false })),
                       { class: "danger", id: "consent-deny" })),
      ], async (f) => {
        const e = f.elements;
        const answer = { approve: true, role: e.role.value };
        if (e.role.value === "agent") answer.agent_id = e.agent_id.value.trim();
        go(await api("POST", `/oauth/consent/${enc(requestId)}`, answer));
      });
      setChildren(body,
        h("p", {}, "An MCP client asks for access to this hub. Approve only a client you started yourself."),
        h("dl", { class: "facts", id: "consent-details" },
          h("dt", {}, "Client"), h("dd", { id: "consent-client" }, req.client_name || "(no name given)"),
          h("dt", {}, "Client id"), h("dd", {}, h("code", {}, req.client_id)),
          req.client_uri ? h("dt", {}, "Client site") : null, req.client_uri ? h("dd", {}, req.client_uri) : null,
          h("dt", {}, "Redirect URI"), h("dd", {}, h("code", { id: "consent-redirect" }, req.redirect_uri)),
          h("dt", {}, "Resource"), h("dd", {}, h("code", {}, req.resource)),
          h("dt", {}, "Expires"), h("dd", {}, fmtTime(req.expires_at))),
        form);
    }, (err) => setChildren(body, errorNote(err)));
    return { el };
  }

  // -- sign-in -----------------------------------------------------------------------------------------------

  function signInPage(message) {
    $("#nav").hidden = true;
    $("#session").hidden = true;
    const input = h("input", { name: "token", type: "password", required: true, autocomplete: "off",
                               spellcheck: "false" });
    const status = h("p", { class: "form-status error", role: "alert" }, message || "");
    const form = h("form", { class: "card signin", id: "signin-form", "aria-label": "Sign in" },
      field("Access token", input, "an operator, agent or viewer token; kept in this tab only"),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")), status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) {
        status.textContent = "Paste a token first.";
        return;
      }
      store.token = token;
      try {
        store.whoami = await api("GET", "/api/v1/whoami");
      } catch (err) {
        store.token = null;
        status.textContent = err.status === 401 ? `Token refused: ${err.detail}` : err.detail || err.message;
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      startSession();
    });
    $("#view").replaceChildren(h("section", { class: "page narrow" }, h("h1", {}, "Sign in"),
      h("p", {}, "The hub's operator token is in ", h("code", {}, ".agenthub/operator-token"),
        "; ", h("code", {}, "agenthub token create"), " makes others."), form));
    document.title = "Sign in · agenthub";
    input.focus();
  }

  function signOut(message) {
    closeStream();
    sessionStorage.removeItem(TOKEN_KEY);
    Object.assign(store, { token: null, whoami: null, metrics: null, discoveries: new Map(), agents: new Map(),
                           agentsLoaded: false, tasks: new Map(), tasksLoaded: false, activity: [] });
    stream.pos = null;
    if (current.dispose) current.dispose();
    current = { el: null };
    signInPage(message);
  }

  function startSession() {
    const who = store.whoami;
    $("#nav").hidden = false;
    $("#session").hidden = false;
    document.body.dataset.role = who.role;
    for (const item of $$("#nav [data-operator-only]")) item.hidden = who.role !== "operator";
    $("#who").textContent = who.auth === false ? "operator (no auth)"
      : `${who.role}${who.agent_id ? ` · ${who.agent_id}` : ""}`;
    $("#sign-out").hidden = who.auth === false;
    stream.pos = null;
    openStream();
    api("GET", "/metrics/system").then(onMetrics, () => {});
    route();
  }

  async function boot() {
    $("#sign-out").addEventListener("click", () => signOut("Signed out."));
    $(".skip-link").addEventListener("click", (ev) => { // hash links are routes here: move focus instead
      ev.preventDefault();
      $("#view").focus();
    });
    window.addEventListener("hashchange", route);
    // Relative times and the fallback for metrics while the stream is down.
    setInterval(() => {
      for (const t of $$("time[data-relative]")) if (t.dataset.relative) t.textContent = ago(t.dataset.relative);
    }, 1000);
    setInterval(() => {
      if (store.whoami && !(stream.source && stream.source.readyState === EventSource.OPEN)) {
        api("GET", "/metrics/system").then(onMetrics, () => {});
      }
    }, 5000);
    try {
      store.whoami = await api("GET", "/api/v1/whoami"); // also answers without a token when auth is off
    } catch (err) {
      store.whoami = null;
      const hadToken = Boolean(store.token);
      if (err.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        store.token = null;
      }
      signInPage(err.status === 401 ? (hadToken ? `Token refused: ${err.detail}` : "")
        : `The hub could not say who you are: ${err.detail}`);
      return;
    }
    startSession();
  }

  // Hooks for tests and for poking at the page from the console.
  window.agenthub = {
    /** Close the event stream now and reopen it (resuming after the last applied event) after `pauseMs`. */
    dropStream(pauseMs = 1500) {
      closeStream();
      setStreamStatus("offline", "paused");
      scheduleStream(pauseMs);
    },
    streamPosition: () => (stream.pos ? `${stream.pos.d}.${stream.pos.e}` : null),
    streamConnects: () => stream.connects,
    discoveryIds: () => Array.from(store.discoveries.keys()),
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
