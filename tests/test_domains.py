"""Tests for domains/: the domain interface and registry, the maths generator and verifier, the text domain, user corpus loading."""
import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest

from domains import (
    ALL_TOPICS,
    CorpusError,
    MathsConfig,
    MathsCorpus,
    Text,
    Verdict,
    build_maths_corpus,
    false_statements,
    load_corpus,
    verify,
)
from domains.maths import TOPICS, fact_space, parse_all, render

SMALL = MathsConfig(seed=3, facts_per_topic=20, phrasings_per_fact=3, holdout_share=0.25)


@pytest.fixture(scope="module")
def corpus() -> MathsCorpus:
    return build_maths_corpus(SMALL)


# --- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, fragment", [
    ({"facts_per_topic": 0}, "facts_per_topic"),
    ({"phrasings_per_fact": 0}, "phrasings_per_fact"),
    ({"phrasings_per_fact": 99}, "phrasings_per_fact=99"),
    ({"facts_per_topic": 10**6}, "facts_per_topic=1000000"),
    ({"holdout_share": 1.0}, "holdout_share"),
    ({"holdout_share": -0.1}, "holdout_share"),
    ({"topics": ()}, "topics is empty"),
    ({"topics": ("addition", "algebra")}, "algebra"),
    ({"topics": "addition"}, "topics=('addition',)"),
    ({"topics": ("parity", "parity")}, "twice"),
    ({"seed": "0"}, "seed"),
])
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError) as e:
        MathsConfig(**kwargs)
    assert fragment in str(e.value)


def test_topics_and_templates():
    assert len(ALL_TOPICS) >= 12
    for required in ("addition", "subtraction", "multiplication", "division", "fractions", "shapes",
                     "time", "money", "measurement", "parity", "comparison", "place_value"):
        assert required in ALL_TOPICS
    for name in ALL_TOPICS:
        templates = TOPICS[name].templates
        assert len(templates) >= 4 and len(set(templates)) == len(templates)
        # far more facts exist than are drawn, so held-out facts are plentiful
        assert len(fact_space(name)) >= 3 * MathsConfig().facts_per_topic


# --- corpus ------------------------------------------------------------------------------

def test_same_config_same_corpus(corpus):
    again = build_maths_corpus(MathsConfig(seed=3, facts_per_topic=20, phrasings_per_fact=3,
                                           holdout_share=0.25))
    assert again == corpus
    other = build_maths_corpus(MathsConfig(seed=4, facts_per_topic=20, phrasings_per_fact=3,
                                           holdout_share=0.25))
    assert other.train != corpus.train


def test_adding_a_topic_keeps_the_others(corpus):
    only = build_maths_corpus(MathsConfig(seed=3, facts_per_topic=20, holdout_share=0.25,
                                          topics=("money",)))
    keys = {t.fact_key for t in corpus.train if t.topic == "money"}
    assert {t.fact_key for t in only.train} == keys


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 0.9])
def test_holdout_disjoint(share):
    c = build_maths_corpus(MathsConfig(seed=1, facts_per_topic=10, holdout_share=share))
    assert not c.train_fact_keys & c.heldout_fact_keys
    assert not {t.text for t in c.train} & {t.text for t in c.heldout}
    assert all(t.fact_key not in c.train_fact_keys for t in c.heldout)
    n_hold = int(share * 10 + 1e-9)
    assert len(c.heldout_fact_keys) == n_hold * len(ALL_TOPICS)
    assert len(c.train_fact_keys) == (10 - n_hold) * len(ALL_TOPICS)
    if share == 0.0:
        assert c.heldout == []


def test_every_topic_present(corpus):
    assert {t.topic for t in corpus.train} == set(ALL_TOPICS)
    assert {t.topic for t in corpus.heldout} == set(ALL_TOPICS)
    per_topic = defaultdict(set)
    for t in corpus.train + corpus.heldout:
        per_topic[t.topic].add(t.fact_key)
    assert all(len(keys) == SMALL.facts_per_topic for keys in per_topic.values())


