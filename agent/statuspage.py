"""The status page at `GET /`: one self-contained HTML page (inline CSS and script, no external
asset, works with no internet) that reads `/api/v1/results` every few seconds and updates its
table in place: every check with status, reason, message, target, last run, last status change
and its recent history; failing checks first; filters by status, tag, type and text; 100 rows a
page, so 10 000 checks cost the browser what 100 do.

What a target sends (a message, a reason phrase, a name) only ever reaches the page as text: the
script builds every node with `textContent`, never parses data as markup, and the page is served
with a Content-Security-Policy that allows only this script and this style (by their SHA-256,
computed here at import) and requests to the agent itself.
"""

from __future__ import annotations

import base64
import hashlib

REFRESH_SECONDS = 5  # the page's default; `/?refresh=N` (N >= 1) for another

_STYLE = """
:root{color-scheme:light dark;--ok:#1a7f37;--warn:#9a6700;--crit:#cf222e;--unk:#8250df;
--bg:#fff;--fg:#1f2328;--mute:#656d76;--line:#d0d7de;--critbg:#ffebe9;--warnbg:#fff8c5;--unkbg:#fbefff}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--mute:#8d96a0;--line:#30363d;
--critbg:#3d1417;--warnbg:#3a2e0a;--unkbg:#2b1f45;--ok:#3fb950;--warn:#d29922;--crit:#f85149;--unk:#a371f7}}
body{margin:0;padding:12px 16px;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
h1{font-size:18px;margin:0 8px 0 0;display:inline}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:12px;margin-bottom:8px}
.mute{color:var(--mute)}
#summary span{margin-right:10px}
#controls{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
#controls label{color:var(--mute)}
select,input,button{font:inherit;color:inherit;background:var(--bg);border:1px solid var(--line);
border-radius:4px;padding:2px 6px}
#error{background:var(--critbg);border:1px solid var(--crit);padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{position:sticky;top:0;background:var(--bg);font-weight:600}
td.msg{max-width:38em;overflow-wrap:anywhere}
td.target{max-width:24em;overflow-wrap:anywhere}
td.nowrap{white-space:nowrap}
tr.s-CRITICAL{background:var(--critbg)}
tr.s-WARNING{background:var(--warnbg)}
tr.s-UNKNOWN{background:var(--unkbg)}
.badge{display:inline-block;min-width:5.5em;text-align:center;border-radius:3px;color:#fff;
font-weight:600;font-size:12px;padding:1px 4px}
.b-OK{background:var(--ok)}.b-WARNING{background:var(--warn)}.b-CRITICAL{background:var(--crit)}
.b-UNKNOWN{background:var(--unk)}
.hist{display:flex;gap:1px;align-items:flex-end;height:14px}
.hist span{display:inline-block;width:5px;height:14px;border-radius:1px}
.tag{display:inline-block;border:1px solid var(--line);border-radius:8px;padding:0 6px;margin:0 2px 2px 0;
font-size:12px;color:var(--mute)}
#pager{margin:8px 0;display:flex;gap:8px;align-items:center}
[hidden]{display:none!important}
"""

