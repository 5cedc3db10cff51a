// The fota-lab fleet dashboard: live state from the server's event stream (or polling),
// read-only without the API token, actions through the token-protected API with it.
// The fleet table holds one page (the view: filter, order, window) and the counts, never the
// fleet: a change patches only the rows it names, and paging reopens the stream for the new view.
import { bytes, drawBandwidth, drawRecoveries, drawRollout } from "./charts.js";

const $ = (selector, root = document) => root.querySelector(selector);
const TOKEN_KEY = "fotalab-api-token";
const POLL_MS = 3000;
const SSE_RETRY_MS = 30000;        // from polling, try the stream again this often
const CHART_MS = 30000;
const HISTORY_PAGES = 10;          // at most 10 x 1000 events on a device page
const DEFAULT_VIEW = { offset: 0, limit: 50, state: "", group: "", sort: "device", desc: false };

const state = {
  devices: new Map(), rollouts: new Map(), decisions: new Map(),
  clockSkew: 0, source: null, pollTimer: null, chartRollout: null, chartSoon: null,
  device: null, historyIds: new Set(),
  view: { ...DEFAULT_VIEW }, page: { ids: [], total: 0 }, counts: null, fetchingPage: false,
};

// ---- helpers -------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value == null) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

const serverNow = () => Date.now() / 1000 + state.clockSkew;