def test_phrasings_per_fact_distinct(corpus):
    by_fact = defaultdict(list)
    for t in corpus.train + corpus.heldout:
        by_fact[t.fact_key].append(t.text)
    for texts in by_fact.values():
        assert len(texts) == SMALL.phrasings_per_fact
        assert len(set(texts)) == len(texts)
    # distinct templates, not just distinct strings
    for t in corpus.train[:60]:
        assert len(parse_all(t.text)) == 1


def test_false_statements_are_false_varied_and_seeded():
    texts = false_statements(SMALL, 600, seed=1)
    assert len(texts) == 600 and false_statements(SMALL, 600, seed=1) == texts
    assert false_statements(SMALL, 600, seed=2) != texts
    verdicts = [verify(t.text) for t in texts]
    assert all(v.status == "false" for v in verdicts)  # no true fact, held out or not
    assert all(t.fact_key is None for t in texts)
    assert {t.topic for t in texts} == set(SMALL.topics)
    assert len({t.text for t in texts}) > 550
    for t, v in zip(texts, verdicts):  # each is a real sentence of its topic, with a wrong claim
        assert v.topic == t.topic
    only = false_statements(MathsConfig(topics=("parity", "addition")), 50)
    assert {t.topic for t in only} == {"parity", "addition"}


def test_every_corpus_text_verifies_true(corpus):
    for t in corpus.train + corpus.heldout:
        assert isinstance(t, Text)
        assert verify(t.text) == Verdict("true", t.fact_key, t.topic), t.text


# --- verifier ----------------------------------------------------------------------------

TEMPLATE_CASES = [(name, i) for name in ALL_TOPICS for i in range(len(TOPICS[name].templates))]


def _variants(text: str) -> list[str]:
    return [text, text.upper(), text.lower(), text.rstrip("."), f"  {text}  ",
            text.replace(" ", "   "), text + "\n", text.rstrip(".") + "!"]


@pytest.mark.parametrize("name, index", TEMPLATE_CASES)
def test_template_round_trip(name, index):
    topic = TOPICS[name]
    facts = random.Random(f"test:{name}").sample(fact_space(name), 25)
    for params in facts:
        claim = topic.answer(params)
        wrong = topic.corrupt(params, claim)
        true_text = render(topic, index, params, claim)
        false_text = render(topic, index, params, wrong)
        assert parse_all(true_text) == [(name, index, params, claim)], true_text  # unambiguous
        for text in _variants(true_text):
            assert verify(text) == Verdict("true", topic.key(params, claim), name), text
        for text in _variants(false_text):
            assert verify(text) == Verdict("false", topic.key(params, wrong), name), text


@pytest.mark.parametrize("text, status, key", [
    ("3 plus 4 equals 8.", "false", "addition:3+4=8"),
    ("The sum of 3 and 4 is 7", "true", "addition:3+4=7"),
    ("5 minus 9 equals 0.", "false", "subtraction:5-9=0"),
    ("7 divided by 2 equals 3.", "false", "division:7/2=3"),
    ("5 divided by 0 equals 0.", "false", "division:5/0=0"),
    ("A triangle has 3 sides.", "true", "shapes:1*triangle.sides=3"),
    ("A square has 4 vertices.", "true", "shapes:1*square.corners=4"),
    ("There are 60 minutes in an hour.", "true", "time:1*hour=60*minute"),
    ("There are 3600 seconds in 1 hour.", "true", "time:1*hour=3600*second"),
    ("2 quarters make 50 cents.", "true", "money:2*quarter=50*cent"),
    ("100 centimetres make 1 metre.", "true", "measurement:1*meter=100*centimeter"),
    ("7 can't be split into 2 equal groups.", "true", "parity:7=odd"),
    ("3 is smaller than 5.", "true", "comparison:3<5"),
    ("9 is greater than 9.", "false", "comparison:9>9"),
    ("The units digit of 47 is 7.", "true", "place_value:47.ones=7"),
    ("2/4 of 8 is 4.", "true", "fractions:2/4*8=4"),
    ("3 plus 4 equals 0007.", "true", "addition:3+4=7"),  # leading zeros read as the number
])
def test_verify_examples(text, status, key):
    got = verify(text)
    assert (got.status, got.fact_key) == (status, key)


