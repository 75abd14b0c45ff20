"""The molecules domain: SMILES tokens, canonical forms, the user's SMILES files, judges, the loop."""
import json
import sqlite3

import numpy as np
import pytest

pytest.importorskip("rdkit")

from domains.base import get_domain  # noqa: E402
from domains.files import CorpusError  # noqa: E402
from domains.molecules.domain import MORGAN, canonical, read_smiles_file, verify  # noqa: E402
from domains.molecules.tokenizer import smiles_tokens, train_smiles_tokenizer  # noqa: E402

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
SMILES = [ASPIRIN, "C[C@@H](N)c1ccc[nH]1", "ClCCBr", "C1CC2CCC1C2", "O=C1CCC%10CC1CC%10", "c1ccsc1", "N#Cc1ccncc1"]


def moses_available() -> bool:
    try:
        from domains.molecules.data import moses_data_dir

        moses_data_dir()
        return True
    except Exception:  # noqa: BLE001 - absent or broken: the tests that need it skip
        return False


needs_moses = pytest.mark.skipif(not moses_available(), reason="MOSES data absent: pip install --no-deps molsets==0.3.1")


@pytest.mark.parametrize("smi", SMILES)
def test_smiles_tokens_cover_the_string_and_decode_back(smi):
    assert "".join(smiles_tokens(smi)) == smi
    tok = train_smiles_tokenizer(SMILES)
    ids = tok(smi, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode([tok.bos_token_id, *ids, tok.eos_token_id], skip_special_tokens=True) == smi


def test_smiles_tokenizer_units_and_reload(tmp_path):
    assert smiles_tokens("C[C@@H](Cl)Br%12") == ["C", "[C@@H]", "(", "Cl", ")", "Br", "%12"]
    tok = train_smiles_tokenizer(SMILES)
    assert len(tok) < 40  # atom-level: a few dozen units, not a BPE vocabulary
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(ASPIRIN, add_special_tokens=False)["input_ids"] == tok(ASPIRIN, add_special_tokens=False)["input_ids"]
    # a unit never seen in training maps to <unk>, never to a wrong atom
    assert again("[Se]", add_special_tokens=False)["input_ids"] == [again.unk_token_id]


def test_canonical_verify_and_fingerprints():
    assert canonical("OC(=O)c1ccccc1OC(C)=O") == canonical(ASPIRIN)  # two spellings, one molecule
    for bad in ("", "C1CC", "c1cccc1", "C(C", "not a molecule"):
        assert canonical(bad) is None
        assert verify(bad).status == "unparseable" and "invalid SMILES" in verify(bad).reason
    v = verify(ASPIRIN)
    assert v.status == "true" and v.fact_key == canonical(ASPIRIN)
    z = MORGAN.embed([ASPIRIN, "CCO", "C1CC"])
    assert z.shape == (3, MORGAN.dim)
    assert abs(float((z[0] ** 2).sum()) - 1) < 1e-5 and float(abs(z[2]).sum()) == 0  # invalid: zero row
    assert MORGAN.bits([ASPIRIN]).dtype == bool


@needs_moses
def test_descriptor_meaning_target(tmp_path):
    """--set corpus.meaning=descriptors: RDKit descriptors, standardised on MOSES train, as the SLLM's target;
    novelty stays on Morgan bits. A name the domain does not offer is refused before any work."""
    from common.errors import ConfigError
    from domains.base import get_domain
    from domains.molecules.domain import DescriptorEmbedder
    from loop.config import build_config
    from tests.test_loop import run_cli

    dom = get_domain("molecules")
    e = dom.meaning_target("descriptors")
    assert isinstance(e, DescriptorEmbedder) and dom.meaning_target("") is MORGAN and dom.meaning_embedder() is MORGAN
    z = e.embed([ASPIRIN, "OC(=O)c1ccccc1OC(C)=O", "CCCCCCCCCCCCCCCCCCCC", "C1CC"])
    assert z.shape == (4, e.dim) and e.dim > 100 and np.isfinite(z).all()
    assert abs(float((z[0] ** 2).sum()) - 1) < 1e-5 and float(abs(z[3]).sum()) == 0  # invalid: zero row
    assert float(z[0] @ z[1]) == pytest.approx(1.0, abs=1e-5) and float(z[0] @ z[2]) < 0.9  # one molecule, two spellings
    mu, sd = e.stats()
    assert (sd > 0).all() and np.isfinite(mu).all()
    with pytest.raises(ConfigError, match="offers one of morgan, descriptors"):
        build_config(None, {"corpus.domain": "molecules", "corpus.meaning": "bogus"})
    with pytest.raises(ConfigError, match="maths domain offers none but its own"):
        build_config(None, {"corpus.meaning": "descriptors"})
    out = tmp_path / "b.json"
    run_cli(["bench", "sllm", "-q", "--json", str(out), "--base-dir", str(tmp_path / "base"), *TINY_MOL,
             "--set", "corpus.meaning=descriptors", "--beams", "2"])
    res = json.loads(out.read_text())["results"]["full"]
    assert res["heldout_texts"] == 60 and 0 <= res["exact_match"] <= 1
    # --beams: the same held-out, prior and dark latents decoded to the likeliest of 2 beams RDKit
    # parses, and to the parseable one encoded nearest the latent
    assert res["beams"] == 2 and res["decode_seconds_parseable"] > 0 and res["decode_seconds_closest"] > 0
    for pick in ("parseable", "closest"):
        for k in ("exact_match", "prior_true", "prior_unique", "dark_still_dark", "reach_edit1_exact"):
            assert 0 <= res[f"{k}_{pick}"] <= 1, (k, pick)
    assert res["meaning_target"] == {"name": e.name, "dim": e.dim} and res["final_losses"]["meaning"] >= 0


def test_selfies_edits_walk_away_and_stay_valid():
    """Molecules edit by SELFIES point mutations: every step a valid molecule, seeded, of the given
    molecules' own elements; more steps walk farther (Tanimoto to the source falls)."""
    from domains.molecules.chem import fingerprints, to_mol

    dom = get_domain("molecules")
    src = [ASPIRIN, "CCN(CC)C(=O)c1ccc(O)cc1", "Cc1ccc(S(=O)(=O)N2CCCC2)cc1", "O=C(Nc1ccccc1)c1ccco1"] * 25
    one, four = dom.edit(src, 1, seed=0), dom.edit(src, 4, seed=0)
    assert one == dom.edit(src, 1, seed=0) and one != dom.edit(src, 1, seed=1)
    assert all(e and canonical(e) == e for e in one + four)  # valid, written canonically
    elements = {a.GetSymbol() for s in src for a in to_mol(s).GetAtoms()}
    assert {a.GetSymbol() for e in one + four for a in to_mol(e).GetAtoms()} <= elements
    assert sum(e != canonical(s) for e, s in zip(one, src)) > len(src) // 2
    fp_src, fp1, fp4 = fingerprints(src), fingerprints(one), fingerprints(four)

    def tanimoto(a, b):
        both, either = (a & b).sum(1), (a | b).sum(1)
        return float(np.mean(both / np.maximum(either, 1)))

    assert tanimoto(fp_src, fp4) < tanimoto(fp_src, fp1) < 1


def test_read_smiles_file_counts_invalid_lines(tmp_path):
    smi = tmp_path / "mols.smi"
    smi.write_text(f"{ASPIRIN} aspirin\nCCO\nnot-a-smiles\n\nC1CC\nOCC\n")
    valid, invalid = read_smiles_file(smi)
    assert valid == [canonical(ASPIRIN), "CCO", "CCO"] and invalid == 2
    csv = tmp_path / "mols.csv"
    csv.write_text("name,SMILES\na,CCO\nb,c1ccccc1\nc,xx\n")
    assert read_smiles_file(csv) == (["CCO", "c1ccccc1"], 1)
    empty = tmp_path / "bad.smi"
    empty.write_text("xx\nyy\n")
    with pytest.raises(CorpusError, match="no valid SMILES"):
        read_smiles_file(empty)
    sdf = tmp_path / "mols.sdf"
    sdf.write_text("x")
    with pytest.raises(CorpusError, match="extension"):
        read_smiles_file(sdf)


def test_messy_user_smiles_file(tmp_path):
    """Salts keep their parent, stereochemistry and charges survive, invalid lines are counted."""
    f = tmp_path / "messy.smi"
    f.write_text("\n".join([
        "CC(=O)[O-].[Na+] sodium acetate",  # a salt: the acetate is kept
        "C[C@@H](N)C(=O)O L-alanine",  # stereochemistry kept
        "C[C@H](N)C(=O)O D-alanine",
        "C[N+](C)(C)C.[Cl-]",  # a charged parent ion
        "c1ccccc1 benzene",
        "C1=CC=CC=C1",  # benzene again, Kekule form
        "C(C)(C)(C)(C)C",  # pentavalent carbon: invalid
        "[Xx]", "c1cccc1", "", "   ", "OCC)",
    ]) + "\n")
    valid, invalid = read_smiles_file(f)
    assert invalid == 4
    assert valid == ["CC(=O)[O-]", "C[C@@H](N)C(=O)O", "C[C@H](N)C(=O)O", "C[N+](C)(C)C", "c1ccccc1", "c1ccccc1"]
    cfg_dom = get_domain("molecules")
    from loop.config import build_config

    cfg = build_config(overrides={"corpus.domain": "molecules", "corpus.path": str(f), "corpus.eval_share": "0"})
    d = cfg_dom.load(cfg.corpus, 0)
    assert [t.text for t in d.train] == valid[:5]  # one text per molecule
    assert cfg_dom.invalid_lines == 4


def test_user_smiles_corpus_splits_and_counts(tmp_path):
    from loop.config import build_config

    lines = [ASPIRIN, "CCO", "CCN", "CCC", "CCCl", "c1ccccc1", "c1ccncc1", "CC(C)O", "OCCO", "bad((", "CCOC"] * 1
    f = tmp_path / "mine.smi"
    f.write_text("\n".join(lines) + "\n")
    cfg = build_config(overrides={"corpus.domain": "molecules", "corpus.path": str(f), "corpus.eval_share": "0.2"})
    dom = get_domain("molecules")
    d = dom.load(cfg.corpus, 0)
    assert dom.invalid_lines == 1
    assert len(d.train) + len(d.eval) == 10 and d.eval
    assert d.train_fact_keys == frozenset(t.text for t in d.train)


def test_molecules_defaults_sit_under_user_settings():
    from loop.config import build_config

    cfg = build_config(overrides={"corpus.domain": "molecules"})
    assert cfg.sllm.max_tokens == 64 and cfg.corpus.own.max_texts == 10000
    cfg = build_config(overrides={"corpus.domain": "molecules", "molecules.max_texts": "500"})
    assert cfg.corpus.own.max_texts == 500
    assert build_config().sllm.max_tokens == 48  # maths keeps its own


def test_panel_for_molecules_uses_tanimoto_and_the_chemistry_critic(tiny_lm):
    from judges.config import JudgeConfig
    from judges.critic import RuleCriticJudge
    from judges.panel import build_panel, judge_texts
    from domains.base import Text

    tok, model = tiny_lm
    dom = get_domain("molecules")
    train = [Text(s, "molecule", canonical(s)) for s in SMILES]
    cfg = JudgeConfig(min_coherence=0)
    panel = build_panel(dom, cfg, model, tok, train, [], seed=0)
    by_name = {j.name: j for j in panel}
    assert isinstance(by_name["critic"], RuleCriticJudge) and by_name["novelty"].metric == "jaccard"
    texts = [ASPIRIN, "OC(=O)c1ccccc1OC(C)=O", "CCCCCCCCOc1ccc(cc1)C(=O)N", "C1CC"]
    out = judge_texts(panel, texts, cfg, frozenset(t.fact_key for t in train), canonical=dom.canonical)
    assert out[0].accepted is False and "near-duplicate" in out[0].reason  # a training molecule
    assert out[3].accepted is False and "invalid SMILES" in out[3].reason
    crit = out[2].scores["critic"]
    assert 0 < crit.score <= 1 and "QED" in crit.reason and set(crit.detail) == {"qed", "sa", "filters"}
    assert out[2].verdict == "true" and out[2].true_new is True


TINY_MOL = [
    "--domain", "molecules", "--set", "molecules.max_texts=400", "--set", "molecules.eval_texts=60",
    "--set", "molecules.knowledge_texts=60",
    "--set", "base.hidden=32", "--set", "base.layers=1", "--set", "base.heads=2", "--set", "base.epochs=2",
    "--set", "sllm.latent_dim=32", "--set", "sllm.enc_dim=32", "--set", "sllm.enc_layers=1", "--set", "sllm.epochs=1",
    "--set", "sllm.n_prompt=4", "--set", "sample.n_candidates=12", "--set", "decode.max_new_tokens=24",
    "--set", "retrain.epochs=1", "--set", "retrain.replay_texts=16", "--set", "run.threads=1",
    "--set", "judges.min_coherence=0", "--set", "sample.samplers=dark,prior,lm",
    "--set", "evaluate.knowledge_samples=16",
]


@needs_moses
def test_molecules_loop_reports_moses_metrics(tmp_path):
    from tests.test_loop import run_cli

    out = tmp_path / "run"
    p = run_cli(["--generations", "1", "--out", str(out), *TINY_MOL, "--set", "base.extra_texts=100"])
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("gen 0 |")][0]
    for key in ("valid", "valid-new", "unique", "novel", "IntDiv", "filters", "SNN/Test", "FCD/Test", "rediscovered"):
        assert f"{key} " in line, (key, line)
    con = sqlite3.connect(out / "runs.db")
    base = json.loads(con.execute("SELECT detail_json FROM stage WHERE name='base'").fetchone()[0])
    assert base["extra_texts"] == 100 and base["texts"] == 500  # 400 corpus molecules (eval: MOSES test) + 100
    detail = json.loads(con.execute("SELECT detail_json FROM stage WHERE name='evaluate'").fetchone()[0])
    m = detail["domain_metrics"]
    assert m["decodes"] == 12 and 0 <= m.get("unique", 0) <= 1
    # what the model knows: the MOSES metrics of a fixed-size sample of its own molecules
    assert 0 <= detail["knowledge"]["valid"] <= 1 and "knowledge valid" in m and "knowledge valid " in line
    rows = con.execute("SELECT text, verdict, decision, reason FROM candidate").fetchall()
    for text, verdict, decision, reason in rows:
        assert (verdict == "true") == (canonical(text or "") is not None)
        if verdict != "true":
            assert decision == "rejected" and "invalid SMILES" in reason
    con.close()
    # discovery on the run: the MOSES table per sampler, beside the paper's rows and a same-size train sample
    js = tmp_path / "disc.json"
    p = run_cli(["experiment", "discovery", "--run", str(out), "--budget", "6", "--seeds", "1", "--only", "dark,lm",
                 "--json", str(js), "-q", "--set", "decode.beams=2", "--set", "decode.pick=parseable"])
    assert "| paper: CharRNN | 30000 |" in p.stdout and "| MOSES train, n=6 | 6 |" in p.stdout, p.stdout
    # a finished run is measured with the decode settings given (what is written out, not what was trained)
    con = sqlite3.connect(out / "runs.db")
    measured = json.loads(con.execute("SELECT settings_json FROM experimentrun").fetchone()[0])["config"]["decode"]
    con.close()
    assert (measured["beams"], measured["pick"]) == (2, "parseable")
    assert json.loads((out / "config.json").read_text())["decode"]["pick"] == "top"
    ref = json.loads(js.read_text())["result"]["reference"]
    assert set(ref["rows"]) == {"dark", "lm", "MOSES train, n=6"} and ref["n"] == 6
    train_row = ref["rows"]["MOSES train, n=6"]
    assert train_row["valid"] == 1.0 and "Novelty" not in train_row  # a train sample: scored without novelty
    for name in ("dark", "lm"):
        r = ref["rows"][name]
        assert 0 <= r["valid"] <= 1 and (r["valid"] == 0 or 0 <= r["Novelty"] <= 1)
    assert "Training budget: generation 0" in p.stdout


