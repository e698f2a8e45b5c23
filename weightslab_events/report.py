"""A self-contained HTML report of an experiments root: one file, no server, no network.

The data (lineage, checkpoints, differences from the parent, hyperparameters, metric curves) is
embedded as JSON; a small inline script draws the tree, the step axis and the curves as SVG, so
the page opens from disk anywhere. It stays readable with a hundred hashes: a chain of single
forks stays at one indent level, a filter box narrows the tree, and the details of one hash show
at a time.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

from .diffing import config_of, differences
from .eventlog import EventLogError, iter_events
from .store import Store
from .tree import load_experiments

__all__ = ["build_report", "report_data"]


def _metrics(store: Store) -> dict[str, dict[str, list[list[float]]]]:
    curves: dict[str, dict[str, list[list[float]]]] = {}
    if not store.log_path.is_file():
        return curves
    try:
        for event in iter_events(store.log_path):
            if event.type == "metric" and event.exp:
                curve = curves.setdefault(event.exp, {}).setdefault(str(event.data["name"]), [])
                curve.append([event.step, float(event.data["value"])])
    except EventLogError:
        pass  # a damaged log only costs the curves, never the report
    return curves


def report_data(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    store = Store(Path(root))
    experiments = load_experiments(root)
    items = []
    for exp in experiments.values():
        diff = differences(store, exp.parent, exp.hash) if exp.parent in experiments else {}
        items.append(
            {
                **exp.to_json(),
                "children": exp.children,
                "checkpoints": [
                    {k: r.get(k) for k in ("step", "reason", "size", "created", "metrics")} for r in exp.checkpoints
                ],
                "diff": diff,
                "config": config_of(store, exp.hash),
                "recorded_cause": exp.cause,
            }
        )
    items.sort(key=lambda e: e["created"])
    return {
        "root": str(Path(root).resolve()),
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "experiments": items,
        "metrics": _metrics(store),
    }


def build_report(root: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    data = json.dumps(report_data(root), default=str).replace("</", "<\\/")
    title = html.escape(f"weightslab-events: {Path(root).resolve().name}")
    page = _TEMPLATE.replace("__TITLE__", title).replace("__DATA__", data)
    path = Path(output)
    path.write_text(page, encoding="utf-8")
    return path


_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --bg:#f6f7f9; --panel:#fff; --ink:#1d2330; --muted:#687083; --line:#e3e6eb; --accent:#3b6ef5;
  --fork:#e8590c; --periodic:#3b6ef5; --start:#2b8a3e; --reset:#c2255c; --final:#5f3dc4; --other:#868e96; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:var(--bg); }
header { padding:14px 22px; background:var(--panel); border-bottom:1px solid var(--line); display:flex; gap:24px; align-items:baseline; }
header h1 { font-size:18px; margin:0; }
header .stat { color:var(--muted); }
main { display:grid; grid-template-columns:minmax(300px,30%) 1fr; height:calc(100vh - 54px); }
nav { border-right:1px solid var(--line); background:var(--panel); overflow:auto; padding:10px 8px 24px; }
nav input { width:100%; padding:7px 9px; border:1px solid var(--line); border-radius:6px; margin-bottom:8px; font:inherit; }
.node { display:block; padding:4px 8px; border-radius:6px; cursor:pointer; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
.node:hover { background:#eef2ff; }
.node.selected { background:var(--accent); color:#fff; }
.node.selected .cause { color:#dfe6ff; }
.node code { font-size:12.5px; }
.node .cause { color:var(--muted); font-size:12px; margin-left:6px; }
.node .count { float:right; color:var(--muted); font-size:12px; }
section { overflow:auto; padding:18px 24px 40px; }
.card { background:var(--panel); border:1px solid var(--line); border-radius:10px; padding:14px 18px; margin-bottom:16px; }
.card h2 { font-size:15px; margin:0 0 10px; }
.card h2 small { color:var(--muted); font-weight:normal; }
.lineage span { color:var(--muted); }
.diff li { margin:2px 0; }
.diff .arch { color:#0b7285; } .diff .hp { color:#a61e4d; }
table { border-collapse:collapse; width:100%; font-size:13px; }
td, th { border-bottom:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { color:var(--muted); font-weight:600; }
.legend span { display:inline-flex; align-items:center; gap:4px; margin-right:12px; color:var(--muted); font-size:12px; }
.legend i { width:10px; height:10px; border-radius:50%; display:inline-block; }
svg text { font-size:11px; fill:var(--muted); }
.timeline-row { cursor:pointer; } .timeline-row:hover rect.band { fill:#eef2ff; }
.empty { color:var(--muted); font-style:italic; }
</style></head>
<body>
<header><h1>__TITLE__</h1><span class="stat" id="stats"></span></header>
<main>
<nav><input id="filter" placeholder="filter by hash or cause" aria-label="filter"><div id="tree"></div></nav>
<section id="details"></section>
</main>
<script type="application/json" id="data">__DATA__</script>
<script>
const DATA = JSON.parse(document.getElementById("data").textContent);
const byHash = Object.fromEntries(DATA.experiments.map(e => [e.hash, e]));
const COLORS = {fork:"var(--fork)", periodic:"var(--periodic)", start:"var(--start)", reset:"var(--reset)", final:"var(--final)"};
const color = r => COLORS[r] || "var(--other)";
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const causeOf = e => {
  if (!e.parent) return "";
  const d = e.diff || {};
  const words = [...(d.hyperparameters || []), ...(d.architecture || [])];
  return words.length ? words.join("; ") : (e.recorded_cause || "");
};
const steps = DATA.experiments.flatMap(e => e.checkpoints.map(c => c.step));
const maxStep = Math.max(1, ...steps);
document.getElementById("stats").textContent =
  `${DATA.experiments.length} experiments · ${steps.length} checkpoints · up to step ${maxStep} · ${DATA.generated}`;

function treeRows() {
  const rows = [];
  const roots = DATA.experiments.filter(e => !byHash[e.parent]);
  const walk = (e, depth) => {
    rows.push({e, depth});
    const kids = e.children.map(h => byHash[h]).filter(Boolean);
    // a chain of single forks stays at one level, so deep lineages stay readable
    kids.forEach(k => walk(k, kids.length === 1 ? depth : depth + 1));
  };
  roots.forEach(r => walk(r, 0));
  return rows;
}
const ROWS = treeRows();
let selected = null;

function drawTree() {
  const q = document.getElementById("filter").value.toLowerCase();
  const html = ROWS.filter(({e}) => !q || e.hash.includes(q) || causeOf(e).toLowerCase().includes(q))
    .map(({e, depth}) => `<a class="node${e.hash === selected ? " selected" : ""}" data-hash="${e.hash}"
        style="padding-left:${8 + depth * 16}px" title="${esc(causeOf(e))}">
        <span class="count">${e.checkpoints.length}</span><code>${e.hash.slice(0, 10)}</code>
        <span class="cause">${esc(causeOf(e)) || (e.parent ? "" : "root")}</span></a>`).join("");
  document.getElementById("tree").innerHTML = html || '<p class="empty">no match</p>';
}

function axisSvg(exps, width, rowHeight) {
  const left = 96, right = 16, x = s => left + (width - left - right) * s / maxStep;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map(f => Math.round(f * maxStep));
  let out = `<svg width="${width}" height="${exps.length * rowHeight + 24}" role="img" aria-label="checkpoints by step">`;
  ticks.forEach(t => out += `<line x1="${x(t)}" x2="${x(t)}" y1="0" y2="${exps.length * rowHeight}" stroke="#eceff3"/>
    <text x="${x(t)}" y="${exps.length * rowHeight + 16}" text-anchor="middle">${t}</text>`);
  exps.forEach((e, i) => {
    const y = i * rowHeight + rowHeight / 2;
    const first = e.checkpoints.length ? e.checkpoints[0].step : 0;
    const last = e.checkpoints.length ? e.checkpoints[e.checkpoints.length - 1].step : 0;
    out += `<g class="timeline-row" data-hash="${e.hash}"><rect class="band" x="0" y="${i * rowHeight}" width="${width}" height="${rowHeight}" fill="transparent"/>
      <text x="4" y="${y + 4}" style="fill:var(--ink)">${e.hash.slice(0, 10)}</text>
      <line x1="${x(first)}" x2="${x(last)}" y1="${y}" y2="${y}" stroke="#c5ccd6" stroke-width="2"/>`;
    e.checkpoints.forEach(c => out += `<circle class="ckpt" cx="${x(c.step)}" cy="${y}" r="4.5" fill="${color(c.reason)}"><title>${e.hash} step ${c.step} (${c.reason})</title></circle>`);
    out += "</g>";
  });
  return out + "</svg>";
}

function curveSvg(name, points, width) {
  const h = 160, l = 48, r = 12, t = 10, b = 22;
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const X = v => l + (width - l - r) * (v - x0) / (x1 - x0), Y = v => t + (h - t - b) * (1 - (v - y0) / (y1 - y0));
  const path = points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
  return `<svg class="curve" width="${width}" height="${h}" role="img" aria-label="${esc(name)}">
    <text x="${l}" y="${t + 2}" style="fill:var(--ink)">${esc(name)}</text>
    <text x="4" y="${Y(y1) + 4}">${y1.toPrecision(3)}</text><text x="4" y="${Y(y0)}">${y0.toPrecision(3)}</text>
    <text x="${l}" y="${h - 6}">${x0}</text><text x="${width - r}" y="${h - 6}" text-anchor="end">${x1}</text>
    <path d="${path}" fill="none" stroke="var(--accent)" stroke-width="2"/></svg>`;
}

function configRows(obj, prefix = "") {
  // "hyperparams:config" / "values" / "kind" are bookkeeping: show the keys a person set.
  return Object.entries(obj || {}).flatMap(([k, v]) => {
    if (k === "kind") return [];
    const label = k === "values" || k === "settings" ? prefix : prefix + k.replace(/^[a-z]+:/, "") + ".";
    if (v && typeof v === "object" && !Array.isArray(v)) return [configRows(v, label)];
    if (Array.isArray(v) && v.length && v.every(x => x && typeof x === "object"))
      return v.map((x, i) => configRows(x, label.replace(/\.$/, "") + `[${i}].`));
    return [`<tr><th>${esc(label.replace(/\.$/, ""))}</th><td>${esc(JSON.stringify(v))}</td></tr>`];
  }).join("");
}

function lineageMetrics(lineage) {
  const curves = {};
  lineage.forEach(c => Object.entries(DATA.metrics[c.hash] || {}).forEach(([name, points]) =>
    (curves[name] = curves[name] || []).push(...points)));
  Object.values(curves).forEach(p => p.sort((a, b) => a[0] - b[0]));
  return curves;
}

function show(hash) {
  selected = hash;
  drawTree();
  const e = byHash[hash];
  const width = Math.max(420, document.getElementById("details").clientWidth - 120);
  const lineage = [];
  for (let c = e; c; c = byHash[c.parent]) lineage.unshift(c);
  const d = e.diff || {};
  const diffItems = [...(d.hyperparameters || []).map(x => `<li class="hp">${esc(x)}</li>`),
                     ...(d.architecture || []).map(x => `<li class="arch">${esc(x)}</li>`)].join("");
  const metrics = lineageMetrics(lineage);
  const legend = Object.keys(COLORS).map(k => `<span><i style="background:${COLORS[k]}"></i>${k}</span>`).join("");
  document.getElementById("details").innerHTML = `
    <div class="card" id="summary"><h2>experiment <code>${e.hash}</code> <small>${esc(e.created)}</small></h2>
      <div class="lineage">${lineage.map(c => `<code>${c.hash.slice(0, 10)}</code>` +
        (c.parent ? ` <span>(${esc(causeOf(c))} at step ${c.fork_step})</span>` : "")).join(" → ")}</div></div>
    <div class="card" id="diff"><h2>changes from its parent ${e.parent ? `<small>${e.parent}</small>` : ""}</h2>
      ${e.parent ? (diffItems ? `<ul class="diff">${diffItems}</ul>` : '<p class="empty">no recorded difference</p>') : '<p class="empty">root experiment</p>'}</div>
    <div class="card" id="checkpoints"><h2>checkpoints along the step axis <small>lineage of this hash</small></h2>
      <div class="legend">${legend}</div>${axisSvg(lineage, width, 26)}</div>
    <div class="card" id="metrics"><h2>metrics <small>along the lineage</small></h2>${Object.keys(metrics).length ?
      Object.entries(metrics).map(([n, p]) => curveSvg(n, p, width)).join("") : '<p class="empty">no metrics reported</p>'}</div>
    <div class="card" id="hyperparameters"><h2>hyperparameters</h2><table>${configRows(e.config)}</table></div>
    <div class="card" id="overview"><h2>all experiments <small>click a row</small></h2>${axisSvg(DATA.experiments, width, 18)}</div>`;
  document.querySelectorAll("#details .timeline-row").forEach(g => g.addEventListener("click", () => show(g.dataset.hash)));
}

document.getElementById("tree").addEventListener("click", ev => {
  const node = ev.target.closest(".node"); if (node) show(node.dataset.hash);
});
document.getElementById("filter").addEventListener("input", drawTree);
drawTree();
if (DATA.experiments.length) {
  const newest = [...DATA.experiments].sort((a, b) => (b.last_step ?? 0) - (a.last_step ?? 0))[0];
  show(newest.hash);
} else {
  document.getElementById("details").innerHTML = '<p class="empty">no experiments in this root yet</p>';
}
</script></body></html>
"""
