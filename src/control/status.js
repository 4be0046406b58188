// The status page of one mcrelay server: reads its /status (same origin)
// every REFRESH_MS and shows the site's three folders as this server's
// failover controller sees them, and the channels this server runs.
// Every text from the server goes into the DOM as text nodes, never parsed
// as markup, and the only attributes set are data-*, class and colspan.
"use strict";

// The failover status on the server changes at most every 100 ms; a
// second and a half is what an operator watching a takeover needs.
const REFRESH_MS = 1500;
// A fetch that has no answer within this is a failed one.
const FETCH_TIMEOUT_MS = 4000;

let fetches = 0;
let lastOkAt = null;
// Per channel id: its byte counter and when it was read (server time),
// for the bitrate: those of the last RATE_WINDOW_MS only.
const samples = new Map();
const RATE_WINDOW_MS = 5000;
const RATE_MIN_SPAN_MS = 1000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function duration(s) {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function stateClass(folder, state) {
  if (folder === "broken") return "bad";
  if (state.startsWith("inaccessible") || state.includes("broken")) return "warn";
  if (state.startsWith("covering") || state.startsWith("taking over")) return "active";
  if (state === "ok" || state === "standby") return "good";
  return "other";
}

function serverItem(folder, s, me, nowMs) {
  const name = String(s.name ?? "?");
  const state = String(s.state ?? "?");
  const li = el("li", {
    class: `server ${stateClass(folder, state)}${name === me ? " me" : ""}`,
    "data-server": name,
    "data-state": state,
  });
  li.append(el("span", { class: "name" }, name));
  if (name === me) li.append(el("span", { class: "this" }, " (this server)"));
  li.append(": ", el("span", { class: "state" }, state));
  if (typeof s.for_seconds === "number") {
    // A broken server's time is since it was found broken; the others'
    // since their state began.
    const since = clock(nowMs - s.for_seconds * 1000);
    const what = folder === "broken" ? "broken since" : "since";
    li.append(" ", el("span", { class: "since" }, `${what} ${since} (${duration(s.for_seconds)})`));
  }
  if (typeof s.cover === "string" && s.cover !== "") {
    li.append(el("div", { class: "cover" }, s.cover));
  }
  return li;
}

function renderFolder(id, folder, list, me, nowMs) {
  const ul = document.querySelector(`#${id} ul.servers`);
  const items = (Array.isArray(list) ? list : []).map((s) => serverItem(folder, s, me, nowMs));
  if (items.length === 0) items.push(el("li", { class: "empty" }, "none"));
  ul.replaceChildren(...items);
}

// The bitrate of a channel over the samples of the last RATE_WINDOW_MS
// (server time), from the oldest; none over less than RATE_MIN_SPAN_MS
// (fetches that came in a burst). A window of seconds smooths the key
// frames of a camera's GOP.
function bitrate(c, atMs) {
  const bytes = Number(c.bytes);
  let list = samples.get(c.id) || [];
  // A counter that went back is a restarted server: start again.
  if (list.length > 0 && bytes < list[list.length - 1].bytes) list = [];
  list.push({ bytes, atMs });
  list = list.filter((s) => atMs - s.atMs <= RATE_WINDOW_MS);
  samples.set(c.id, list);
  const first = list[0];
  if (atMs - first.atMs < RATE_MIN_SPAN_MS) return null;
  return ((bytes - first.bytes) * 8 * 1000) / (atMs - first.atMs);
}

function formatBitrate(bps) {
  if (bps === null || !Number.isFinite(bps)) return "measuring…";
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${(bps / 1e3).toFixed(0)} kbit/s`;
}

function channelRow(c, atMs) {
  const tcp = Number(c.clients?.tcp ?? 0);
  const mc = Number(c.clients?.multicast ?? 0);
  const group = c.multicast ? `${c.multicast.group}:${c.multicast.port}` : "—";
  const bps = bitrate(c, atMs);
  const tr = el("tr", {
    class: "channel",
    "data-channel": c.id,
    "data-owner": c.owner,
    "data-bitrate": bps === null ? "" : Math.round(bps),
    "data-viewers": tcp + mc,
  });
  const cells = [
    String(c.id),
    String(c.name || "—"),
    String(c.owner ?? ""),
    String(c.codec ?? "?"),
    String(c.camera?.state ?? "?"),
    group,
    formatBitrate(bps),
    `${tcp + mc} (${tcp} TCP, ${mc} multicast RTSP)`,
  ];
  for (const [i, text] of cells.entries()) {
    tr.append(el("td", { class: ["id", "name", "owner", "codec", "camera", "group", "bitrate", "viewers"][i] }, text));
  }
  return tr;
}

function render(st) {
  const me = String(st.server?.name ?? "");
  // Server time, so that "since" and the bitrate do not depend on this
  // browser's clock.
  const nowMs = typeof st.now_unix_ms === "number" ? st.now_unix_ms : Date.now();
  document.getElementById("server-name").textContent = me;
  document.title = `mcrelay ${me}`;
  const about = [st.server?.description, st.server?.role, st.server?.protocol]
    .filter((x) => typeof x === "string" && x !== "")
    .join(" · ");
  document.getElementById("server-about").textContent =
    `${about} · failover controller: ${st.failover_controller ?? "?"} · up ${duration(Number(st.uptime_seconds ?? 0))}`;
  renderFolder("folder-vms", "recorders", st.site?.recorders, me, nowMs);
  renderFolder("folder-failover", "failover", st.site?.failover, me, nowMs);
  renderFolder("folder-broken", "broken", st.site?.broken, me, nowMs);
  const channels = Array.isArray(st.channels) ? st.channels : [];
  const rows = channels.map((c) => channelRow(c, nowMs));
  if (rows.length === 0) {
    rows.push(el("tr", { class: "empty" }, el("td", { colspan: 8 }, "none")));
  }
  for (const id of samples.keys()) {
    if (!channels.some((c) => c.id === id)) samples.delete(id);
  }
  document.getElementById("channel-rows").replaceChildren(...rows);
}

function setUpdated(state, text) {
  const u = document.getElementById("updated");
  u.dataset.state = state;
  u.dataset.fetches = String(fetches);
  u.textContent = text;
}

async function refresh() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const r = await fetch("/status", { cache: "no-store", signal: ctl.signal });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const st = await r.json();
    render(st);
    fetches += 1;
    lastOkAt = Date.now();
    document.getElementById("unreachable").hidden = true;
    setUpdated("ok", `updated ${clock(lastOkAt)}, every ${REFRESH_MS / 1000} s`);
  } catch (e) {
    const why = e && e.name === "AbortError" ? "no answer" : String(e && e.message ? e.message : e);
    const u = document.getElementById("unreachable");
    u.textContent = lastOkAt === null
      ? `cannot reach the server (${why}); nothing to show yet`
      : `cannot reach the server (${why}); showing the view of ${clock(lastOkAt)}`;
    u.hidden = false;
    setUpdated("unreachable", lastOkAt === null ? "not updated yet" : `last updated ${clock(lastOkAt)}`);
  } finally {
    clearTimeout(timer);
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