@needs_moses
def test_base_extra_texts_come_from_moses_train_beyond_the_corpus(tmp_path):
    """base.extra_texts: more MOSES training molecules for the base model only, none in the corpus,
    the same draw for the same seed; refused before any work where a domain has none."""
    from common.errors import ConfigError
    from domains.config import CorpusConfig
    from domains.molecules.data import load_split
    from loop.config import build_config

    dom = get_domain("molecules")
    corpus = set(load_split("train", 500, 0))
    extra = dom.base_texts(CorpusConfig(domain="molecules"), 0, 300, corpus)
    assert len(extra) == len(set(extra)) == 300 and not corpus & set(extra)
    assert extra == dom.base_texts(CorpusConfig(domain="molecules"), 0, 300, corpus)
    assert extra != dom.base_texts(CorpusConfig(domain="molecules"), 1, 300, corpus)
    with pytest.raises(ConfigError, match="maths domain holds no texts beyond its corpus"):
        build_config(None, {"base.extra_texts": "10"})
    smi = tmp_path / "m.smi"
    smi.write_text("CCO\n")
    with pytest.raises(ConfigError, match="not from --corpus"):
        build_config(None, {"corpus.domain": "molecules", "corpus.path": str(smi), "base.extra_texts": "10"})
    with pytest.raises(ConfigError, match="base.extra_texts must be >= 0"):
        build_config(None, {"base.extra_texts": "-1"})


