"""The run report: self-contained HTML, read-only, subsampled for large runs, drawn in headless Chromium."""
import base64
import gzip
import hashlib
import json
import logging
import re
import sqlite3
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from report import ReportConfig, build_html, collect, stratified_sample, write_report
from bench.report import fabricate_run
from report.browser import Browser, missing
from report.cli import main

HOSTILE = '</script><script>window.PWNED=1</script> <img src=x onerror="window.PWNED=2"> & \u2028 "q" \'q\''


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def external_refs(page: str) -> list[str]:
    """src= / href= attributes pointing off the file (http(s):// or protocol-relative //)."""
    return re.findall(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//[^"'\s>]*""", page, re.IGNORECASE)


def data_of(page: str) -> dict:
    m = re.search(r'<script type="application/(?:json|octet-stream)" id="report-data" data-encoding="([^"]+)">(.*?)</script>',
                  page, re.DOTALL)
    assert m, "no data block"
    enc, payload = m.groups()
    if enc == "gzip-base64":
        return json.loads(gzip.decompress(base64.b64decode(payload)))
    return json.loads(payload)


def db_counts(run_dir: Path) -> dict:
    con = sqlite3.connect(f"file:{run_dir / 'runs.db'}?mode=ro", uri=True)
    out = {
        "candidates": con.execute("SELECT count(*) FROM candidate").fetchone()[0],
        "accepted": con.execute("SELECT count(*) FROM candidate WHERE decision = 'accepted'").fetchone()[0],
        "with_latent": dict(con.execute("SELECT generation, count(*) FROM candidate WHERE latent IS NOT NULL GROUP BY generation")),
        "zones": dict(con.execute("SELECT generation, count(*) FROM zone GROUP BY generation")),
    }
    con.close()
    return out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A fabricated 3-generation run of 1,200 candidates (a hostile text among them), latent dim 16."""
    return fabricate_run(tmp_path_factory.mktemp("fab") / "run", candidates=1200, generations=3, latent_dim=16,
                         texts=["7 plus 5 equals 12.", HOSTILE, "3 times 4 is 12."])


# -- the loop's own run --------------------------------------------------------------------------

def test_loop_refreshes_the_report(one_generation_run):
    """The loop wrote RUN_DIR/report.html at the end of its generation: one file, nothing off it."""
    page = (one_generation_run / "report.html").read_text(encoding="utf-8")
    assert external_refs(page) == []
    d = data_of(page)
    assert d["generations"] == [0] and d["maps"] and d["maps"][0]["generation"] == 0
    for name in ("latents.npy", "eval_latents.npy", "probes.npy"):
        assert (one_generation_run / "gen-000" / "map" / name).is_file()
    # the feature dictionary beside the zones: its dark combinations, each feature named by corpus texts
    f = d["features"][0]
    assert f["generation"] == 0 and f["combinations"] and f["summary"]["n_features"] > 0
    assert all(len(c["features"]) == 2 and all(ts for ts in c["texts"]) for c in f["combinations"])
    assert "Dark combinations of the feature dictionary" in page


def test_cli_report_is_self_contained_and_reads_only(one_generation_run, tmp_path, capsys):
    db = one_generation_run / "runs.db"
    before = sha(db)
    out = tmp_path / "r.html"
    assert main([str(one_generation_run), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sha(db) == before
    page = out.read_text(encoding="utf-8")
    assert external_refs(page) == [] and "<script src" not in page.lower()
    assert "Plotly" in page  # plotly.js inline
    d = data_of(page)
    counts = db_counts(one_generation_run)
    assert d["candidates"]["n"] == counts["candidates"]
    m = d["maps"][0]
    corpus = np.load(one_generation_run / "gen-000" / "map" / "latents.npy")
    assert m["counts"]["corpus"] == len(corpus) and m["counts"]["candidates"] == counts["with_latent"].get(0, 0)
    assert m["counts"]["zones"] == counts["zones"].get(0, 0)
    assert m["corpus_ref"] is not None  # the domain's texts matched the map's corpus points
    assert set(d["run"]["versions"]) >= {"python", "torch"} and d["run"]["config"]["run"]["generations"] == 1


# -- in the browser ------------------------------------------------------------------------------

def expected_points(run_dir: Path, g: int) -> int:
    folder = run_dir / f"gen-{g:03d}" / "map"
    n = sum(len(np.load(folder / f)) for f in ("latents.npy", "eval_latents.npy", "probes.npy"))
    c = db_counts(run_dir)
    return n + c["zones"].get(g, 0) + c["with_latent"].get(g, 0)


def not_blank(png: Path) -> int:
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size[0] > 500 and img.size[1] > 500
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 20, f"only {len(colours)} colours"
    white = sum(n for n, c in colours if c == (255, 255, 255))
    assert white < 0.98 * img.size[0] * img.size[1]
    return len(colours)


# viewport pixel of trace k's first point, after scrolling the map into view
POINT_PIXEL = """(() => { const d = document.getElementById('map-plot'); d.scrollIntoView(); const r = d.getBoundingClientRect();
  const L = d._fullLayout, t = d.data[%d];
  return [r.left + L._size.l + L.xaxis.l2p(t.x[0]), r.top + L._size.t + L.yaxis.l2p(t.y[0])]; })()"""
DRAWN = "window.REPORT_COUNTS && (window.REPORT_COUNTS.rendered || window.REPORT_COUNTS.errors.length)"


@pytest.mark.skipif(missing() is not None, reason=f"headless browser check: {missing()}")
def test_report_in_headless_chromium(one_generation_run, small_run, tmp_path):
    """The tiny run's report, then a compressed, subsampled one with a hostile text: drawn with no
    JavaScript error, every map point and table row there, the hover panel works, a real picture."""
    tiny = tmp_path / "tiny.html"
    write_report(one_generation_run, tiny)
    fab = tmp_path / "fab.html"
    write_report(small_run, fab, ReportConfig(max_map_candidates=300), compress=True)
    counts = db_counts(one_generation_run)
    with Browser(width=1400, height=1000, timeout=90) as b:
        b.open(tiny)
        b.wait_for(DRAWN)
        c = b.evaluate("window.REPORT_COUNTS")
        assert b.errors() == [] and c["errors"] == [] and c["rendered"]
        # the map: counted from the plotly figure itself
        drawn = b.evaluate("document.getElementById('map-plot').data.reduce((a, t) => a + t.x.length, 0)")
        assert drawn == c["map"]["points"] == expected_points(one_generation_run, 0)
        # the table: every candidate, one page of rows in the DOM
        assert c["table"]["total"] == c["table"]["filtered"] == counts["candidates"]
        assert b.evaluate("document.querySelectorAll('#cand-table tbody tr').length") == min(50, counts["candidates"])
        b.evaluate("(() => { const s = document.getElementById('f-decision'); s.value = 'accepted';"
                   " s.dispatchEvent(new Event('change')); })()")
        assert b.evaluate("window.REPORT_COUNTS.table.filtered") == counts["accepted"]
        # hovering a candidate fills the detail panel with its text and scores
        k = b.evaluate("document.getElementById('map-plot').data.findIndex(t => / · /.test(t.name))")
        assert k >= 0, "no candidate trace on the map"
        x, y = b.evaluate(POINT_PIXEL % k)
        b.hover(x, y)  # a real mouse move over the point
        b.wait_for("document.querySelector('#map-detail h4')", timeout=10)
        title = b.evaluate("document.querySelector('#map-detail h4').textContent")
        assert title.startswith(("candidate ", "corpus", "held-out", "zone", "dark")), title
        shot = b.screenshot(tmp_path / "tiny.png")
        assert b.errors() == []

        b.open(fab)
        b.wait_for(DRAWN)
        c = b.evaluate("window.REPORT_COUNTS")
        assert b.errors() == [] and c["errors"] == [] and c["rendered"]
        assert b.evaluate("typeof window.PWNED") == "undefined"
        assert c["table"]["total"] == 1200 and c["table"]["shown"] == 50 and c["table"]["pages"] == 24
        assert c["map"]["generation"] == 2 and c["map"]["candidates"] == 100  # 300 drawn of 900, a third per generation
        b.evaluate("(() => { const s = document.getElementById('f-text'); s.value = 'PWNED';"
                   " s.dispatchEvent(new Event('input')); })()")
        con = sqlite3.connect(f"file:{small_run / 'runs.db'}?mode=ro", uri=True)
        hostile = con.execute("SELECT count(*) FROM candidate WHERE text LIKE '%PWNED%'").fetchone()[0]
        con.close()
        assert b.evaluate("window.REPORT_COUNTS.table.filtered") == hostile > 0
        assert b.evaluate("[...document.querySelectorAll('#cand-table td.txt')].some(td => td.textContent.includes('</script>'))")
    not_blank(shot)


# -- bad input -----------------------------------------------------------------------------------

def _empty_run_db(folder: Path) -> None:
    from storage.db import open_db

    open_db(folder, create=True).dispose()  # tables, no run row


@pytest.mark.parametrize("case, words", [
    ("missing", "no run folder"),
    ("no_db", "no run database"),
    ("not_sqlite", "cannot read"),
    ("foreign_sqlite", "not a run database"),
    ("no_run_row", "holds no run yet"),
])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, capsys, case, words):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    db = run / "runs.db"
    if case == "not_sqlite":
        db.write_bytes(b"this is not sqlite" * 100)
    elif case == "foreign_sqlite":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE notes (x TEXT)")
        con.commit()
        con.close()
    elif case == "no_run_row":
        _empty_run_db(run)
    before = sha(db) if db.exists() else None
    assert main([str(run)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""
    assert not (run / "report.html").exists()
    assert (sha(db) if db.exists() else None) == before


def test_bad_out_paths(small_run, tmp_path, capsys):
    assert main([str(small_run), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main([str(small_run), "--out", str(tmp_path / "no" / "such" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1
    assert main([str(small_run), "--max-points", "-1"]) == 2


def test_a_failing_report_never_stops_the_loop(monkeypatch, tmp_path, caplog):
    import report
    from loop.runner import Loop

    def boom(_out):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "write_report", boom)
    loop = Loop.__new__(Loop)
    loop.out = tmp_path
    with caplog.at_level(logging.WARNING):
        loop.refresh_report()
    assert "disk on fire" in caplog.text and "python run.py report" in caplog.text


# -- large runs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("groups, cap, want", [
    ([0] * 10, 20, 10),  # under the cap: all
    ([0] * 50 + [1] * 50, 10, 10),
    ([0] * 90 + [1] * 10, 10, 10),
    ([0] * 7 + [1] * 7 + [2] * 7, 10, 10),
    ([], 5, 0),
    ([3] * 40, 0, 0),
])
def test_stratified_sample(groups, cap, want):
    idx = stratified_sample(np.array(groups, dtype=int), cap, seed=1)
    assert len(idx) == want and len(set(idx.tolist())) == want and list(idx) == sorted(idx)
    if want and len(groups) > cap:
        g = np.array(groups)[idx]
        for lab in set(groups):
            share = groups.count(lab) / len(groups)
            assert abs((g == lab).sum() - cap * share) <= 1  # each generation keeps its share
    assert np.array_equal(idx, stratified_sample(np.array(groups, dtype=int), cap, seed=1))  # deterministic


def test_large_run_is_subsampled_on_the_map_and_complete_in_the_table(small_run):
    d = collect(small_run, ReportConfig(max_map_candidates=300, max_corpus_points=500))
    assert d["candidates"]["n"] == 1200
    assert [m["counts"]["candidates"] for m in d["maps"]] == [100, 100, 100]
    assert all(m["counts"]["corpus"] <= 500 and m["counts"]["probes"] == 2000 for m in d["maps"])
    assert any("300 of the 900 candidates" in n for n in d["notes"])
    assert any("300 candidate(s) have no latent" in n for n in d["notes"])
    # a map's candidate rows are real rows of that generation, with a latent
    C = d["candidates"]
    for m in d["maps"]:
        assert all(C["gen"][r] == m["generation"] and C["has_latent"][r] for r in m["cand_row"])
        assert len(m["views"]["PCA"]["cands"]["x"]) == len(m["cand_row"])
    # later maps' corpus tails are the accepted candidates of earlier generations
    tail = [r for r in d["maps"][1]["corpus_ref"] if r < 0]
    assert all(C["vocab"]["decision"][C["decision"][-r - 1]] == "accepted" and C["gen"][-r - 1] == 0 for r in tail)


def test_hostile_text_cannot_break_out_of_the_page(small_run):
    for compress in (False, True):
        page = build_html(small_run, ReportConfig(max_map_candidates=50), compress=compress)
        assert "<script>window.PWNED" not in page and 'onerror="window.PWNED' not in page
        assert HOSTILE in data_of(page)["candidates"]["text"]


# -- molecules -----------------------------------------------------------------------------------

SMILES = ["CCO", "c1ccccc1O", "not a molecule"]
NO_CORPUS = ReportConfig(corpus_texts=False)  # loading the MOSES corpus is slow and not under test here


def test_molecule_drawings_with_rdkit(tmp_path):
    pytest.importorskip("rdkit")
    run = fabricate_run(tmp_path / "mol", candidates=40, generations=1, latent_dim=8, domain="molecules", texts=SMILES,
                      corpus_points=40)
    d = collect(run, NO_CORPUS)
    assert set(d["structures"]) == {"CCO", "c1ccccc1O"}
    assert [sorted(m) for m in d["domain_metrics"]] == [["fcd", "generation", "validity"]]  # evaluate's domain_metrics
    assert all(u.startswith("data:image/svg+xml;base64,") for u in d["structures"].values())
    page = build_html(run, NO_CORPUS)
    assert "<img class='mol' alt='structure' src='data:image/svg+xml;base64," in page  # zone gallery


def test_molecule_drawings_only_for_molecules_and_guarded(small_run, tmp_path, monkeypatch):
    assert collect(small_run, ReportConfig(max_map_candidates=10))["structures"] == {}  # a maths run draws none
    run = fabricate_run(tmp_path / "mol", candidates=12, generations=1, latent_dim=8, domain="molecules", texts=SMILES,
                      corpus_points=40)
    # a tiny fake RDKit: parses anything without a space, draws a fixed SVG
    chem = types.SimpleNamespace(MolFromSmiles=lambda s: None if " " in s else types.SimpleNamespace(GetNumAtoms=lambda: 1))

    class Drawer:
        def __init__(self, w, h): pass
        def DrawMolecule(self, mol): pass
        def FinishDrawing(self): pass
        def GetDrawingText(self): return "<svg xmlns='http://www.w3.org/2000/svg'/>"

    fake = types.ModuleType("rdkit")
    fake.Chem = chem
    fake.RDLogger = types.SimpleNamespace(DisableLog=lambda _: None)
    draw = types.ModuleType("rdkit.Chem.Draw")
    draw.rdMolDraw2D = types.SimpleNamespace(MolDraw2DSVG=Drawer)
    monkeypatch.setitem(sys.modules, "rdkit", fake)
    monkeypatch.setitem(sys.modules, "rdkit.Chem", chem)
    monkeypatch.setitem(sys.modules, "rdkit.Chem.Draw", draw)
    d = collect(run, NO_CORPUS)
    assert set(d["structures"]) == {"CCO", "c1ccccc1O"}
    # without RDKit: no drawings, a note, and the report still writes
    monkeypatch.setitem(sys.modules, "rdkit", None)
    d = collect(run, NO_CORPUS)
    assert d["structures"] == {} and any("RDKit does not import" in n for n in d["notes"])
    assert write_report(run, cfg=NO_CORPUS).is_file()


# -- optional views and the experiments' outputs -----------------------------------------------------

def test_umap_view_when_umap_imports(small_run, monkeypatch):
    class FakeUMAP:  # the umap-learn interface the report uses: fit, embedding_, transform
        def __init__(self, **kw):
            self.kw = kw

        def fit(self, x):
            self.embedding_ = x[:, :2] * 2
            return self

        def transform(self, x):
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    d = collect(small_run, ReportConfig(max_map_candidates=30))
    m = d["maps"][0]
    assert set(m["views"]) == {"PCA", "UMAP"}
    assert len(m["views"]["UMAP"]["cands"]["x"]) == len(m["views"]["PCA"]["cands"]["x"]) == len(m["cand_row"])
    assert set(collect(small_run, ReportConfig(max_map_candidates=30, umap=False))["maps"][0]["views"]) == {"PCA"}


def test_experiments_tables_and_pictures_inline(small_run, tmp_path):
    import shutil

    from PIL import Image
    from sqlmodel import Session

    from storage.db import open_db
    from storage.models import ExperimentRun

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "experiments").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(run / "experiments" / "discovery-1.png")
    Image.new("RGB", (8, 8), (30, 30, 200)).save(run / "experiments" / "loose.png")
    (run / "experiments" / "holdout-x.json").write_text('{"groups": {"topic": 1}}')
    engine = open_db(run, create=True)
    with Session(engine) as s:
        s.add(ExperimentRun(name="discovery", seconds=1.5, result_json='{"per_sampler": {}}', table="sampler  yield\ndark  100",
                            artifacts_json=json.dumps({"png": str(run / "experiments" / "discovery-1.png")})))
        s.commit()
    engine.dispose()
    d = collect(run, ReportConfig(max_map_candidates=10))
    stored, loose = d["experiments"]
    assert stored["name"] == "discovery" and "dark  100" in stored["table"]
    assert [im["name"] for im in stored["images"]] == ["discovery-1.png"]
    assert [im["name"] for im in loose["images"]] == ["experiments/loose.png"]
    assert [f["name"] for f in loose["files"]] == ["experiments/holdout-x.json"]
    page = build_html(run, ReportConfig(max_map_candidates=10))
    assert page.count("<img src='data:image/png;base64,") == 2 and "dark  100" in page
