"""The cluster dashboard: an HTML page that refreshes itself, and the pools' status it shows.

``GET /`` on the control listener is ``PAGE``: it asks ``/status`` (this
front-end) and ``/pools`` (every worker server's php-fpm-style status page,
fetched here over FastCGI at ``[frontend] pool_status_path``) every
``REFRESH_SECONDS``, and draws tables of every upstream, server and pool
plus small plots of requests/s and mean latency over the last minutes.
Everything is in the page (no script or style from elsewhere), so it works
where the control listener is reachable and nothing else is.
"""

from __future__ import annotations

import json
import typing

import trio

from ..client import FastCGIError, cgi_params, open_connection

__all__ = ["PAGE", "POOL_STATUS_TIMEOUT", "REFRESH_SECONDS", "pool_statuses"]

#: Seconds the page waits between two refreshes.
REFRESH_SECONDS = 2

#: Seconds a pool has to answer its status request: a live pool answers in
#: milliseconds; a dead one must not hold the page for long.
POOL_STATUS_TIMEOUT = 2.0


async def pool_statuses(server: typing.Any) -> dict[str, object]:
    """Every worker server's pool status (its ``?json`` page), by address; an error text where none came.

    Returns:
        ``{"path": ..., "pools": {address: {"status": {...}} or {"error": "..."}}}``.
    """
    default = server.frontend.pool_status_path
    paths: dict[str, str] = {}  # address -> its pool's status path
    for up in server.site.upstreams.values():
        path = up.config.status_path or default
        for s in up.servers:
            if path:
                paths.setdefault(s.address, path)
    addresses = sorted(paths)
    pools: dict[str, object] = {}
    if not paths:
        return {"path": "", "pools": pools}

    async def fetch(address: str) -> None:
        params = cgi_params("GET", f"{paths[address]}?json", headers={"User-Agent": "fcgi-cluster dashboard"})
        with trio.move_on_after(POOL_STATUS_TIMEOUT):
            try:
                async with open_connection(address, connect_timeout=POOL_STATUS_TIMEOUT) as conn:
                    response = await conn.request(params)
                if response.status != 200:
                    pools[address] = {"error": f"status {response.status}"}
                    return
                pools[address] = {"status": json.loads(response.body)}
            except FastCGIError as exc:
                pools[address] = {"error": str(exc) or type(exc).__name__}
            except ValueError:
                pools[address] = {"error": "not a JSON status page"}
            return
        pools[address] = {"error": f"no answer within {POOL_STATUS_TIMEOUT:g} s"}

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(fetch, address)
    return {"path": ", ".join(sorted(set(paths.values()))), "pools": {address: pools[address] for address in addresses}}


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fcgi-cluster</title>
<link rel="icon" href="data:,">
<style>
body { font: 14px system-ui, sans-serif; margin: 1.2em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .3em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; background: #fff; margin-bottom: .6em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.up { color: #176f2c; font-weight: 600; } .drain { color: #a66a00; font-weight: 600; }
.down, .failing, .error { color: #b00020; font-weight: 600; }
.plots { display: flex; gap: 1.5em; flex-wrap: wrap; }
.plot { background: #fff; border: 1px solid #ddd; padding: .3em .5em; }
.plot svg { display: block; } .muted { color: #777; }
</style></head>
<body data-updates="0">
<h1>fcgi-cluster <span class="muted" id="when">loading...</span></h1>
<div id="process"></div>
<div id="upstreams"></div>
<h2>Pools</h2><div id="pools"></div>
<div id="errors" class="error"></div>
<script>
"use strict";
const REFRESH_MS = __REFRESH__ * 1000, KEEP = 150;
const history = {};  // upstream -> [{t, requests, count, sum}]
const previous = {};  // pid -> {t, n}: its requests at the last refresh
// Any script error shows on the page (and a test of the page sees it).
window.addEventListener("error", e => { document.getElementById("errors").textContent += " error: " + e.message; });
window.addEventListener("unhandledrejection", e => { document.getElementById("errors").textContent += " rejected: " + e.reason; });
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function table(head, rows) {
  const t = el("table", {});
  t.append(el("tr", {}, ...head.map((h, i) => el("th", i ? {} : {class: "l"}, h))));
  for (const row of rows) t.append(el("tr", {}, ...row.map((c, i) => c instanceof Node ? el("td", {}, c) : el("td", i ? {} : {class: "l"}, c))));
  return t;
}
function plot(title, points, unit) {
  const w = 260, h = 60, max = Math.max(1e-9, ...points);
  const step = w / Math.max(1, KEEP - 1), start = w - step * (points.length - 1);
  const line = points.map((v, i) => `${(start + i * step).toFixed(1)},${(h - 2 - (h - 4) * v / max).toFixed(1)}`).join(" ");
  const svg = `<svg width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><rect width="${w}" height="${h}" fill="#fff"/>` +
    `<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="${line}"/></svg>`;
  const box = el("div", {class: "plot"}, el("div", {}, `${title}: `, el("b", {}, points.length ? points[points.length - 1].toFixed(unit === "ms" ? 1 : 2) : "-"), ` ${unit} (max ${max.toFixed(1)})`));
  box.insertAdjacentHTML("beforeend", svg);
  return box;
}
function latency(s) {
  const n = s.latency.counts.reduce((a, b) => a + b, 0);
  return n ? (1000 * s.latency.sum / n).toFixed(1) + " ms" : "-";
}
function drawStatus(report) {
  const rate = p => {  // requests/s of a process since the last refresh
    const last = previous[p.pid], now = {t: report.time, n: p.requests};
    previous[p.pid] = now;
    return last ? (Math.max(0, now.n - last.n) / Math.max(1e-3, now.t - last.t)).toFixed(1) : "-";
  };
  document.getElementById("process").replaceChildren(
    table(["process", "clients held", "accepted", "requests", "requests/s", "requests in flight", "figures"],
          report.processes.map(p => [p.pid, p.clients, p.accepted, p.requests, rate(p), p.requests_in_flight,
            // How old the process's figures are: a stale row is one to doubt.
            p.stale ? el("span", {class: "error"}, `stale: ${p.age.toFixed(1)} s old`) : `${p.age.toFixed(1)} s old`])));
  const box = document.getElementById("upstreams");
  box.replaceChildren();
  for (const up of report.upstreams) {
    const totals = {t: report.time, requests: 0, count: 0, sum: 0};
    for (const s of up.servers) {
      totals.requests += s.requests; totals.sum += s.latency.sum;
      totals.count += s.latency.counts.reduce((a, b) => a + b, 0);
    }
    const h = history[up.name] = (history[up.name] || []).concat([totals]).slice(-KEEP - 1);
    const rates = [], lat = [];
    for (let i = 1; i < h.length; i++) {
      const dt = Math.max(1e-3, h[i].t - h[i - 1].t), dn = h[i].count - h[i - 1].count;
      rates.push(Math.max(0, h[i].requests - h[i - 1].requests) / dt);
      lat.push(dn > 0 ? 1000 * (h[i].sum - h[i - 1].sum) / dn : 0);
    }
    box.append(el("h2", {}, `upstream ${up.name} `, el("span", {class: "muted"}, up.balance)));
    box.append(table(["server", "state", "weight", "requests", "failures", "retries", "in flight", "connections", "mean latency"],
      up.servers.map(s => [s.address, el("span", {class: s.state, title: s.since ? "since " + new Date(1000 * s.since).toLocaleString() : ""}, s.state + (s.since ? " " + Math.round(report.time - s.since) + " s" : "")), s.weight, s.requests,
        s.failures, s.retries, s.in_flight, s.connections + (s.multiplexed ? " (mux)" : ""), latency(s)])));
    box.append(el("div", {class: "plots"}, plot("requests/s", rates, "req/s"), plot("mean latency", lat, "ms")));
  }
}
function drawPools(report) {
  const box = document.getElementById("pools");
  if (!report.path) { box.replaceChildren(el("p", {class: "muted"}, "set [frontend] pool_status_path to show the pools")); return; }
  const entries = Object.entries(report.pools);
  // php-fpm's fields that say how a pool is doing (the page has more: /pools).
  const keys = ["pool", "process manager", "accepted conn", "listen queue", "idle processes",
                "active processes", "total processes", "max children reached", "slow requests"];
  box.replaceChildren(table(["address", ...keys], entries.map(([address, p]) =>
    p.status ? [address, ...keys.map(k => p.status[k] ?? "")] : [address, el("span", {class: "error"}, p.error), ...keys.slice(1).map(() => "")])));
}
async function refresh() {
  try {
    // With a control token, the page is opened as /#TOKEN: the token goes in each request, not in the URL sent.
    const token = decodeURIComponent(location.hash.slice(1));
    const options = token ? {headers: {Authorization: "Bearer " + token}} : {};
    const [status, pools] = await Promise.all([fetch("status", options), fetch("pools", options)]);
    if (!status.ok) throw new Error("status: HTTP " + status.status + (token ? "" : " (open this page as /#TOKEN)"));
    drawStatus(await status.json());
    drawPools(await pools.json());
    document.getElementById("when").textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("errors").textContent = "";
    document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  } catch (exc) {
    document.getElementById("errors").textContent = "cannot refresh: " + exc;
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script></body></html>
""".replace("__REFRESH__", str(REFRESH_SECONDS))
