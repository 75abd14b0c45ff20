"""The report page: one HTML string with plotly.js, the run's data and a small script inline.

Static parts (header, zone gallery, experiments, settings) are rendered here, every text escaped;
the map, the telemetry curves and the candidate table are drawn in the browser from the data (one
JSON blob, gzip + base64 when large: see `encode_data`). The script writes no untrusted text as
HTML: texts go through textContent, or escaped into plotly's hover labels. After drawing it sets
`window.REPORT_COUNTS` (points per layer, table rows, render time), which the tests read.
"""
from __future__ import annotations

import base64
import gzip
import html
import json
from datetime import datetime, timezone

COMPRESS_ABOVE = 1_500_000  # bytes of JSON above which the data is embedded gzip-compressed


def esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def encode_data(data: dict, compress: bool | None = None) -> tuple[str, str]:
    """(encoding, payload) for the data <script>: 'json' (every '<' escaped, so no text can close
    the script element) or 'gzip-base64' (the JSON gzipped, for large runs; browsers unpack it with
    DecompressionStream)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    if compress is None:
        compress = len(text) > COMPRESS_ABOVE
    if compress:
        packed = gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)
        return "gzip-base64", base64.b64encode(packed).decode("ascii")
    return "json", text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# ---------------------------------------------------------------------------------- static
def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
                   for k, v in d.items())
    return f"<table class='kv'>{rows}</table>"


def _header(data: dict) -> str:
    run = data["run"]
    c = data["candidates"]
    acc = c["vocab"]["decision"].index("accepted") if "accepted" in c["vocab"]["decision"] else -1
    n_acc = sum(1 for d in c["decision"] if d == acc)
    n_tn = sum(1 for t in c["true_new"] if t)
    gens = data["generations"]
    last = data["metrics"][-1]["line"] if data["metrics"] else "no generation evaluated yet"
    facts = [("run folder", run["dir"]), ("domain", run["domain"]), ("created", run["created_at"]),
             ("seed", run["seed"]), ("config hash", run["config_hash"]),
             ("generations", f"{len(gens)} ({', '.join(map(str, gens[:20]))}{' ...' if len(gens) > 20 else ''})"),
             ("candidates", f"{c['n']:,}, accepted {n_acc:,}, true-new {n_tn:,}")]
    items = "".join(f"<span class='fact'><b>{esc(k)}</b> {esc(v)}</span>" for k, v in facts)
    notes = "".join(f"<li>{esc(n)}</li>" for n in data["notes"])
    return (f"<header><h1>Dark-zone run report</h1><div class='facts'>{items}</div>"
            f"<pre class='line'>{esc(last)}</pre>"
            + (f"<ul class='notes'>{notes}</ul>" if notes else "")
            + f"<p class='small'>written {esc(data['written_at'])}; the loop rewrites this file at the end of every "
              f"generation: reload the page to see the latest. Full texts and scores of one candidate: "
              f"<code>python run.py inspect {esc(run['dir'])} show ID</code>.</p></header>")


def _zone_gallery(data: dict) -> str:
    zones = data["zones"]
    if not zones:
        return "<p>No dark zones found yet.</p>"
    st = data["structures"]
    by_gen: dict[int, list] = {}
    for z in zones:
        by_gen.setdefault(z["generation"], []).append(z)
    parts = []
    last = max(by_gen)
    for g in sorted(by_gen, reverse=True):
        cards = []
        for z in by_gen[g]:
            img = st.get(z["decoded"]) if z["decoded"] else None
            neigh = "".join(f"<li>{esc(t)}</li>" for t in z["neighbours"])
            axes = ", ".join(f"{a:.3g}" for a in z["axes"][:6]) if z["axes"] else "-"
            cards.append(
                f"<div class='zone'><h4>zone {esc(z['label'])}</h4>"
                f"<div class='small'>{esc(z['n_points'])} probe points · radius {esc(z['radius'])} · "
                f"volume {esc(z['volume'])} · axis spreads {esc(axes)}</div>"
                f"<div class='lbl'>decodes at its centre</div><div class='decoded'>{esc(z['decoded'] or '(not decoded)')}</div>"
                + (f"<img class='mol' alt='structure' src='{img}'>" if img else "")
                + f"<div class='lbl'>nearest corpus texts</div><ol>{neigh}</ol></div>")
        parts.append(f"<details{' open' if g == last else ''}><summary>generation {g}: {len(by_gen[g])} zone(s)</summary>"
                     f"<div class='zones'>{''.join(cards)}</div></details>")
    return "".join(parts)


def _feature_gallery(data: dict) -> str:
    """Dark combinations beside the geometric zones: pairs of features each common in the corpus
    that (almost) no corpus text holds together."""
    feats = data.get("features") or []
    if not feats:
        return ""
    parts = []
    last = max(f["generation"] for f in feats)
    for f in sorted(feats, key=lambda f: -f["generation"]):
        sm = f["summary"]
        head = (f"{esc(sm.get('n_features'))} features, {esc(sm.get('active'))} a code "
                f"({esc(round(sm.get('active_mean', 0), 1))} above the floor on average), relative reconstruction error "
                f"{esc(round(sm.get('relative_error', 0), 3))}; {esc(f['significant'])} dark combination(s) of "
                f"{esc(sm.get('tested_pairs'))} pairs tested, {esc(sm.get('never_together'))} never together")
        cards = []
        for c in f["combinations"]:
            lists = "".join(f"<div class='lbl'>feature {esc(ft)} (in {esc(round(100 * fr, 1))}% of texts), strongest in</div>"
                            f"<ol>{''.join(f'<li>{esc(t)}</li>' for t in ts)}</ol>"
                            for ft, fr, ts in zip(c["features"], c["frequency"], c["texts"]))
            p_txt = f"{c['p']:.2g}"
            cards.append(f"<div class='zone'><h4>features {esc(c['features'][0])} + {esc(c['features'][1])}</h4>"
                         f"<div class='small'>together in {esc(c['observed'])} corpus texts, {esc(c['expected'])} expected "
                         f"if independent (p = {esc(p_txt)})</div>{lists}</div>")
        parts.append(f"<details{' open' if f['generation'] == last else ''}><summary>generation {esc(f['generation'])}: "
                     f"{head}</summary><div class='zones'>{''.join(cards)}</div></details>")
    return ("<h3>Dark combinations of the feature dictionary</h3><p class='small'>Pairs of features, each common, "
            "that the corpus holds together far more rarely than independence predicts (the first are the most "
            "improbable); the <code>compose</code> sampler decodes them.</p>" + "".join(parts))


def _experiments(data: dict) -> str:
    exps = data["experiments"]
    if not exps:
        return ("<p>No experiments yet; run <code>python run.py experiment discovery --run "
                f"{esc(data['run']['dir'])}</code>.</p>")
    parts = []
    for e in exps:
        title = f"{e['name']}" + (f" (experiment {e['id']}, {e['created_at']}, {e['seconds']} s)" if e["id"] else "")
        body = f"<pre>{esc(e['table'])}</pre>" if e.get("table") else ""
        body += "".join(f"<figure><img src='{im['uri']}' alt='{esc(im['name'])}'><figcaption>{esc(im['name'])}"
                        f"</figcaption></figure>" for im in e["images"])
        if e.get("result"):
            body += f"<details><summary>result figures (JSON)</summary><pre>{esc(e['result'])}</pre></details>"
        for f in e.get("files", []):
            body += f"<details><summary>{esc(f['name'])}</summary><pre>{esc(f['text'])}</pre></details>"
        parts.append(f"<div class='exp'><h3>{esc(title)}</h3>{body}</div>")
    return "".join(parts)


def _settings(data: dict) -> str:
    run = data["run"]
    sections = "".join(f"<details><summary>{esc(k)}</summary>{_kv_table(v) if isinstance(v, dict) else esc(v)}</details>"
                       for k, v in run["config"].items())
    return (f"<h3>versions</h3>{_kv_table(run['versions'])}<h3>settings (the run row's config snapshot)</h3>{sections}"
            f"<h3>report limits</h3>{_kv_table(data['limits'])}")


# ---------------------------------------------------------------------------------- page
def render(data: dict, plotly_js: str, compress: bool | None = None) -> str:
    data = dict(data, written_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    encoding, payload = encode_data(data, compress)
    title = f"report: {data['run']['dir']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style>
<script>window.REPORT_COUNTS = {{rendered: false, errors: []}};
window.addEventListener('error', function (e) {{ window.REPORT_COUNTS.errors.push(String(e.message)); }});</script>
<script>{plotly_js}</script>
</head><body>
<nav><a href="#map">map</a><a href="#zones">zones</a><a href="#telemetry">telemetry</a><a href="#candidates">candidates</a><a href="#experiments">experiments</a><a href="#settings">settings</a></nav>
{_header(data)}
<section id="map"><h2>Latent map</h2>
<div class="controls">generation <select id="map-gen"></select> view <select id="map-view"></select>
<span id="map-about" class="small"></span></div>
<div class="small" id="map-notes"></div>
<div class="maprow"><div id="map-plot"></div><aside id="map-detail"><p class="small">Hover or click a point for its text, scores and reason.</p></aside></div>
</section>
<section id="zones"><h2>Zone gallery</h2>{_zone_gallery(data)}{_feature_gallery(data)}</section>
<section id="telemetry"><h2>Telemetry across generations</h2><div class="grid2">
<div id="tel-rates"></div><div id="tel-counts"></div><div id="tel-ppl"></div><div id="tel-times"></div><div id="tel-domain"></div></div>
<details><summary>metrics lines</summary><pre id="tel-lines"></pre></details></section>
<section id="candidates"><h2>Candidates</h2>
<div class="controls" id="tbl-controls">
generation <select id="f-gen"></select> sampler <select id="f-sampler"></select> decision <select id="f-decision"></select>
verdict <select id="f-verdict"></select> score <select id="f-judge"></select> from <input id="f-min" type="number" step="any" size="5">
to <input id="f-max" type="number" step="any" size="5"> text/reason <input id="f-text" type="search" size="18">
rows <select id="f-size"><option>25</option><option selected>50</option><option>100</option><option>500</option></select></div>
<div class="controls"><button id="p-first">&laquo;</button><button id="p-prev">&lsaquo;</button>
<span id="p-info"></span><button id="p-next">&rsaquo;</button><button id="p-last">&raquo;</button></div>
<div class="tablewrap"><table id="cand-table"><thead></thead><tbody></tbody></table></div></section>
<section id="experiments"><h2>Experiments</h2>{_experiments(data)}</section>
<section id="settings"><h2>Settings and versions</h2>{_settings(data)}</section>
<script type="application/{'json' if encoding == 'json' else 'octet-stream'}" id="report-data" data-encoding="{encoding}">{payload}</script>
<script>{JS}</script>
</body></html>
"""


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
nav{position:sticky;top:0;background:#263238;padding:6px 12px;z-index:10}nav a{color:#eceff1;margin-right:16px;text-decoration:none}
header,section{background:#fff;margin:12px;padding:8px 16px;border:1px solid #ddd;border-radius:6px}
h1{font-size:20px;margin:6px 0}h2{font-size:17px;margin:6px 0 10px}h3{font-size:15px}h4{margin:2px 0}
.facts .fact{display:inline-block;margin:2px 14px 2px 0}.line{background:#f3f3f3;padding:6px;white-space:pre-wrap}
.notes{color:#8a5300}.small{color:#666;font-size:12px}.controls{margin:6px 0}.controls select,.controls input{margin-right:8px}
.maprow{display:flex;gap:12px;align-items:flex-start}#map-plot{flex:1 1 auto;min-width:0;height:620px}
#map-detail{flex:0 0 300px;max-height:620px;overflow:auto;border-left:1px solid #eee;padding-left:10px;font-size:13px}
#map-detail .txt{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:4px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:8px}.grid2>div{height:320px}
.zones{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px;margin:8px 0}
.zone{border:1px solid #e0e0e0;border-radius:4px;padding:6px}.zone ol{margin:2px 0;padding-left:20px}
.lbl{font-size:12px;color:#555;margin-top:4px}.decoded{background:#f6f6f6;padding:3px;word-break:break-word}
img.mol{display:block;margin:4px 0;background:#fff}figure img{max-width:100%}
.tablewrap{overflow-x:auto}table#cand-table{border-collapse:collapse;width:100%;font-size:12px}
#cand-table th{background:#eceff1;cursor:pointer;position:sticky;top:0;white-space:nowrap}
#cand-table td,#cand-table th{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top}
#cand-table td.num{text-align:right;font-variant-numeric:tabular-nums}#cand-table td.txt{min-width:220px;word-break:break-word}
#cand-table td.rsn{min-width:200px;color:#555}tr.accepted td:first-child{border-left:3px solid #2e7d32}
tr.rejected td:first-child{border-left:3px solid #c62828}table.kv th{text-align:left;padding-right:12px;vertical-align:top}
table.kv td{word-break:break-word}details{margin:4px 0}pre{white-space:pre-wrap;word-break:break-word}
#report-error{color:#b00020;font-weight:bold}
"""

JS = r"""
(function () {
'use strict';
const COUNTS = window.REPORT_COUNTS;
const $ = (id) => document.getElementById(id);
const PCONF = {displaylogo: false, responsive: true};
const PALETTE = ['#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];
const SYMBOL = {accepted: 'circle', rejected: 'x-thin-open', pending: 'diamond-open'};
const GL_ABOVE = 4000;  // more points than this in one map: WebGL (scattergl) instead of SVG

function escHTML(s) {  // plotly hover labels understand a few tags: the texts' own brackets must not be tags
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
function clip(s, n) { s = s == null ? '' : String(s); return s.length > n ? s.slice(0, n - 1) + '\u2026' : s; }
function fmt(v) { return v == null ? '-' : (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(3)) : String(v)); }
function el(tag, text, cls) { const e = document.createElement(tag); if (text != null) e.textContent = text; if (cls) e.className = cls; return e; }

async function loadData() {
  const node = $('report-data');
  if (node.dataset.encoding === 'gzip-base64') {
    if (typeof DecompressionStream === 'undefined') throw new Error('this browser cannot unpack the report data (no DecompressionStream); open it in a current Chrome, Firefox, Safari or Edge');
    const bin = atob(node.textContent.trim());
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return JSON.parse(await new Response(stream).text());
  }
  return JSON.parse(node.textContent);
}

// ------------------------------------------------------------------------------ candidates
function candInfo(D, r) {
  const C = D.candidates;
  const info = {kind: 'candidate', row: r, id: C.id[r], gen: C.gen[r], sampler: C.vocab.sampler[C.sampler[r]],
    decision: C.vocab.decision[C.decision[r]], verdict: C.vocab.verdict[C.verdict[r]], total: C.total[r],
    density: C.density[r], zone: C.zone[r], true_new: C.true_new[r], text: C.text[r], reason: C.reasons[C.reason[r]], scores: {}};
  for (const j of C.judges) info.scores[j] = C.scores[j][r];
  return info;
}

function refText(D, ref) {  // a map point's text: >= 0 the corpus pool, < 0 a candidate row
  if (ref == null) return null;
  return ref >= 0 ? D.texts[ref] : D.candidates.text[-ref - 1];
}

function showDetail(D, info) {
  const box = $('map-detail');
  box.replaceChildren();
  box.appendChild(el('h4', info.title));
  if (info.kind === 'candidate') {
    const t = document.createElement('table'); t.className = 'kv';
    const add = (k, v) => { const tr = document.createElement('tr'); tr.appendChild(el('th', k)); tr.appendChild(el('td', fmt(v))); t.appendChild(tr); };
    add('generation', info.gen); add('sampler', info.sampler); add('decision', info.decision); add('verdict', info.verdict);
    add('true-new', info.true_new == null ? null : (info.true_new ? 'yes' : 'no')); add('total', info.total);
    add('density score', info.density); add('zone', info.zone);
    for (const j in info.scores) add('score ' + j, info.scores[j]);
    box.appendChild(t);
    box.appendChild(el('div', 'reason', 'lbl')); box.appendChild(el('div', info.reason || '-'));
  }
  if (info.text != null) { box.appendChild(el('div', 'text', 'lbl')); box.appendChild(el('div', info.text || '(empty)', 'txt')); }
  const uri = info.text ? D.structures[info.text] : null;
  if (uri) { const img = document.createElement('img'); img.className = 'mol'; img.alt = 'structure'; img.src = uri; box.appendChild(img); }
}

// ------------------------------------------------------------------------------------ map
function drawMap(D) {
  const maps = D.maps;
  const genSel = $('map-gen'), viewSel = $('map-view');
  if (!maps.length) {
    $('map-plot').textContent = 'No map yet: the map stage of the first generation has not finished.';
    COUNTS.map = {points: 0};
    return Promise.resolve();
  }
  genSel.replaceChildren(...maps.map((m, i) => { const o = el('option', 'generation ' + m.generation); o.value = i; return o; }));
  genSel.value = maps.length - 1;
  const views = Object.keys(maps[maps.length - 1].views);
  viewSel.replaceChildren(...views.map(v => { const o = el('option', v); o.value = v; return o; }));
  const redraw = () => plotMap(D, maps[+genSel.value], viewSel.value);
  genSel.addEventListener('change', redraw);
  viewSel.addEventListener('change', redraw);
  return redraw();
}

function plotMap(D, m, view) {
  const V = m.views[view] || m.views.PCA;
  const C = D.candidates;
  const n = m.counts;
  const gl = (n.corpus + n.heldout + n.probes + n.candidates) > GL_ABOVE;
  const T = gl ? 'scattergl' : 'scatter';
  $('map-about').textContent = V.about;
  $('map-notes').textContent = m.notes.join('; ');
  const traces = [];
  const meta = [];  // per trace: how to describe point i
  const mk = (name, part, marker, hover, describe) => {
    if (!part || !part.x.length) return;
    traces.push({type: T, mode: 'markers', name: name, x: part.x, y: part.y, marker: marker, text: hover,
                 hoverinfo: 'text', hoverlabel: {align: 'left'}});
    meta.push(describe);
  };
  const corpusText = (i) => m.corpus_ref ? refText(D, m.corpus_ref[i]) : null;
  mk('corpus (' + n.corpus.toLocaleString() + (n.corpus_total > n.corpus ? ' of ' + n.corpus_total.toLocaleString() : '') + ')', V.corpus,
     {size: 5, color: '#9e9e9e', opacity: 0.55}, V.corpus.x.map((_, i) => escHTML(clip(corpusText(i) || 'corpus text ' + i, 90))),
     (i) => ({kind: 'corpus', title: 'corpus text', text: corpusText(i)}));
  const heldText = (i) => m.heldout_ref ? refText(D, m.heldout_ref[i]) : null;
  mk('held-out texts', V.heldout, {size: 6, color: '#00acc1', symbol: 'square-open'},
     V.heldout.x.map((_, i) => escHTML(clip(heldText(i) || 'held-out text ' + i, 90))),
     (i) => ({kind: 'heldout', title: 'held-out real text (never trained on)', text: heldText(i)}));
  mk('dark probes', V.probes, {size: 3, color: '#263238', opacity: 0.35}, V.probes.x.map(() => 'dark probe point'),
     () => ({kind: 'probe', title: 'dark probe point', text: null}));
  const zoneOf = {};
  for (const z of D.zones) if (z.generation === m.generation) zoneOf[z.label] = z;
  mk('zone centres', V.zones, {size: 14, color: '#ffb300', symbol: 'star', line: {color: '#5d4037', width: 1}},
     m.zone_label.map(l => { const z = zoneOf[l] || {}; return escHTML('zone ' + l + ' · ' + fmt(z.n_points) + ' points · radius ' + fmt(z.radius)) + '<br>' + escHTML('centre decodes: ' + clip(z.decoded || '-', 80)); }),
     (i) => { const l = m.zone_label[i]; const z = zoneOf[l] || {}; return {kind: 'zone', title: 'zone ' + l + ' centre (' + fmt(z.n_points) + ' probe points, radius ' + fmt(z.radius) + ')', text: z.decoded}; });
  // candidates: one trace per sampler x decision
  const groups = {};
  m.cand_row.forEach((r, k) => {
    const key = C.sampler[r] + ':' + C.decision[r];
    (groups[key] = groups[key] || {s: C.sampler[r], d: C.decision[r], idx: []}).idx.push(k);
  });
  let pal = 0;
  const colorOf = {};
  for (const key of Object.keys(groups).sort()) {
    const g = groups[key];
    const sampler = C.vocab.sampler[g.s], decision = C.vocab.decision[g.d];
    const color = colorOf[sampler] = colorOf[sampler] || (C.sampler_colours || {})[sampler] || PALETTE[pal++ % PALETTE.length];
    const rows = g.idx.map(k => m.cand_row[k]);
    const part = {x: g.idx.map(k => V.cands.x[k]), y: g.idx.map(k => V.cands.y[k])};
    const hover = rows.map(r => {
      const sc = C.judges.map(j => j + ' ' + fmt(C.scores[j][r])).join(', ');
      return escHTML(clip(C.text[r] || '(empty)', 90)) + '<br>' + escHTML(sampler + ' · ' + decision + ' · total ' + fmt(C.total[r])) + '<br>' + escHTML(sc);
    });
    mk(sampler + ' · ' + decision + ' (' + rows.length + ')', part,
       {size: decision === 'accepted' ? 9 : 7, color: color, symbol: SYMBOL[decision] || 'circle', line: {width: 1, color: color}}, hover,
       (i) => Object.assign(candInfo(D, rows[i]), {title: 'candidate ' + C.id[rows[i]]}));
  }
  const layout = {margin: {l: 40, r: 10, t: 30, b: 40}, hovermode: 'closest', legend: {orientation: 'v'},
                  title: {text: 'generation ' + m.generation + ' · ' + view, font: {size: 13}},
                  xaxis: {zeroline: false}, yaxis: {zeroline: false}};
  const div = $('map-plot');
  return Plotly.react(div, traces, layout, PCONF).then(() => {
    if (!div._reportHooked) {
      const handler = (ev) => { const p = ev.points && ev.points[0]; if (p && div._meta[p.curveNumber]) showDetail(D, div._meta[p.curveNumber](p.pointNumber)); };
      div.on('plotly_hover', handler); div.on('plotly_click', handler);
      div._reportHooked = true;
    }
    div._meta = meta;
    const drawn = div.data.reduce((a, t) => a + t.x.length, 0);
    COUNTS.map = {generation: m.generation, view: view, type: T, corpus: n.corpus, heldout: n.heldout, probes: n.probes,
                  zones: n.zones, candidates: n.candidates, points: drawn, traces: div.data.length};
  });
}

// ------------------------------------------------------------------------------ telemetry
function drawTelemetry(D) {
  const M = D.metrics;
  const gens = M.map(m => m.generation);
  const base = {margin: {l: 45, r: 10, t: 30, b: 30}, xaxis: {dtick: 1, automargin: true}, legend: {orientation: 'h', y: -0.15, yanchor: 'top'}};
  const line = (key, name) => ({type: 'scatter', mode: 'lines+markers', name: name, x: gens, y: M.map(m => m[key])});
  const p = [];
  p.push(Plotly.newPlot('tel-rates', [line('acceptance_rate', 'acceptance'), line('truth_rate', 'truth'),
    line('dark_share', 'dark share'), line('novelty', 'novelty'), line('distinct_2', 'distinct-2')],
    Object.assign({}, base, {title: {text: 'rates per generation', font: {size: 13}}, yaxis: {rangemode: 'tozero'}}), PCONF));
  p.push(Plotly.newPlot('tel-counts', [
    {type: 'bar', name: 'candidates', x: gens, y: M.map(m => m.candidates), marker: {color: '#b0bec5'}},
    {type: 'bar', name: 'accepted', x: gens, y: M.map(m => m.accepted), marker: {color: '#43a047'}},
    {type: 'bar', name: 'true-new', x: gens, y: M.map(m => m.true_new), marker: {color: '#fb8c00'}}],
    Object.assign({}, base, {title: {text: 'counts', font: {size: 13}}, barmode: 'group'}), PCONF));
  p.push(Plotly.newPlot('tel-ppl', [line('heldout_ppl', 'held-out perplexity')],
    Object.assign({}, base, {title: {text: 'held-out perplexity (rising = collapse)', font: {size: 13}}}), PCONF));
  const stageNames = [];
  for (const s of D.stages) if (!stageNames.includes(s.name)) stageNames.push(s.name);
  const sg = [...new Set(D.stages.map(s => s.generation))].sort((a, b) => a - b);
  p.push(Plotly.newPlot('tel-times', stageNames.map(name => ({type: 'bar', name: name, x: sg,
    y: sg.map(g => { const s = D.stages.find(s => s.generation === g && s.name === name); return s ? s.seconds : 0; })})),
    Object.assign({}, base, {title: {text: 'stage seconds', font: {size: 13}}, barmode: 'stack'}), PCONF));
  const DM = D.domain_metrics;
  if (DM.length) {
    const keys = [...new Set(DM.flatMap(m => Object.keys(m).filter(k => k !== 'generation')))];
    p.push(Plotly.newPlot('tel-domain', keys.map(k => ({type: 'scatter', mode: 'lines+markers', name: k, x: DM.map(m => m.generation), y: DM.map(m => m[k] == null ? null : m[k])})),
      Object.assign({}, base, {title: {text: "the domain's own metrics", font: {size: 13}}}), PCONF));
  } else $('tel-domain').remove();
  $('tel-lines').textContent = M.map(m => m.line).join('\n') || 'no generation evaluated yet';
  COUNTS.telemetry = {generations: gens.length};
  return Promise.all(p);
}

// ---------------------------------------------------------------------------------- table
function drawTable(D) {
  const C = D.candidates;
  const cols = [
    {key: 'id', label: 'id', num: true, get: r => C.id[r]},
    {key: 'gen', label: 'gen', num: true, get: r => C.gen[r]},
    {key: 'sampler', label: 'sampler', get: r => C.vocab.sampler[C.sampler[r]]},
    {key: 'decision', label: 'decision', get: r => C.vocab.decision[C.decision[r]]},
    {key: 'verdict', label: 'verdict', get: r => C.vocab.verdict[C.verdict[r]]},
    {key: 'true_new', label: 'true-new', get: r => C.true_new[r] == null ? null : (C.true_new[r] ? 'yes' : 'no')},
    {key: 'total', label: 'total', num: true, get: r => C.total[r]},
    ...C.judges.map(j => ({key: 's:' + j, label: j, num: true, get: r => C.scores[j][r]})),
    {key: 'density', label: 'density', num: true, get: r => C.density[r]},
    {key: 'zone', label: 'zone', num: true, get: r => C.zone[r]},
    {key: 'text', label: 'text', cls: 'txt', get: r => C.text[r]},
    {key: 'reason', label: 'reason', cls: 'rsn', get: r => C.reasons[C.reason[r]]},
  ];
  const st = {sort: 'id', desc: false, page: 0, rows: []};
  const opts = (sel, values, all) => sel.replaceChildren(el('option', all || 'all'), ...values.map(v => { const o = el('option', String(v)); o.value = String(v); return o; }));
  opts($('f-gen'), D.generations);
  opts($('f-sampler'), C.vocab.sampler);
  opts($('f-decision'), C.vocab.decision);
  opts($('f-verdict'), C.vocab.verdict);
  opts($('f-judge'), ['total', ...C.judges], '-');
  for (const s of ['f-gen', 'f-sampler', 'f-decision', 'f-verdict', 'f-judge']) $(s).firstChild.value = '';
  const head = document.createElement('tr');
  for (const c of cols) {
    const th = el('th', c.label); th.dataset.key = c.key; th.title = 'sort by ' + c.label;
    th.addEventListener('click', () => { st.desc = st.sort === c.key ? !st.desc : !!c.num && c.key !== 'id' && c.key !== 'gen'; st.sort = c.key; st.page = 0; apply(); });
    head.appendChild(th);
  }
  $('cand-table').tHead.appendChild(head);
  function apply() {
    const g = $('f-gen').value, s = $('f-sampler').value, d = $('f-decision').value, v = $('f-verdict').value;
    const j = $('f-judge').value, lo = $('f-min').value, hi = $('f-max').value, q = $('f-text').value.trim().toLowerCase();
    const sIx = s === '' ? -1 : C.vocab.sampler.indexOf(s), dIx = d === '' ? -1 : C.vocab.decision.indexOf(d), vIx = v === '' ? -1 : C.vocab.verdict.indexOf(v);
    const jcol = j === '' ? null : (j === 'total' ? C.total : C.scores[j]);
    const lov = lo === '' ? null : +lo, hiv = hi === '' ? null : +hi;
    const out = [];
    for (let r = 0; r < C.n; r++) {
      if (g !== '' && C.gen[r] !== +g) continue;
      if (sIx >= 0 && C.sampler[r] !== sIx) continue;
      if (dIx >= 0 && C.decision[r] !== dIx) continue;
      if (vIx >= 0 && C.verdict[r] !== vIx) continue;
      if (jcol && (lov !== null || hiv !== null)) {
        const x = jcol[r];
        if (x == null || (lov !== null && x < lov) || (hiv !== null && x > hiv)) continue;
      }
      if (q && !((C.text[r] || '').toLowerCase().includes(q) || (C.reasons[C.reason[r]] || '').toLowerCase().includes(q))) continue;
      out.push(r);
    }
    const col = cols.find(c => c.key === st.sort) || cols[0];
    const sign = st.desc ? -1 : 1;
    out.sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      if (x == null || y == null) return x == null && y == null ? a - b : (x == null ? 1 : -1);  // missing values last
      return (x < y ? -sign : x > y ? sign : 0) || a - b;
    });
    st.rows = out;
    render();
  }
  function render() {
    const size = +$('f-size').value;
    const pages = Math.max(1, Math.ceil(st.rows.length / size));
    st.page = Math.min(Math.max(0, st.page), pages - 1);
    const body = $('cand-table').tBodies[0];
    const frag = document.createDocumentFragment();
    const dec = C.vocab.decision;
    for (const r of st.rows.slice(st.page * size, (st.page + 1) * size)) {
      const tr = document.createElement('tr');
      tr.className = dec[C.decision[r]];
      for (const c of cols) {
        const v = c.get(r);
        tr.appendChild(el('td', c.num ? fmt(v) : (v == null ? '-' : v), c.num ? 'num' : (c.cls || '')));
      }
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    for (const th of $('cand-table').tHead.rows[0].cells) th.textContent = cols.find(c => c.key === th.dataset.key).label + (th.dataset.key === st.sort ? (st.desc ? ' \u25bc' : ' \u25b2') : '');
    $('p-info').textContent = ' page ' + (st.page + 1) + ' of ' + pages + ' · ' + st.rows.length.toLocaleString() + ' of ' + C.n.toLocaleString() + ' candidates ';
    COUNTS.table = {total: C.n, filtered: st.rows.length, shown: body.rows.length, page: st.page + 1, pages: pages};
  }
  for (const id of ['f-gen', 'f-sampler', 'f-decision', 'f-verdict', 'f-judge', 'f-min', 'f-max', 'f-text']) {
    $(id).addEventListener(id === 'f-text' || id === 'f-min' || id === 'f-max' ? 'input' : 'change', () => { st.page = 0; apply(); });
  }
  $('f-size').addEventListener('change', () => { st.page = 0; render(); });
  $('p-first').addEventListener('click', () => { st.page = 0; render(); });
  $('p-prev').addEventListener('click', () => { st.page--; render(); });
  $('p-next').addEventListener('click', () => { st.page++; render(); });
  $('p-last').addEventListener('click', () => { st.page = 1e9; render(); });
  apply();
}

async function main() {
  const t0 = performance.now();
  const D = await loadData();
  COUNTS.data_ms = performance.now() - t0;
  drawTable(D);
  await drawMap(D);
  await drawTelemetry(D);
  COUNTS.rendered = true;
  COUNTS.render_ms = performance.now();  // since navigation start: parse + unpack + draw
}
main().catch((e) => {
  COUNTS.errors.push(String(e && e.message || e));
  const p = el('p', 'The report could not be drawn: ' + (e && e.message || e)); p.id = 'report-error';
  document.body.prepend(p);
  throw e;
});
})();
"""