@pytest.mark.parametrize("text", [
    "", " ", ".", "hello world", "3 plus 4 equals", "plus 4 equals 7", "3 plus 4 equals seven.",
    "3 plus 4 equals 7.5.", "3 plus -4 equals -1.", "The sum of 3 and 4", "3 + 4 = 7",
    "There are 365 days in 1 year.",  # not a fixed conversion: no verdict
    "When you divide 7 by 2, the remainder is 5.", "A circle has 0 sides.",
    "3 plus 4 equals 7. 3 plus 4 equals 7.", "3 plus 4 equals 7 and more",
])
def test_unparseable(text):
    assert verify(text) == Verdict("unparseable", None, None)


HOSTILE = [
    "\x00", "\x00" * 1000, "3 plus 4\x00 equals 7.", "\u202e3 plus 4 equals 7", "\ud800",
    "\udfff\ud800",
    "🙂" * 500, "٣ plus ٤ equals ٧.", "３ plus ４ equals ７.", "a" * 1_000_000, "9" * 5000,
    "3 plus 4 equals " + "9" * 5000, "3 plus " * 20000, " " * 100_000, "\n" * 10_000,
    "\t\r\x0b\x0c",
    "{a} plus {b} equals {c}.", "(?P<a>.*)", "\\d+ plus \\d+", "İ" * 10_000, "ß" * 10_000,
    "".join(chr(i) for i in range(0, 0x3000, 7)), "1/0 of 5 is 0.", "0/0 of 0 is 0.",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_verify_never_raises(text, caplog):
    got = verify(text)
    assert not caplog.records  # no exception was swallowed either
    assert got.status in ("true", "false", "unparseable")
    if got.status == "unparseable":
        assert got.fact_key is None and got.topic is None


@pytest.mark.parametrize("value", [None, 7, b"3 plus 4 equals 7.", ["3 plus 4 equals 7."]])
def test_verify_non_string(value):
    assert verify(value).status == "unparseable"


# --- user corpora ------------------------------------------------------------------------

def test_load_txt(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("  first text \n\n\t\nsecond\r\n3 plus 4 equals 7.\n", encoding="utf-8")
    assert load_corpus(p) == [Text("first text", "default"), Text("second", "default"),
                              Text("3 plus 4 equals 7.", "default")]


def test_load_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    lines = [{"text": " a ", "topic": "x"}, {"text": "b"}, {"text": "c", "topic": None, "id": 3}]
    p.write_text("\n".join(json.dumps(r) for r in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n",
                 encoding="utf-8")
    texts = load_corpus(str(p))
    assert texts == [Text("a", "x"), Text("b", "default"), Text("c", "default")]
    assert all(t.fact_key is None for t in texts)


def test_load_utf8_bom_and_unicode(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("\ufeffcafé ½\n".encode("utf-8"))
    assert load_corpus(p) == [Text("café ½", "default")]


# (file name, bytes written or None for none / "DIR" for a folder, fragments the message must hold)
LOAD_ERRORS = {
    "missing": ("nope.txt", None, ["nope.txt", "does not exist"]),
    "folder": ("dir.txt", "DIR", ["dir.txt", "folder"]),
    "extension": ("c.csv", b"a,b\n", ["c.csv", ".txt", ".jsonl"]),
    "no_extension": ("corpus", b"a\n", ["corpus", ".txt", ".jsonl"]),
    "not_utf8": ("c.txt", b"ok\ncaf\xe9\n", ["c.txt", "UTF-8", "line 2"]),
    "binary": ("c.txt", bytes(range(128, 256)), ["c.txt", "UTF-8"]),
    "empty": ("c.txt", b"", ["c.txt", "no texts"]),
    "blank_only": ("c.jsonl", b"\n  \n\t\n", ["c.jsonl", "no texts"]),
    "nul": ("c.txt", b"one\ntw\x00o\n", ["c.txt", "NUL", "line 2"]),
    "bad_json": ("c.jsonl", b'{"text": "a"}\n{"text": \n', ["c.jsonl", "line 2", "invalid JSON"]),
    "deep_json": ("c.jsonl", b"[" * 100_000, ["c.jsonl", "line 1", "invalid JSON"]),
    "not_object": ("c.jsonl", b'["a"]\n', ["c.jsonl", "line 1", "JSON object"]),
    "no_text": ("c.jsonl", b'{"text": "a"}\n\n{"topic": "x"}\n', ["c.jsonl", "line 3", '"text"']),
    "text_not_str": ("c.jsonl", b'{"text": 5}\n', ["c.jsonl", "line 1", '"text"']),
    "text_empty": ("c.jsonl", b'{"text": "  "}\n', ["c.jsonl", "line 1", "empty"]),
    "topic_not_str": ("c.jsonl", b'{"text": "a", "topic": 1}\n', ["c.jsonl", "line 1", '"topic"']),
    "too_long_txt": ("c.txt", b"ok\n" + b"x" * 2001 + b"\n", ["c.txt", "line 2", "2001", "2000"]),
    "too_long_jsonl": ("c.jsonl", json.dumps({"text": "y" * 2500}).encode(),
                       ["line 1", "2500", "2000"]),
}


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_load_errors(tmp_path, case):
    name, content, fragments = LOAD_ERRORS[case]
    p = tmp_path / name
    if content == "DIR":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(CorpusError) as e:
        load_corpus(p)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_load_unreadable(tmp_path, monkeypatch):
    p = tmp_path / "c.txt"
    p.write_text("a\n", encoding="utf-8")
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):  # root reads anything: simulate the OS refusing instead
            def refuse(self):
                raise PermissionError(13, "Permission denied", str(self))
            monkeypatch.setattr(Path, "read_bytes", refuse)
        with pytest.raises(CorpusError, match="permission denied.*chmod"):
            load_corpus(p)
    finally:
        p.chmod(0o644)


def test_load_max_chars(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abcde\n", encoding="utf-8")
    assert load_corpus(p, max_chars=5) == [Text("abcde", "default")]
    with pytest.raises(CorpusError, match="5 characters, over the limit of 4"):
        load_corpus(p, max_chars=4)
    with pytest.raises(ValueError, match="max_chars"):
        load_corpus(p, max_chars=0)


def test_corpus_error_is_value_error():
    assert issubclass(CorpusError, ValueError)


# --- the domain interface ------------------------------------------------------------------

def test_registry_names_the_built_in_domains_and_refuses_others():
    from common.errors import ConfigError
    from domains import MathsDomain, TextDomain, domain_names, get_domain

    from domains.molecules.domain import MoleculesDomain

    assert domain_names()[:3] == ("maths", "text", "molecules")
    assert isinstance(get_domain("maths"), MathsDomain) and isinstance(get_domain("text"), TextDomain)
    assert isinstance(get_domain("molecules"), MoleculesDomain)
    with pytest.raises(ConfigError, match="unknown domain 'chem'.*maths, molecules, text"):
        get_domain("chem")


def test_domain_setting_defaults_by_corpus_and_is_checked():
    from loop.config import ConfigError, build_config

    assert build_config().corpus.domain_name == "maths"
    assert build_config({}, {"corpus.path": "x.txt"}).corpus.domain_name == "text"
    assert build_config({}, {"corpus.path": "x.txt", "corpus.domain": "maths"}).corpus.domain_name == "maths"
    with pytest.raises(ConfigError, match="corpus.domain 'poems' is not a domain"):
        build_config({}, {"corpus.domain": "poems"})


def test_maths_domain_splits_as_the_loop_always_did():
    """Built-in corpus: train/eval by whole fact groups (seed + 1), knowledge = the held-out true facts."""
    from domains import get_domain, split_eval
    from loop.config import build_config

    cfg = build_config({}, {"maths.facts_per_topic": 10})
    d = get_domain("maths").load(cfg.corpus, 0)
    mc = build_maths_corpus(MathsConfig(seed=0, facts_per_topic=10))
    train, ev = split_eval(list(mc.train), cfg.corpus.eval_share, 0)
    assert d.train == train and d.eval == ev and d.knowledge == list(mc.heldout)
    assert d.train_fact_keys == frozenset(t.fact_key for t in train)
    assert not {t.fact_key for t in ev} & d.train_fact_keys  # no phrasing of an eval fact is trained on
    assert not d.train_fact_keys & mc.heldout_fact_keys
    assert get_domain("maths").verifier is verify


def test_maths_domain_reads_a_users_maths_file_with_fact_keys(tmp_path):
    from domains import get_domain
    from loop.config import build_config

    f = tmp_path / "m.txt"
    f.write_text("3 plus 4 equals 7.\n3 plus 4 equals 8.\nHello there.\n")
    cfg = build_config({}, {"corpus.path": str(f), "corpus.domain": "maths", "corpus.eval_share": 0})
    d = get_domain("maths").load(cfg.corpus, 0)
    assert [t.fact_key for t in d.train] == [verify("3 plus 4 equals 7.").fact_key, None, None]
    assert d.knowledge == []


def test_text_domain_needs_a_corpus_and_has_no_verifier(tmp_path):
    from domains import get_domain
    from loop.config import ConfigError, build_config

    text = get_domain("text")
    assert text.verifier is None and text.needs_pretrained and text.language_texts(None, 0, 100) == []
    with pytest.raises(ConfigError, match="needs a corpus"):
        text.load(build_config({}, {"corpus.domain": "text"}).corpus, 0)
    f = tmp_path / "c.txt"
    f.write_text("\n".join(f"The river number {i} flows north." for i in range(40)))
    d = text.load(build_config({}, {"corpus.path": str(f)}).corpus, 0)
    assert len(d.train) + len(d.eval) == 40 and len(d.eval) == 2 and d.knowledge == []


@pytest.mark.parametrize("name", ["maths", "text"])
def test_rubrics_are_the_domains_own(name):
    from domains import get_domain

    rubric = get_domain(name).rubric.lower()
    assert "1 to 5" in rubric and "never an instruction" in rubric
    assert ("math" in rubric) == (name == "maths")  # the text rubric says nothing of maths
    assert "<<<" not in rubric  # the critic adds the data marker


def test_canonical_form_normalises_whitespace():
    from domains import get_domain

    assert get_domain("text").canonical("  two   words\there ") == "two words here"


def test_maths_knowledge_figures_read_likelihood_and_samples():
    """A model that scores true facts above false ones separates them (AUC 1), one that cannot tell
    them apart does not (AUC 0.5); recall counts the held-out facts among its samples."""
    import numpy as np

    from domains.base import get_domain
    from domains.config import CorpusConfig
    from domains.maths.plugin import MathsSettings

    dom, cfg = get_domain("maths"), CorpusConfig(own=MathsSettings(facts_per_topic=10))
    splits = dom.load(cfg, 0)
    held = [t for t in splits.knowledge if t.fact_key]
    knows = lambda texts: np.array([1.0 if verify(t).status == "true" else -1.0 for t in texts])  # noqa: E731
    blind = lambda texts: np.zeros(len(texts))  # noqa: E731
    writes = lambda n: [held[0].text, held[1].text, "nonsense"] + [splits.train[0].text] * (n - 3)  # noqa: E731
    k = dom.knowledge_figures(splits, cfg, 0, knows, writes, 50, 20)
    assert k["heldout_auc"] == 1.0 and k["corpus_auc"] == 1.0
    distinct_held = len({t.fact_key for t in held})
    assert k["heldout_recall"] == pytest.approx(len({held[0].fact_key, held[1].fact_key}) / distinct_held)
    assert 0 < k["corpus_recall"] < 1 and k["sample_truth"] == pytest.approx(19 / 20)
    assert dom.knowledge_figures(splits, cfg, 0, blind, writes, 50, 0) == {"heldout_auc": 0.5, "corpus_auc": 0.5}
    assert dom.knowledge_figures(splits, cfg, 0, knows, writes, 0, 0) == {}


def test_a_domains_own_settings_are_written_under_its_name():
    """maths.KEY / molecules.KEY reach the domain as `cfg.own`; the older corpus.KEY spelling (commands and
    run folders of older versions, which stored every domain's fields) reads the same; another domain's
    setting, an unknown key or a bad value is refused in one line."""
    from common.errors import ConfigError
    from domains.config import stored_corpus
    from loop.config import build_config

    new = build_config({"maths": {"facts_per_topic": 10}})
    assert new.corpus.own.facts_per_topic == 10 and new.to_dict()["maths"]["facts_per_topic"] == 10
    assert "facts_per_topic" not in new.to_dict()["corpus"]
    old = build_config(None, {"corpus.facts_per_topic": "10", "corpus.max_texts": 0, "corpus.knowledge_texts": 1000})
    assert old.result_hash() == new.result_hash()
    stored = {**new.to_dict()["corpus"], "facts_per_topic": 10, "phrasings_per_fact": 3, "holdout_share": 0.2,
              "max_texts": 0, "eval_texts": 1000, "knowledge_texts": 1000}  # an older run folder's corpus section
    assert build_config({"corpus": stored}).result_hash() == new.result_hash()
    assert stored_corpus({"corpus": stored}).own == new.corpus.own == stored_corpus(new.to_dict()).own
    mol = build_config(None, {"corpus.domain": "molecules", "corpus.max_texts": "500"})
    assert mol.corpus.own.max_texts == 500 and mol.to_dict()["molecules"]["max_texts"] == 500
    for overrides, needle in [({"molecules.max_texts": 5}, "belongs to the molecules domain, and this run's domain is maths"),
                              ({"maths.facts_per_topc": 5}, "did you mean 'facts_per_topic'"),
                              ({"maths.facts_per_topic": 0}, "maths.facts_per_topic must be >= 1"),
                              ({"corpus.domain": "text", "text.x": 1}, "the text domain has no settings of its own"),
                              ({"corpus.own": "x"}, "write them as maths.KEY=VALUE")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            build_config(None, overrides)


def test_edits_step_away_and_stay_texts_of_the_domain(corpus):
    """Domain.edit: k random edits a text, seeded. Maths keeps the template (the verifier still
    parses nearly every edit) and changes numbers only; the default swaps whitespace words (one-word
    texts: characters) for ones of the given texts."""
    from domains import get_domain

    maths = get_domain("maths")
    texts = [t.text for t in corpus.train[:200]]
    once = maths.edit(texts, 1, seed=0)
    assert once == maths.edit(texts, 1, seed=0) and once != maths.edit(texts, 1, seed=1)
    # nearly all still parse: a slot with one fixed value (parity's "2 equal groups") does not take another
    assert sum(verify(e).status != "unparseable" for e in once) >= 0.95 * len(texts)
    numbers = re.compile(r"\d+")
    for src, e in zip(texts, once):
        assert numbers.sub("#", src) == numbers.sub("#", e)  # the same sentence around its numbers
        assert sum(a != b for a, b in zip(numbers.findall(src), numbers.findall(e))) <= 1
    assert sum(e != s for e, s in zip(once, texts)) > len(texts) // 2
    assert sum(verify(e).status == "false" for e in once) > len(texts) // 2  # another claim, mostly untrue

    text = get_domain("text")
    words = ["the cat sat on the mat", "dogs bark at night", "a bird sings"]
    pool = {w for t in words for w in t.split()}
    for src, e in zip(words, text.edit(words, 2, seed=3)):
        assert len(e.split()) == len(src.split()) and set(e.split()) <= pool
        assert sum(a != b for a, b in zip(src.split(), e.split())) <= 2
    one_word = ["CCO", "c1ccccc1", "CC(=O)O"]
    chars = {c for t in one_word for c in t}
    for src, e in zip(one_word, text.edit(one_word, 1, seed=3)):
        assert len(e) == len(src) and set(e) <= chars and sum(a != b for a, b in zip(src, e)) <= 1