def test_sllm_language_texts_are_moses_train_beyond_the_corpus(tmp_path):
    """sllm.false_texts on molecules: more MOSES training molecules for the SLLM only, none in the
    corpus, none held out; refused with a user's --corpus before any work."""
    from common.errors import ConfigError
    from domains.config import CorpusConfig
    from domains.molecules.data import load_split
    from domains.molecules.domain import MoleculesSettings
    from loop.config import build_config

    dom = get_domain("molecules")
    cfg = CorpusConfig(domain="molecules", own=MoleculesSettings(max_texts=500, knowledge_texts=50, eval_texts=50))
    extra = dom.language_texts(cfg, 0, 200)
    corpus = {t.text for t in dom.texts(cfg, 0)[0]}
    held = set(load_split("test_scaffolds")) | set(load_split("test"))
    texts = [t.text for t in extra]
    assert len(set(texts)) == 200 and not corpus & set(texts) and not held & set(texts)
    assert texts == [t.text for t in dom.language_texts(cfg, 0, 200)] and dom.language_texts(cfg, 0, 0) == []
    smi = tmp_path / "m.smi"
    smi.write_text("CCO\n")
    with pytest.raises(ConfigError, match="sllm.false_texts 10: the SLLM's extra molecules come from MOSES train"):
        build_config(None, {"corpus.domain": "molecules", "corpus.path": str(smi), "sllm.false_texts": "10"})


def test_moses_statistics_reader_refuses_anything_but_arrays():
    """MOSES's shipped statistics are a pickle; the reader builds only arrays and Counters."""
    import io
    import os
    import pickle

    from domains.molecules.metrics import _StatsUnpickler

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays and Counters"):
        _StatsUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    import numpy as np
    from collections import Counter

    ok = {"a": np.arange(3), "c": Counter({"x": 2})}
    back = _StatsUnpickler(io.BytesIO(pickle.dumps(np.array(ok, dtype=object), protocol=2))).load().item()
    assert back["c"] == ok["c"] and back["a"].tolist() == [0, 1, 2]