function ago(seconds) {
  const s = Math.max(0, Math.round(serverNow() - seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const time = (seconds) => h("time", { datetime: new Date(seconds * 1000).toISOString(),
                                      text: new Date(seconds * 1000).toLocaleTimeString() });

function say(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

const token = () => localStorage.getItem(TOKEN_KEY) || "";

async function api(method, path, body) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${method} ${path}: HTTP ${response.status}`);
  return data;
}

async function act(label, method, path, body) {
  try {
    const data = await api(method, path, body);
    say(label(data));
    return data;
  } catch (error) {
    say(error.message, true);      // the API's own message: what was wrong and what to do
    return null;
  }
}

// ---- live data: stream, polling fallback ---------------------------------------------------

function setLive(mode) {
  document.body.dataset.live = mode;
  $("#live-text").textContent = { connected: "live", polling: "polling", offline: "offline" }[mode];
}

// The query string of every fleet request: the table's view and the device whose page is open.
function viewQuery() {
  const params = new URLSearchParams({ offset: state.view.offset, limit: state.view.limit, sort: state.view.sort });
  if (state.view.desc) params.set("desc", "1");
  if (state.view.state) params.set("state", state.view.state);
  if (state.view.group) params.set("group", state.view.group);
  if (state.device) params.set("device", state.device);
  return params.toString();
}

// Rows that arrived: the ones that differ from what the page holds are redrawn, no other.
function takeDevices(devices) {
  const changed = new Set();
  for (const d of devices) {
    const known = state.devices.get(d.device_id);
    if (!known || JSON.stringify(known) !== JSON.stringify(d)) changed.add(d.device_id);
    state.devices.set(d.device_id, d);
  }
  return changed;
}

function applyPage(page, devices, counts) {
  const changed = takeDevices(devices);
  if (counts) state.counts = counts;
  if (page) state.page = page;
  const keep = new Set([...state.page.ids, state.device]);
  for (const id of [...state.devices.keys()]) if (!keep.has(id)) state.devices.delete(id);
  renderFleet(changed);
}

function applySnapshot(snapshot) {
  state.clockSkew = snapshot.at - Date.now() / 1000;
  state.rollouts = new Map(snapshot.rollouts.map((r) => [r.id, r]));
  state.decisions = new Map(snapshot.decisions.map((d) => [d.id, d]));
  applyPage(snapshot.page, snapshot.devices, snapshot.counts);
  renderRollouts();
  if (state.device) renderDeviceFacts();
}

function applyChanges(changes) {
  state.clockSkew = changes.at - Date.now() / 1000;
  for (const r of changes.rollouts) state.rollouts.set(r.id, r);
  for (const d of changes.decisions) state.decisions.set(d.id, d);
  if (changes.page || changes.devices.length || changes.counts) applyPage(changes.page, changes.devices, changes.counts);
  if (changes.rollouts.length || changes.decisions.length) renderRollouts();
  const mine = changes.events.filter((e) => e.device_id === state.device);
  if (mine.length) addHistory(mine);
  if (state.device && changes.devices.some((d) => d.device_id === state.device)) renderDeviceFacts();
  const charted = ["committed", "booted", "download_resumed", "update_resumed"];
  if (changes.decisions.length || (changes.event_kinds || []).some((kind) => charted.includes(kind))) chartsSoon();
}

// A change named rows this page does not hold (it should not happen): read the page itself.
async function fetchPage() {
  if (state.fetchingPage) return;
  state.fetchingPage = true;
  try {
    const asked = viewQuery();
    const data = await api("GET", `/api/v1/dashboard?${asked}`);
    if (asked === viewQuery()) applyPage(data.page, data.devices, data.counts);
  } catch (error) {
    say(error.message, true);
  } finally {
    state.fetchingPage = false;
  }
}

// The view changed (a page, a filter, an order, a device page): the stream is reopened for it.
function reconnect() {
  if (state.source) {
    state.source.close();
    state.source = null;
    connect();
  } else if (state.pollTimer) {
    poll();
  }
}

function connect() {
  if (!window.EventSource) return startPolling();
  const source = new EventSource(`/api/v1/stream?${viewQuery()}`);
  state.source = source;
  let fallback = null;
  source.addEventListener("snapshot", (message) => {
    clearTimeout(fallback);
    stopPolling();
    setLive("connected");
    applySnapshot(JSON.parse(message.data));
  });
  source.addEventListener("changes", (message) => applyChanges(JSON.parse(message.data)));
  source.onerror = () => {
    if (state.source !== source) return;                     // closed for another view since
    if (source.readyState === EventSource.CLOSED) {          // refused (e.g. 503: streams all taken)
      state.source = null;
      startPolling();
    } else if (!fallback) {                                  // reconnecting: normal after a few minutes
      fallback = setTimeout(() => {
        fallback = null;
        if (state.source === source && source.readyState !== EventSource.OPEN) {
          source.close();
          state.source = null;
          startPolling();
        }
      }, 5000);
    }
  };
}

async function poll() {
  try {
    const asked = viewQuery();
    const response = await fetch(`/api/v1/dashboard?${asked}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const snapshot = await response.json();
    if (asked !== viewQuery()) return;                       // the view changed meanwhile: its own poll follows
    applySnapshot(snapshot);
    if (!state.source) setLive("polling");
  } catch {
    if (!state.source) setLive("offline");
  }
}

function startPolling() {
  if (state.pollTimer) return;
  poll();
  let since = 0;
  state.pollTimer = setInterval(() => {
    since += POLL_MS;
    if (since >= SSE_RETRY_MS && !state.source) {              // try the stream again now and then
      since = 0;
      connect();
    }
    poll();
  }, POLL_MS);
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

// ---- fleet ------------------------------------------------------------------------------------

const STATE_CLASS = {
  committed: "good", running: "good", up_to_date: "good", downloading: "busy", installing: "busy",
  checking: "busy", rebooting: "busy", trial: "warn", confirming: "warn", failed: "bad", trial_failed: "bad",
  rolled_back: "bad",
};

function lastResultText(result) {
  if (!result) return "";
  if (result.outcome === "committed") return `committed ${result.version}`;
  const what = result.outcome.replace("_", " ");
  return `${what}${result.version ? ` ${result.version}` : ""}${result.reason ? `: ${result.reason}` : ""}`;
}

function fleetRow(device) {
  const downloading = device.state === "downloading";
  const progress = downloading ? Math.min(1, Math.max(0, device.progress || 0)) : 0;
  const result = device.last_result;
  return h("tr", { "data-device": device.device_id },
    h("td", { "data-field": "device" }, h("a", { href: `#/devices/${encodeURIComponent(device.device_id)}`,
                                                   text: device.device_id })),
    h("td", { "data-field": "hardware", text: device.hardware || "" }),
    h("td", { "data-field": "version", text: device.version || "" }),
    h("td", { "data-field": "slot", text: device.slot || "" }),
    h("td", {}, h("span", { "data-field": "state", class: `badge ${STATE_CLASS[device.state] || ""}`,
                            text: device.state || "unknown" })),
    h("td", {}, h("progress", { "data-field": "progress", max: "1", value: String(progress) }),
      downloading ? h("span", { class: "pct", text: `${Math.round(progress * 100)} %` }) : null),
    h("td", {}, h("span", { "data-field": "online", class: `badge ${device.online ? "good" : "off"}`,
                            text: device.online ? "online" : "offline" })),
    h("td", { "data-field": "last-seen", "data-ts": device.last_seen, text: ago(device.last_seen) }),
    h("td", { "data-field": "last-result", class: result ? (result.outcome === "committed" ? "result-good" : "result-bad") : "",
              text: lastResultText(result) }),
    h("td", {}, h("button", { type: "button", class: "secondary", "data-action": "trigger", disabled: !token(),
                              "data-device-id": device.device_id, text: "Trigger" })));
}

// The page's rows in the page's order: rows that left go, `changed` rows are redrawn, the
// others are only moved if the order changed; nothing else on the page is touched.
function renderFleet(changed = new Set()) {
  const tbody = $("#fleet tbody");
  const ids = state.page.ids;
  const wanted = new Set(ids);
  const rows = new Map();
  for (const tr of [...tbody.children]) {
    if (wanted.has(tr.dataset.device)) rows.set(tr.dataset.device, tr);
    else tr.remove();
  }
  let previous = null;
  let missing = false;
  for (const id of ids) {
    const device = state.devices.get(id);
    if (!device) { missing = true; continue; }
    let tr = rows.get(id);
    if (!tr || changed.has(id)) {
      const fresh = fleetRow(device);
      if (tr) tr.replaceWith(fresh);
      tr = fresh;
    }
    const place = previous ? previous.nextElementSibling : tbody.firstElementChild;
    if (tr !== place) tbody.insertBefore(tr, place);
    previous = tr;
  }
  if (missing) fetchPage();
  renderSummary();
  renderPager();
}

function renderSummary() {
  const counts = state.counts || { total: 0, online: 0, downloading: 0, by_state: {} };
  $("#fleet-summary").textContent = `${counts.total} devices · ${counts.online} online · ${counts.downloading} downloading`;
  $("#fleet-empty").hidden = counts.total > 0;
  const select = $("#fleet-state");
  const states = Object.keys(counts.by_state).sort();
  if (state.view.state && !states.includes(state.view.state)) states.push(state.view.state);
  const options = [h("option", { value: "", text: `all states (${counts.total})` }),
    ...states.map((s) => h("option", { value: s, text: `${s} (${counts.by_state[s] || 0})` }))];
  if (select.options.length !== options.length
      || options.some((o, i) => select.options[i].value !== o.value || select.options[i].text !== o.text)) {
    select.replaceChildren(...options);
  }
  select.value = state.view.state;
}

function renderPager() {
  const { offset, limit } = state.view;
  const total = state.page.total;
  if (offset > 0 && offset >= total) {                   // the page emptied (a filter shrank): go to the last one
    setView({ offset: Math.max(0, Math.floor((total - 1) / limit) * limit) });
    return;
  }
  const shown = state.page.ids.length;
  $("#fleet-range").textContent = shown ? `${offset + 1}–${offset + shown} of ${total}` : `0 of ${total}`;
  $("#fleet-page").textContent = `page ${Math.floor(offset / limit) + 1} of ${Math.max(1, Math.ceil(total / limit))}`;
  $("#fleet-prev").disabled = offset === 0;
  $("#fleet-next").disabled = offset + limit >= total;
  $("#fleet-nomatch").hidden = shown > 0 || !state.counts || state.counts.total === 0;
}

function setView(change) {
  state.view = { ...state.view, ...change };
  reconnect();
}

function wirePager() {
  $("#fleet-view").addEventListener("submit", (event) => event.preventDefault());    // Enter in the group box
  $("#fleet-prev").addEventListener("click", () => setView({ offset: Math.max(0, state.view.offset - state.view.limit) }));
  $("#fleet-next").addEventListener("click", () => setView({ offset: state.view.offset + state.view.limit }));
  $("#fleet-size").addEventListener("change", (event) => setView({ limit: Number(event.target.value), offset: 0 }));
  $("#fleet-state").addEventListener("change", (event) => setView({ state: event.target.value, offset: 0 }));
  $("#fleet-group").addEventListener("change", (event) => setView({ group: event.target.value.trim(), offset: 0 }));
  $("#fleet-sort").addEventListener("change", (event) => setView({ sort: event.target.value, offset: 0 }));
  $("#fleet-desc").addEventListener("change", (event) => setView({ desc: event.target.checked, offset: 0 }));
}

function tickLastSeen() {
  for (const cell of document.querySelectorAll("[data-field='last-seen'][data-ts]")) {
    cell.textContent = ago(Number(cell.dataset.ts));
  }
}

// ---- rollouts -----------------------------------------------------------------------------------

const ROLLOUT_CLASS = { running: "busy", paused: "warn", aborted: "bad", completed: "good" };
const ACTION_TEXT = { created: "created", advanced: "phase passed", paused: "paused", resumed: "resumed",
                      aborted: "aborted", completed: "completed" };

function phaseRow(phase) {
  const failed = phase.failed + phase.rolled_back;
  const segments = [["committed", phase.committed], ["offered", phase.offered], ["rolled_back", phase.rolled_back],
                    ["failed", phase.failed]]
    .filter(([, n]) => n > 0)
    .map(([name, n]) => h("span", { class: `seg-${name}`, style: `width:${(100 * n) / phase.devices}%`,
                                    title: `${n} ${name.replace("_", " ")}` }));
  return h("div", { class: `phase ${phase.state}` },
    h("span", { class: "name", text: `phase ${phase.phase} · ${phase.devices} device${phase.devices === 1 ? "" : "s"}` }),
    h("span", { class: "bar" }, ...segments),
    h("span", { text: `${phase.committed}/${phase.devices} committed${failed ? `, ${failed} failed` : ""}` }));
}

function decisionItem(decision) {
  const who = decision.actor === "engine" && ["paused", "aborted"].includes(decision.action)
    ? `gate → ${decision.action}` : `${decision.actor}: ${ACTION_TEXT[decision.action] || decision.action}`;
  return h("li", { "data-action": decision.action }, time(decision.at), h("strong", { text: who }),
           h("span", { text: decision.reason }));
}

function rolloutCard(rollout) {
  const active = ["running", "paused"].includes(rollout.status);
  const decisions = [...state.decisions.values()].filter((d) => d.rollout_id === rollout.id).sort((a, b) => a.id - b.id);
  const button = (action, enabled, cls) => h("button", { type: "button", class: cls, "data-action": action,
    "data-rollout-id": rollout.id, "data-applicable": enabled ? "yes" : "no", text: action[0].toUpperCase() + action.slice(1) });
  const selection = Object.entries(rollout.selection).map(([k, v]) => (k === "all" ? "all devices" : `${k} ${v}`)).join(", ");
  return h("article", { class: `rollout${state.chartRollout === rollout.id ? " selected" : ""}`, "data-rollout": rollout.id },
    h("header", {},
      h("span", { class: "title", title: "show in the rollout chart",
                  text: `#${rollout.id} · ${rollout.release} · ${rollout.device_count} devices (${selection})` }),
      h("span", { "data-field": "status", class: `badge ${ROLLOUT_CLASS[rollout.status] || ""}`, text: rollout.status })),
    rollout.reason ? h("p", { class: "reason", text: rollout.reason }) : null,
    ...rollout.phases.map(phaseRow),
    h("div", { class: "actions" },
      button("pause", rollout.status === "running", "secondary"),
      button("resume", rollout.status === "paused", "secondary"),
      button("abort", active, "danger")),
    h("ol", { class: "decisions", "data-field": "decisions" }, ...decisions.map(decisionItem)));
}

function renderRollouts() {
  const rollouts = [...state.rollouts.values()].sort((a, b) => b.id - a.id);
  $("#rollouts").replaceChildren(...rollouts.map(rolloutCard));
  $("#rollouts-empty").hidden = rollouts.length > 0;
  const select = $("#chart-rollout-select");
  const chosen = state.chartRollout;
  select.replaceChildren(...rollouts.map((r) => h("option", { value: r.id, text: `#${r.id} ${r.release}` })));
  if (chosen) select.value = String(chosen);
  applyAuth();
}

// ---- releases -------------------------------------------------------------------------------------

async function loadReleases() {
  let data;
  try {
    data = await api("GET", "/api/v1/releases");
  } catch (error) {
    $("#releases").textContent = `Releases could not be read: ${error.message}`;
    return;
  }
  const versions = [...new Map(data.releases.map((r) => [r.version, r])).values()];
  const release = $("#rollout-form select[name='release']");
  release.replaceChildren(...versions.map((r) =>
    h("option", { value: r.version, text: r.behaviour && r.behaviour !== "good" ? `${r.version} (${r.behaviour})` : r.version })));
  release.value = data.default_release;
  const rows = data.releases.flatMap((release) => release.artifacts.map((artifact, i) => {
    const span = { rowspan: release.artifacts.length };
    const first = i ? [] : [
      h("td", { ...span, text: release.hardware }),
      h("td", span, h("strong", { text: release.version }),
        release.version === data.default_release ? h("span", { class: "note", text: " (default)" }) : null),
      h("td", { ...span, text: release.behaviour || "" })];
    return h("tr", {}, ...first,
      h("td", {}, h("span", { class: `badge ${{ delta: "good", image: "busy" }[artifact.kind] || ""}`, text: artifact.kind })),
      h("td", { text: artifact.names.join(", ") }),
      h("td", { class: "num", text: bytes(artifact.length) }));
  }));
  $("#releases").replaceChildren(h("table", { class: "releases" },
    h("thead", {}, h("tr", {}, ...["Hardware", "Version", "Behaviour", "Kind", "Names", "Size"].map((t) => h("th", { text: t })))),
    h("tbody", {}, ...rows)));
}

// ---- charts ---------------------------------------------------------------------------------------

async function loadCharts() {
  const params = new URLSearchParams({ hours: $("#chart-hours").value });
  if (state.chartRollout) params.set("rollout", state.chartRollout);
  try {
    const response = await fetch(`/api/v1/dashboard/charts?${params}`);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error);
    drawBandwidth($("#chart-bandwidth"), data.bandwidth);
    const b = data.bandwidth;
    $("#bandwidth-summary").textContent = b.updates.length
      ? `${b.updates.length} update${b.updates.length === 1 ? "" : "s"}: ${bytes(b.downloaded)} downloaded instead of ${bytes(b.full)}, ${bytes(b.saved)} saved (${b.saved_pct} %)` : "";
    drawRollout($("#chart-rollout"), data.rollout);
    const r = data.rollout;
    $("#rollout-summary").textContent = r ? `${r.points.length} of ${r.devices} devices committed ${r.release}` : "";
    drawRecoveries($("#chart-recoveries"), data.recoveries);
    const t = data.recoveries.totals;
    $("#recoveries-summary").textContent =
      `${t.power_on_boots} power-on boots, ${t.download_resumes} downloads and ${t.update_resumes} updates resumed`;
  } catch (error) {
    $("#bandwidth-summary").textContent = `charts could not be read: ${error.message}`;
  }
}

function chartsSoon() {
  if (state.chartSoon) return;
  state.chartSoon = setTimeout(() => { state.chartSoon = null; loadCharts(); }, 3000);
}

// ---- device page ------------------------------------------------------------------------------------

const EVENTS = {
  booted: ["⚡", "", (p) => `booted (reset: ${p.reset_reason || "?"})${p.boot ? ` · ${p.boot}` : ""}`],
  update_started: ["↓", "busy", (p) => `update to ${p.target} started: ${p.artifact}, ${bytes(p.length || 0)}`],
  download_resumed: ["↻", "warn", (p) => `download of ${p.target} resumed at ${bytes(p.offset || 0)} of ${bytes(p.length || 0)}`],
  update_resumed: ["↻", "warn", (p) => `update to ${p.target} resumed in its ${p.phase} step`],
  downloaded: ["↓", "busy", (p) => `downloaded ${bytes(p.length || 0)} of ${p.target}${p.resumes ? `, resumed ${p.resumes}× after cuts` : ""}`],
  staged: ["→", "busy", (p) => `${p.target} staged in slot ${p.slot}: rebooting on trial`],
  committed: ["✓", "good", (p) => `committed ${p.version}`],
  trial_failed: ["✗", "bad", (p) => `trial of ${p.version} failed: ${p.reason}`],
  rolled_back: ["↶", "bad", (p) => `rolled back ${p.target}: ${p.reason}`],
  failed: ["✗", "bad", (p) => `update to ${p.target} failed: ${p.reason}`],
  rejected: ["✗", "bad", (p) => `manifest rejected: ${p.reason}`],
  retry: ["↻", "warn", (p) => `retrying ${p.what} (attempt ${p.attempt}) in ${p.delay_s} s: ${p.reason}`],
  delta_rejected: ["!", "warn", (p) => `delta for ${p.target} rejected, taking the full image: ${p.reason}`],
  key_rotated: ["⚿", "good", (p) => `trust anchor rotated to key ${p.key_id}`],
};

function historyItem(event) {
  const [icon, cls, describe] = EVENTS[event.event] || ["•", "", (p) => JSON.stringify(p)];
  const power = event.event === "booted" && event.payload.reset_reason === "power-on";
  return h("li", { "data-event": event.event, class: `${cls}${power ? " power" : ""}` },
    h("span", { class: "icon", text: icon }), time(event.received_at), h("span", { class: "kind", text: event.event }),
    h("span", { text: describe(event.payload) }));
}

function addHistory(events) {
  const list = $("#history");
  for (const event of events) {
    if (state.historyIds.has(event.id)) continue;
    state.historyIds.add(event.id);
    list.prepend(historyItem(event));
  }
}

function renderDeviceFacts() {
  const device = state.devices.get(state.device);
  const facts = device ? [["state", device.state], ["version", device.version], ["slot", device.slot],
    ["hardware", device.hardware], ["link", device.online ? "online" : "offline"], ["last seen", ago(device.last_seen)],
    ["group", device.report && device.report.group], ["last result", lastResultText(device.last_result)],
    ["assigned", device.assigned_version], ["image", device.image_sha256 && device.image_sha256.slice(0, 16)]] : [];
  $("#device-facts").replaceChildren(...facts.filter(([, v]) => v).map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
}

async function showDevice(id) {
  const reopen = state.device !== id;
  state.device = id;
  if (reopen) reconnect();                               // the stream then carries this device's row and events
  state.historyIds = new Set();
  $("#overview").hidden = true;
  $("#device").hidden = false;
  $("#device-id").textContent = id;
  $("#device-trigger").dataset.deviceId = id;
  $("#history").replaceChildren();
  renderDeviceFacts();
  let after = 0;
  for (let page = 0; page < HISTORY_PAGES; page++) {
    try {
      const data = await api("GET", `/api/v1/devices/${encodeURIComponent(id)}/history?limit=1000&after=${after}`);
      if (state.device !== id) return;
      addHistory(data.events);
      if (data.next_after == null) break;
      after = data.next_after;
    } catch (error) {
      say(error.message, true);
      break;
    }
  }
}

function route() {
  const match = location.hash.match(/^#\/devices\/(.+)$/);
  if (match) return showDevice(decodeURIComponent(match[1]));
  if (state.device) {
    state.device = null;
    reconnect();
  }
  $("#device").hidden = true;
  $("#overview").hidden = false;
}

// ---- token and actions ------------------------------------------------------------------------------

function applyAuth() {
  const hasToken = Boolean(token());
  document.body.dataset.auth = hasToken ? "token" : "read-only";
  const hint = "read-only: paste the API token at the top (docker compose exec server cat /var/lib/fotalab/api-token)";
  for (const button of document.querySelectorAll("button[data-action], #rollout-start")) {
    const applicable = button.dataset.applicable !== "no";
    button.disabled = !hasToken || !applicable;
    button.title = hasToken ? "" : hint;
  }
}

function wireActions() {
  $("#token").value = token();
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token").value.trim();
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
    applyAuth();
    say(value ? "Token saved in this browser: actions are enabled." : "Token removed: the dashboard is read-only.");
  });

  $("#rollout-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const group = form.group.value.trim();
    const body = { release: form.release.value, phases: form.phases.value.split(",").map((p) => p.trim()).filter(Boolean),
                   selection: group ? { group } : { all: true } };
    const created = await act((r) => `Rollout ${r.id} of ${r.release} started on ${r.devices.length} devices.`,
                              "POST", "/api/v1/rollouts", body);
    if (created) {
      state.chartRollout = created.id;
      loadCharts();
    }
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) {
      const { action, rolloutId, deviceId } = button.dataset;
      if (action === "trigger") {
        await act(() => `Update hint sent to ${deviceId}.`, "POST", `/api/v1/devices/${encodeURIComponent(deviceId)}/trigger`);
      } else {
        const changed = await act((r) => `Rollout ${r.id}: ${r.status}.`, "POST", `/api/v1/rollouts/${rolloutId}/${action}`);
        if (changed) {
          const known = state.rollouts.get(changed.id);
          if (known) state.rollouts.set(changed.id, { ...known, status: changed.status, reason: changed.reason });
          renderRollouts();
        }
      }
      return;
    }
    const title = event.target.closest(".rollout .title");
    if (title) {
      state.chartRollout = Number(title.closest("[data-rollout]").dataset.rollout);
      renderRollouts();
      loadCharts();
    }
  });

  $("#chart-rollout-select").addEventListener("change", (event) => {
    state.chartRollout = Number(event.target.value);
    renderRollouts();
    loadCharts();
  });
  $("#chart-hours").addEventListener("change", loadCharts);
}

async function start() {
  // the page came over plain HTTP: the lab runs without TLS (FOTA_PLAINTEXT=1), or the server is
  // reached past its front door; either way, say so
  $("#plaintext").hidden = location.protocol !== "http:";
  wireActions();
  wirePager();
  applyAuth();
  window.addEventListener("hashchange", route);
  route();
  await loadReleases();
  connect();
  loadCharts();
  setInterval(loadCharts, CHART_MS);
  setInterval(() => { tickLastSeen(); if (state.device) renderDeviceFacts(); }, 1000);
}

start();
