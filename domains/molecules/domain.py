"""The molecules domain: MOSES SMILES, RDKit validity, Morgan-fingerprint meaning, chemistry critic.

Corpus: a subset of MOSES train (`molecules.max_texts`, 0 = all 1.58M), held-out evaluation:
MOSES test, held-out knowledge: MOSES scaffold test (molecules whose Bemis-Murcko scaffolds
occur in neither train nor test; Polykovskiy et al. 2020). A user's `--corpus FILE.smi|.csv|.txt`
replaces the training molecules; its invalid lines are counted and reported, never fatal.
Every text is a canonical SMILES (RDKit), so de-duplication and "new" are exact.

- verifier: RDKit parses and sanitises the SMILES ("true" = a valid molecule; its fact key is
  the canonical SMILES, so "true and new" = valid and absent from MOSES train);
- meaning: Morgan fingerprints (radius 2, 1024 bits), so nearby latents are similar molecules
  and novelty is the Tanimoto (Jaccard) distance to the nearest training molecule;
- critic: rule-based, not an LLM (a chemical LM cannot rate its own output): drug-likeness
  (QED), synthetic accessibility (SA score) and the MOSES filters;
- per generation: the MOSES metrics against the whole test set (SNN and FCD from the statistics
  MOSES ships), and rediscoveries (decodes whose canonical SMILES is in the scaffold-test set:
  real molecules the model never saw) and novel scaffolds (absent from the run's training set).
"""
from __future__ import annotations

import csv
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import ConfigError
from common.errors import check as _check
from domains.base import CorpusSplits, Domain, Text, Verdict, split_eval
from domains.files import CorpusError
from domains.molecules.chem import FP_BITS, FP_RADIUS, canonical, fingerprints, rdkit, selfies_edits
from domains.molecules.data import load_split, scaffold_test_set
from domains.molecules.holdout import ScaffoldTestHoldout
from domains.molecules.tokenizer import train_smiles_tokenizer

SMILES_EXTENSIONS = (".smi", ".csv", ".txt")
# Drawn from MOSES train beside the corpus: molecules that teach the base model's copy units and
# the SLLM the language, as the maths domain's false sentences do (none is held out).
RUBRIC = ("Rule-based: drug-likeness (QED), synthetic accessibility (SA score, 1 easy - 10 hard) and the "
          "MOSES medicinal-chemistry filters (MCF, PAINS, allowed atoms, no charges, ring sizes).")


MEMO_MIN = 1000  # texts: lists this long are corpora, worth keeping their bits


