// Inline SVG charts for the dashboard, drawn from GET /api/v1/dashboard/charts (no library).
const NS = "http://www.w3.org/2000/svg";
const W = 640, H = 220, LEFT = 74, RIGHT = 14, TOP = 14, BOTTOM = 34;

function el(parent, tag, attrs = {}, text = "") {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function reset(svg) {
  svg.replaceChildren();
  return svg;
}

function noData(svg, text) {
  el(svg, "text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "nodata" }, text);
}

export function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// y axis from 0 to max with a few labelled grid lines
function yAxis(svg, max, format) {
  const steps = 4;
  for (let i = 0; i <= steps; i++) {
    const y = TOP + (H - TOP - BOTTOM) * (1 - i / steps);
    el(svg, "line", { x1: LEFT, x2: W - RIGHT, y1: y, y2: y, class: i ? "grid" : "axis" });
    el(svg, "text", { x: LEFT - 6, y: y + 4, "text-anchor": "end", class: "label" }, format(max * i / steps));
  }
  return (value) => TOP + (H - TOP - BOTTOM) * (1 - value / max);
}

function legend(svg, items) {
  let x = LEFT;
  for (const [cls, text] of items) {
    el(svg, "rect", { x, y: H - 13, width: 10, height: 10, class: cls });
    el(svg, "text", { x: x + 14, y: H - 4, class: "label" }, text);
    x += 26 + text.length * 7.2;
  }
}

// (a) one pair of bars per committed update: the full image (grey) and what was downloaded
export function drawBandwidth(svg, data) {
  reset(svg);
  const updates = data.updates.slice(-40);
  if (!updates.length) return noData(svg, "no committed update in this window yet");
  const max = Math.max(...updates.map((u) => Math.max(u.full, u.downloaded)));
  const y = yAxis(svg, max, bytes);
  const slot = (W - LEFT - RIGHT) / updates.length;
  const bar = Math.max(2, Math.min(18, slot * 0.4));
  updates.forEach((u, i) => {
    const x = LEFT + slot * i + slot / 2;
    const full = el(svg, "rect", { x: x - bar, y: y(u.full), width: bar, height: y(0) - y(u.full), class: "full" });
    el(full, "title", {}, `${u.device_id} ${u.version}: full image ${bytes(u.full)}`);
    const got = el(svg, "rect", { x, y: y(u.downloaded), width: bar, height: Math.max(1, y(0) - y(u.downloaded)),
                                  class: u.kind === "delta" ? "delta" : "image" });
    el(got, "title", {}, `${u.device_id} ${u.version}: downloaded ${bytes(u.downloaded)} (${u.kind})`);
    if (updates.length <= 8) {
      el(svg, "text", { x, y: H - BOTTOM + 14, "text-anchor": "middle", class: "label" },
         `${u.device_id} ${clock(u.at)}`);
    }
  });
  legend(svg, [["full", "full image"], ["delta", "downloaded: delta"], ["image", "downloaded: full image"]]);
}

// (b) committed devices of one rollout over time, with its decisions as vertical marks
export function drawRollout(svg, data) {
  reset(svg);
  if (!data) return noData(svg, "no rollout yet");
  const start = data.created_at, end = Math.max(data.until, start + 60);
  const x = (t) => LEFT + (W - LEFT - RIGHT) * (t - start) / (end - start);
  const y = yAxis(svg, Math.max(1, data.devices), (v) => (Number.isInteger(v) ? String(v) : ""));
  el(svg, "line", { x1: LEFT, x2: W - RIGHT, y1: y(data.devices), y2: y(data.devices), class: "target" });
  for (const [i, t] of [start, (start + end) / 2, end].entries()) {
    el(svg, "text", { x: x(t), y: H - BOTTOM + 16, "text-anchor": ["start", "middle", "end"][i], class: "label" }, clock(t));
  }
  let path = `M${x(start)},${y(0)}`;
  for (const p of data.points) path += ` H${x(p.at)} V${y(p.committed)}`;
  path += ` H${x(end)}`;
  el(svg, "path", { d: path, class: "line" });
  data.marks.forEach((m, i) => {
    if (m.action === "created") return;
    const bad = ["paused", "aborted"].includes(m.action) ? " bad" : "";
    const line = el(svg, "line", { x1: x(m.at), x2: x(m.at), y1: TOP, y2: y(0), class: `mark${bad}` });
    el(line, "title", {}, `${clock(m.at)} ${m.action}: ${m.reason}`);
    const label = m.action === "advanced" ? `phase ${m.phase}` : m.action;
    el(svg, "text", { x: x(m.at) + 3, y: TOP + 10 + (i % 3) * 12, class: `mark-label${bad}` }, label);
  });
}

// (c) per time bucket: boots after a power cut, downloads resumed, updates resumed
export function drawRecoveries(svg, data) {
  reset(svg);
  const names = [["power_on_boots", "power-on boots"], ["download_resumes", "downloads resumed"],
                 ["update_resumes", "updates resumed"]];
  const max = Math.max(1, ...names.flatMap(([name]) => data.series[name]));
  const y = yAxis(svg, max, (v) => (Number.isInteger(v) ? String(v) : ""));
  const buckets = data.series.power_on_boots.length;
  const slot = (W - LEFT - RIGHT) / buckets, bar = slot / (names.length + 1);
  names.forEach(([name, text], s) => {
    data.series[name].forEach((count, i) => {
      if (!count) return;
      const rect = el(svg, "rect", { x: LEFT + slot * i + bar * (s + 0.5), y: y(count), width: bar,
                                     height: y(0) - y(count), class: `s${s}` });
      el(rect, "title", {}, `${count} ${text} around ${clock(data.since + data.bucket_s * (i + 0.5))}`);
    });
  });
  const hours = (data.until - data.since) / 3600;
  for (const [i, text] of [`${hours} h ago`, `${hours / 2} h ago`, "now"].entries()) {
    el(svg, "text", { x: LEFT + (W - LEFT - RIGHT) * i / 2, y: H - BOTTOM + 16,
                      "text-anchor": ["start", "middle", "end"][i], class: "label" }, text);
  }
  legend(svg, names.map(([, text], s) => [`s${s}`, text]));
}