_SCRIPT = """
"use strict";
(() => {
  const ORDER = {CRITICAL: 0, UNKNOWN: 1, WARNING: 2, OK: 3};
  const NAMES = ["OK", "WARNING", "CRITICAL", "UNKNOWN"];
  const PAGE = 100;
  const params = new URLSearchParams(location.search);
  const refresh = Math.max(1, Number(params.get("refresh")) || REFRESH) * 1000;
  const $ = (id) => document.getElementById(id);
  let results = [];
  let page = 0;
  let loadedAt = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function when(t) {
    return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function ago(t) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - t));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function filters() {
    return {status: $("f-status").value, tag: $("f-tag").value, type: $("f-type").value,
            text: $("f-text").value.trim().toLowerCase()};
  }
  function keep(r, f) {
    if (f.status && r.status !== f.status) return false;
    if (f.tag && !(r.tags || []).includes(f.tag)) return false;
    if (f.type && r.type !== f.type) return false;
    if (f.text && !(r.check + " " + r.target + " " + r.message + " " + r.reason)
      .toLowerCase().includes(f.text)) return false;
    return true;
  }
  function fillSelect(select, values, all) {
    const chosen = select.value || new URLSearchParams(location.search).get(select.id.slice(2)) || "";
    const wanted = [all].concat(Array.from(values).sort());
    const current = Array.from(select.options, (o) => o.textContent);
    if (current.join("\\u0000") !== wanted.join("\\u0000")) {
      select.replaceChildren(...wanted.map((v, i) => {
        const o = el("option", null, v);
        o.value = i === 0 ? "" : v;
        return o;
      }));
    }
    select.value = wanted.includes(chosen) ? chosen : "";
  }
  function cell(row, cls, text, title) {
    const td = el("td", cls, text);
    if (title) td.title = title;
    row.append(td);
    return td;
  }
  function rowOf(r) {
    const tr = el("tr", "s-" + r.status);
    tr.dataset.check = r.check;
    tr.dataset.status = r.status;
    const st = cell(tr, "nowrap");
    st.append(el("span", "badge b-" + r.status, r.status));
    const name = cell(tr, null, r.check);
    if (r.tags && r.tags.length) {
      name.append(el("br"));
      for (const t of r.tags) name.append(el("span", "tag", t));
    }
    cell(tr, null, r.type);
    cell(tr, "target", r.target);
    cell(tr, "nowrap", r.reason === "ok" ? "" : r.reason);
    cell(tr, "msg", r.message);
    cell(tr, "nowrap", ago(r.started_at), when(r.started_at) + ", took " +
      r.duration_seconds.toFixed(3) + " s" + (r.attempts > 1 ? ", " + r.attempts + " attempts" : ""));
    const change = r.last_change;
    cell(tr, "nowrap", change ? ago(change.at) : "",
      change ? (change.from ? change.from + " \\u2192 " + r.status : "since the first run") +
        " at " + when(change.at) : "");
    const hist = el("div", "hist");
    const h = r.history || {started_at: [], status_code: []};
    h.status_code.forEach((code, i) => {
      const s = el("span", "b-" + (NAMES[code] || "UNKNOWN"));
      s.title = (NAMES[code] || code) + " at " + when(h.started_at[i]);
      hist.append(s);
    });
    cell(tr, null).append(hist);
    return tr;
  }
  function render() {
    const tags = new Set(), types = new Set(), counts = {OK: 0, WARNING: 0, CRITICAL: 0, UNKNOWN: 0};
    for (const r of results) {
      (r.tags || []).forEach((t) => tags.add(t));
      types.add(r.type);
      counts[r.status] = (counts[r.status] || 0) + 1;
    }
    fillSelect($("f-tag"), tags, "all tags");
    fillSelect($("f-type"), types, "all types");
    const summary = $("summary");
    summary.replaceChildren(el("span", null, results.length + (results.length === 1 ? " check" : " checks")));
    for (const s of ["CRITICAL", "UNKNOWN", "WARNING", "OK"]) {
      if (counts[s]) summary.append(el("span", "badge b-" + s, counts[s] + " " + s));
    }
    const f = filters();
    const shown = results.filter((r) => keep(r, f)).sort((a, b) =>
      (ORDER[a.status] - ORDER[b.status]) || (a.check < b.check ? -1 : a.check > b.check ? 1 : 0));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    const slice = shown.slice(page * PAGE, page * PAGE + PAGE);
    const body = $("rows");
    if (slice.length) {
      body.replaceChildren(...slice.map(rowOf));
    } else {
      const tr = el("tr");
      const td = el("td", "mute", results.length ? "No check matches the filters."
        : "No results yet: the first runs are spread over each check's interval.");
      td.colSpan = 9;
      tr.append(td);
      body.replaceChildren(tr);
    }
    $("pageinfo").textContent = shown.length ? "rows " + (page * PAGE + 1) + "\\u2013" +
      (page * PAGE + slice.length) + " of " + shown.length : "";
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
    $("pager").hidden = pages <= 1;
    $("updated").textContent = loadedAt ? "updated " + loadedAt.toLocaleTimeString() +
      ", every " + refresh / 1000 + " s" : "loading\\u2026";
  }
  async function load() {
    try {
      const resp = await fetch("api/v1/results", {cache: "no-store"});
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      results = Array.isArray(data.results) ? data.results : [];
      loadedAt = new Date();
      $("error").hidden = true;
    } catch (e) {
      $("error").textContent = "Cannot read the agent's results (" + e.message + "); " +
        (loadedAt ? "showing those of " + loadedAt.toLocaleTimeString() + "." : "retrying.");
      $("error").hidden = false;
    }
    render();
    setTimeout(load, refresh);
  }
  function changed() {
    page = 0;
    const q = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(filters())) {
      if (v) q.set(k, v); else q.delete(k);
    }
    const s = q.toString();
    history.replaceState(null, "", s ? "?" + s : location.pathname);
    render();
  }
  for (const id of ["f-status", "f-tag", "f-type"]) $(id).addEventListener("change", changed);
  $("f-text").addEventListener("input", changed);
  $("f-text").value = params.get("text") || "";
  $("f-status").value = params.get("status") || "";
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  load();
})();
""".replace("REFRESH", str(REFRESH_SECONDS))

_BODY = """<header><h1>Mamori agent</h1><span id="summary"></span>
<span id="updated" class="mute">loading…</span></header>
<div id="controls">
<label>status <select id="f-status"><option value="">all</option><option>CRITICAL</option>
<option>UNKNOWN</option><option>WARNING</option><option>OK</option></select></label>
<label>tag <select id="f-tag"><option value="">all tags</option></select></label>
<label>type <select id="f-type"><option value="">all types</option></select></label>
<label>search <input id="f-text" type="search" placeholder="check, target, message"></label>
<span class="mute">also: <a href="metrics">/metrics</a> <a href="api/v1/results">/api/v1/results</a>
<a href="ready">/ready</a> <a href="healthz">/healthz</a></span>
</div>
<div id="error" hidden></div>
<table><thead><tr><th>status</th><th>check</th><th>type</th><th>target</th><th>reason</th>
<th>message</th><th>last run</th><th>last change</th><th>history (oldest → newest)</th></tr></thead>
<tbody id="rows"></tbody></table>
<div id="pager" hidden><button id="prev">← previous</button><span id="pageinfo"></span>
<button id="next">next →</button></div>
<noscript><p>This page needs JavaScript; the same data is at
<a href="api/v1/results">/api/v1/results</a>.</p></noscript>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>Mamori agent: status</title>\n"
    f"<style>{_STYLE}</style>\n</head><body>\n{_BODY}<script>{_SCRIPT}</script>\n</body></html>\n"
).encode()

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