class MorganEmbedder:
    """Morgan fingerprints as the meaning space: L2-normalised bit vectors (cosine = the Ochiai
    similarity, monotone with Tanimoto for molecules of equal bit counts); `metric` tells the
    novelty judge to measure Tanimoto (Jaccard) distance on the bits instead."""

    name = f"morgan-r{FP_RADIUS}-{FP_BITS}"
    dim = FP_BITS
    metric = "jaccard"
    _memo: dict = {}  # a large text list (as a tuple) -> its bits (read-only), at most two lists

    def embed(self, texts: list[str]) -> np.ndarray:
        bits = fingerprints(list(texts)).astype(np.float32)
        norm = np.linalg.norm(bits, axis=1, keepdims=True)
        return bits / np.maximum(norm, 1.0)  # (N, 1024); an invalid SMILES stays a zero row

    def bits(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if len(texts) < MEMO_MIN:
            return fingerprints(texts).astype(bool)
        # The novelty judge fingerprints the whole corpus every generation (2.4 s for 10,000
        # molecules); one process running many generations of a run, or many runs of one corpus
        # (the generations experiment), computes it once.
        key = tuple(texts)  # the texts themselves: equal lists only, never a hash collision
        if key not in self._memo:
            if len(self._memo) >= 2:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = fingerprints(texts).astype(bool)
            self._memo[key].flags.writeable = False
        return self._memo[key]


MORGAN = MorganEmbedder()

DESCRIPTOR_CLIP = 5.0  # standard deviations
DESCRIPTOR_SAMPLE = 2000  # MOSES training molecules that set each descriptor's mean and spread


class DescriptorEmbedder:
    """RDKit's 2D descriptors (`Descriptors.CalcMolDescriptors`: weight, logP, TPSA, ring and atom
    counts, charges, topological indices ...) as the SLLM's meaning target, in place of Morgan bits
    (`--set corpus.meaning=descriptors`): each descriptor standardised by its mean and standard
    deviation over 2,000 MOSES training molecules (a fixed seeded sample), clipped at 5, the vector
    L2-normalised. An invalid SMILES gives a zero row. About 2 ms a molecule."""

    name = f"rdkit-descriptors-z{DESCRIPTOR_SAMPLE}"
    metric = "cosine"

    def __init__(self):
        from rdkit.Chem import Descriptors  # lazy: RDKit start-up, not needed to read a run's settings

        self.names = [n for n, _ in Descriptors._descList]
        self.dim = len(self.names)
        self._stats: tuple[np.ndarray, np.ndarray] | None = None

    def raw(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float64 descriptor values; NaN where RDKit gives none or the SMILES is invalid."""
        from rdkit import Chem, RDLogger  # lazy: RDKit start-up, not needed to read a run's settings
        from rdkit.Chem import Descriptors  # lazy: RDKit start-up, not needed to read a run's settings

        RDLogger.DisableLog("rdApp.*")
        out = np.full((len(texts), self.dim), np.nan)
        for i, s in enumerate(texts):
            mol = Chem.MolFromSmiles(s) if s else None
            if mol is not None and mol.GetNumAtoms():
                d = Descriptors.CalcMolDescriptors(mol, missingVal=np.nan)
                out[i] = [d[n] for n in self.names]
        with np.errstate(invalid="ignore"):
            out[~np.isfinite(out)] = np.nan
        return out

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stats is None:
            x = self.raw(load_split("train", DESCRIPTOR_SAMPLE, seed=0))
            mu, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
            self._stats = (np.nan_to_num(mu), np.where(np.nan_to_num(sd) > 1e-12, sd, 1.0))
        return self._stats

    def embed(self, texts: list[str]) -> np.ndarray:
        x = self.raw(list(texts))
        valid = ~np.isnan(x).all(axis=1)
        mu, sd = self.stats()
        z = np.clip(np.nan_to_num((x - mu) / sd), -DESCRIPTOR_CLIP, DESCRIPTOR_CLIP)
        z[~valid] = 0.0
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        return (z / np.maximum(norm, 1e-12)).astype(np.float32)  # (N, dim)


@functools.lru_cache(maxsize=1)
def descriptor_embedder() -> DescriptorEmbedder:
    """The process's one DescriptorEmbedder: its standardisation over MOSES train is computed once."""
    return DescriptorEmbedder()


def verify(text: str) -> Verdict:
    c = canonical(text)
    if c is None:
        return Verdict("unparseable", None, None, reason="invalid SMILES: RDKit cannot parse or sanitise it")
    return Verdict("true", c, None, reason=f"valid molecule {c}")


def chemistry_critic(texts: list[str]) -> list[tuple[float | None, str, dict]]:
    """(score, reason, detail) per text: score = mean of QED and (10 - SA) / 9, halved when the
    molecule fails the MOSES filters; None for an invalid SMILES (the verifier rejects it)."""
    from domains.molecules import metrics  # lazy: RDKit start-up, not needed to read a run's settings

    out = []
    for t in texts:
        if canonical(t) is None:
            out.append((None, "invalid SMILES: nothing to rate", {}))
            continue
        q, sa, ok = metrics.qed(t), metrics.sa_score(t), metrics.passes_filters(t)
        score = (q + (10 - sa) / 9) / 2 * (1.0 if ok else 0.5)
        out.append((float(score), f"QED {q:.2f}, SA {sa:.2f}, {'passes' if ok else 'fails'} MOSES filters",
                    {"qed": q, "sa": sa, "filters": bool(ok)}))
    return out


def largest_fragment(smiles: str) -> str | None:
    """Canonical SMILES of the largest fragment (most heavy atoms): a salt or solvate such as
    "CC(=O)[O-].[Na+]" keeps its parent ion, as MOSES's own preparation of ZINC did."""
    Chem = rdkit()
    mol = Chem.MolFromSmiles(smiles.strip()) if smiles.strip() else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    frags = Chem.GetMolFrags(mol, asMols=True)
    return Chem.MolToSmiles(max(frags, key=lambda m: (m.GetNumHeavyAtoms(), Chem.MolToSmiles(m))))


def read_smiles_file(path: str | Path) -> tuple[list[str], int]:
    """(canonical SMILES of the valid lines, count of invalid lines) of a user's SMILES file:
    .smi/.txt (SMILES first on each line, anything after whitespace ignored) or .csv (a column
    named SMILES or smiles, else the first). Salts keep their largest fragment; stereochemistry
    and charges are kept. Raises CorpusError when nothing valid is left."""
    p = Path(path)
    if not p.is_file():
        raise CorpusError(f"corpus file {p} does not exist; pass a .smi, .csv or .txt file of SMILES")
    if p.suffix.lower() not in SMILES_EXTENSIONS:
        raise CorpusError(f"corpus file {p} has extension {p.suffix or '(none)'!r}; the molecules domain reads "
                          ".smi or .txt (one SMILES a line) or .csv (a SMILES column)")
    try:
        content = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CorpusError(f"corpus file {p} is not UTF-8 text; save it as UTF-8") from None
    if p.suffix.lower() == ".csv":
        rows = list(csv.reader(content.splitlines()))
        if not rows:
            raise CorpusError(f"corpus file {p} is empty; add a SMILES column")
        head = [h.strip().lower() for h in rows[0]]
        col = head.index("smiles") if "smiles" in head else 0
        raw = [r[col] if len(r) > col else "" for r in rows[1:]] if "smiles" in head else [r[0] for r in rows if r]
    else:
        raw = [line.split()[0] if line.split() else "" for line in content.splitlines()]
    raw = [r.strip() for r in raw if r.strip()]
    valid, invalid = [], 0
    for r in raw:
        c = largest_fragment(r)
        if c is None:
            invalid += 1
        else:
            valid.append(c)
    if not valid:
        raise CorpusError(f"corpus file {p} has no valid SMILES ({invalid} invalid lines); pass a file of SMILES")
    return valid, invalid


@dataclass
class MoleculesSettings:
    """How many molecules: MOSES training molecules in the corpus (0 = all 1.58M; the first of a
    user's .smi file), MOSES test molecules held out for evaluation and scaffold-test molecules
    in the held-out knowledge set (0 = all)."""
    max_texts: int = 0
    eval_texts: int = 1000
    knowledge_texts: int = 1000

    def __post_init__(self):
        for k in ("max_texts", "eval_texts", "knowledge_texts"):
            _check(getattr(self, k) >= 0, f"molecules.{k} must be >= 0, got {getattr(self, k)}")


class MoleculesDomain(Domain):
    name = "molecules"
    extensions = (".smi",)
    knowledge_holdout = ScaffoldTestHoldout()  # MOSES's scaffold-test molecules: scaffolds in neither train nor test
    structure_drawings = True
    count_figures = ("rediscovered", "novel_scaffolds")
    report_columns = (("rediscovered_per_1000", "rediscovered /1000"), ("novel_scaffolds_per_1000", "novel scaffolds /1000"),
                      ("domain/unique", "unique"), ("domain/IntDiv", "IntDiv"), ("domain/filters", "filters"),
                      ("domain/SNN/Test", "SNN/Test"), ("domain/FCD/Test", "FCD/Test"))
    rubric = RUBRIC
    truth_label, new_label = "valid", "valid-new"
    settings = MoleculesSettings
    # Settings a molecules run needs unless the user sets them (loop.config.build_config).
    # Sized so that `--domain molecules --generations 2` fits 20 minutes on 2 CPU cores; on a GPU
    # pass --set molecules.max_texts=0 (all of MOSES train) and more epochs.
    defaults = {
        "molecules.max_texts": 10000,
        "base.epochs": 8,
        "base.pack_len": 128,
        "sllm.epochs": 4,
        "sllm.max_tokens": 64,  # MOSES SMILES run to 57 atom-level tokens
        "sllm.false_texts": 0,
        "decode.max_new_tokens": 64,
    }
    # Half the corpus and a quarter of the candidates: a generation re-encodes every corpus molecule
    # under the retrained base model (10 s for 10,000), and 84 variant generations must fit beside
    # the three start runs.
    generations_protocol = {"molecules.max_texts": 5000, "sample.n_candidates": 250}

    def check_knowledge(self, cfg) -> None:
        """The scaffold-test molecules are always there to measure on."""
    def __init__(self):
        self.invalid_lines = 0  # of a user's --corpus file, counted by `texts`

    def texts(self, cfg, seed: int) -> tuple[list[Text], list[Text]]:
        if cfg.path is not None:
            smiles, self.invalid_lines = read_smiles_file(cfg.path)
            if self.invalid_lines:
                self.notes = [f"note: {self.invalid_lines} line(s) of {cfg.path} are not valid SMILES (RDKit cannot "
                              f"parse or sanitise them); skipped, {len(smiles)} molecules kept"]
            smiles = list(dict.fromkeys(smiles))  # one text per molecule, first occurrence kept
            if cfg.own.max_texts:
                smiles = smiles[: cfg.own.max_texts]
        else:
            smiles = load_split("train", cfg.own.max_texts or None, seed)
        try:
            knowledge = load_split("test_scaffolds", cfg.own.knowledge_texts or None, seed)
        except CorpusError:
            if cfg.path is None:
                raise
            knowledge = []  # a user corpus without the MOSES files: no held-out knowledge set
        return [Text(s, "molecule", s) for s in smiles], [Text(s, "molecule", s) for s in knowledge]

    def check_base_texts(self, cfg, n: int) -> None:
        if not n:
            return
        if cfg.path is not None:
            raise ConfigError(f"base.extra_texts {n}: extra base-model molecules come from MOSES train, not from "
                              f"--corpus {cfg.path}; drop the setting or the --corpus")

    def check_language_texts(self, cfg, n: int) -> None:
        if n and cfg.path is not None:
            raise ConfigError(f"sllm.false_texts {n}: the SLLM's extra molecules come from MOSES train, not from "
                              f"--corpus {cfg.path}; set sllm.false_texts=0 or drop the --corpus")

    def base_texts(self, cfg, seed: int, n: int, exclude: set[str]) -> list[str]:
        """`n` more MOSES training molecules, none in the corpus, a seeded draw (file order kept)."""
        self.check_base_texts(cfg, n)
        pool = [m for m in load_split("train") if m not in exclude]
        if n > len(pool):
            raise CorpusError(f"base.extra_texts {n}: MOSES train holds {len(pool)} molecules beyond the corpus; "
                              f"pass at most that")
        idx = np.sort(np.random.default_rng([seed, 4099]).choice(len(pool), size=n, replace=False))
        return [pool[i] for i in idx]

    def language_texts(self, cfg, seed: int, n: int, topics=None) -> list[Text]:
        """`n` more MOSES training molecules for the SLLM (`sllm.false_texts`), none in the corpus: an
        encoder and decoder that see more molecules than the map holds generalise better, and, being
        MOSES train, they hold nothing held out (scaffold test, test)."""
        if not n:
            return []
        self.check_language_texts(cfg, n)
        corpus = {t.text for t in self.texts(cfg, seed)[0]}
        return [Text(m, "molecule", m) for m in self.base_texts(cfg, seed + 1, n, corpus)]

    def load(self, cfg, seed: int) -> CorpusSplits:
        train, knowledge = self.texts(cfg, seed)
        if cfg.path is not None:
            train, ev = split_eval(train, cfg.eval_share, seed)
            keys = frozenset(t.text for t in train)
        else:
            ev = [Text(s, "molecule", s) for s in load_split("test", cfg.own.eval_texts or None, seed)]
            keys = train_set()  # "new" = absent from all of MOSES train, as MOSES's Novelty counts it
        return CorpusSplits(train=train, eval=ev, knowledge=knowledge, train_fact_keys=keys)

    def canonical(self, text: str) -> str:
        return canonical(text) or text.strip()

    def meaning_embedder(self) -> MorganEmbedder:
        return MORGAN

    def meaning_targets(self) -> dict:
        return {"morgan": lambda: MORGAN, "descriptors": descriptor_embedder}

    @property
    def verifier(self) -> Callable[[str], Verdict]:
        return verify

    def edit(self, texts: list[str], k: int, seed: int) -> list[str]:
        """Each molecule after `k` SELFIES point mutations: valid at every step (chem.selfies_edits)."""
        return selfies_edits(texts, k, seed)

    @property
    def rule_critic(self):
        return chemistry_critic

    def train_tokenizer(self, texts: list[str], vocab_size: int):
        return train_smiles_tokenizer(texts, vocab_size)

    def knowledge_figures(self, splits, cfg, seed: int, loglik, sample, n_texts: int, n_samples: int) -> dict[str, float]:
        """The MOSES metrics of a fixed-size sample of the model's own molecules (validity, uniqueness,
        novelty, FCD/Test, SNN/Test, rediscoveries of scaffold-test molecules, novel scaffolds)."""
        if not n_samples:
            return {}
        texts = sample(n_samples)
        valid = sum(canonical(t) is not None for t in texts if t) / len(texts)
        return {"valid": valid, **{k: v for k, v in self.generation_metrics(texts, splits).items() if k != "decodes"}}

    def generation_metrics(self, texts: list[str], splits: CorpusSplits) -> dict[str, float]:
        """The MOSES metrics of a generation's decodes against the held-out test molecules, and
        the rediscoveries (decodes in the scaffold-test set)."""
        from domains.molecules import metrics  # lazy: RDKit start-up, not needed to read a run's settings

        valid = [c for c in (canonical(t) for t in texts if t) if c is not None]
        out: dict[str, float] = {"decodes": len(texts)}  # validity itself is the verifier's share (the line's "valid")
        if not valid:
            return out
        test = reference_set(splits)
        uniq = sorted(set(valid))
        out.update({
            "unique": len(uniq) / len(valid),
            "novel": sum(s not in splits.train_fact_keys for s in uniq) / len(uniq),
            "IntDiv": metrics.internal_diversity(valid),
            "filters": metrics.fraction_passes_filters(valid),
            "SNN/Test": metrics.snn(valid, test),
        })
        with warnings.catch_warnings():  # a near-singular covariance of few decodes: FCD is then rough
            warnings.simplefilter("ignore")
            out["FCD/Test"] = metrics.fcd(valid, test) if len(uniq) >= 2 else float("nan")
        sf = scaffold_test_set()
        out["rediscovered"] = sum(s in sf for s in uniq)
        train_scaf = metrics.train_scaffolds(splits)
        scaf = {metrics.scaffold(s) for s in uniq} - {None, ""}
        out["novel_scaffolds"] = len(scaf - train_scaf)
        return out


    def reference_table(self, decodes: dict[str, list[str]], splits: CorpusSplits, note: str = "") -> dict | None:
        """Each sampler's decodes scored with the MOSES metrics (against all of MOSES test and scaffold
        test, from the statistics MOSES ships; Novelty against all of MOSES train), beside the paper's
        rows and beside a sample of MOSES train of the same size scored the same way: FCD, Unique@k
        and the set metrics depend on the sample size (the paper scores 30,000), so only that
        same-size Train row tells what a perfect generator would score at this n."""
        from domains.molecules import metrics  # lazy: RDKit start-up, not needed to read a run's settings

        try:
            test, test_sf = metrics.moses_reference("test"), metrics.moses_reference("test_scaffolds")
        except CorpusError:
            return None  # a user corpus without the MOSES files: no published table to stand beside
        rows: dict[str, dict[str, float]] = {}
        sizes = [len(t) for t in decodes.values() if t]
        if not sizes:
            return None
        n = max(sizes)
        with warnings.catch_warnings():  # a near-singular covariance of few decodes: FCD is then rough
            warnings.simplefilter("ignore")
            train = train_set()
            for name, texts in decodes.items():
                if texts:
                    rows[name] = metrics.moses_metrics(texts, test, test_sf, train=train)
            rows[f"MOSES train, n={n}"] = metrics.moses_metrics(load_split("train", n, 1), test, test_sf)
        cols = REFERENCE_COLUMNS
        lines = ["| model | n | " + " | ".join(cols) + " |", "| --- | --- |" + " --- |" * len(cols)]
        fmt = lambda v: "–" if v is None or v != v else f"{v:.3f}"  # noqa: E731  (NaN -> –)
        for name, r in rows.items():
            size = len(decodes.get(name, [])) or n
            lines.append(f"| {name} | {size} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
        for name, r in metrics.PAPER_ROWS.items():
            lines.append(f"| paper: {name} | 30000 | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
        lines.append("MOSES metrics (Polykovskiy et al. 2020); paper rows: means over 3 x 30,000 samples. FCD, "
                     "Unique and Scaf depend on n: compare a sampler with the same-size MOSES train row, not the paper's. "
                     "The paper's Train row lists Novelty 1.0; a train sample is 0.0 novel by construction."
                     + (f" {note}" if note else ""))
        return {"rows": rows, "table": "\n".join(lines), "n": n}


REFERENCE_COLUMNS = ("valid", "unique@1000", "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/TestSF", "IntDiv", "Filters",
                     "Novelty")


class MosesTrainSet:
    """Every MOSES training molecule (canonical SMILES, as the csv holds them: 99.97% of a sample
    of 3,000 are unchanged by this RDKit's canonicalisation), read on the first membership test,
    so a run that never asks (the report, inspect) never pays the 1.58M-row read."""

    def __contains__(self, smiles: object) -> bool:
        return smiles in _moses_train()

    def __len__(self) -> int:
        return len(_moses_train())

    def __iter__(self):
        return iter(_moses_train())


@functools.lru_cache(maxsize=1)
def _moses_train() -> frozenset[str]:
    return frozenset(load_split("train"))


def train_set() -> MosesTrainSet:
    return MosesTrainSet()


def reference_set(splits: CorpusSplits):
    """What SNN and FCD compare with: all of MOSES test, from the statistics MOSES ships (the
    paper's protocol); the run's evaluation molecules where the MOSES files are absent."""
    from domains.molecules import metrics  # lazy: RDKit start-up, not needed to read a run's settings

    try:
        return metrics.moses_reference("test")
    except CorpusError:
        return [t.text for t in splits.eval]
