"""Built-in domain: elementary-school mathematics facts, generated and verified.

Each topic has a fact space (every fact it can state), a true answer per fact, and
sentence templates. Generation fills a template with a fact's values; verification is the
exact inverse: each template compiles to one anchored regex, the matched slots are read back
into (fact, claimed answer), and the claim is checked by arithmetic. Because every phrasing
of a fact reads back to the same canonical `fact_key`, phrasings are paraphrase pairs.

topics: the fact spaces and templates; language: rendering and the verifier; corpus: the
built-in corpus and false statements; plugin: the domain.
"""
from domains.maths.corpus import MathsConfig, MathsCorpus, build_maths_corpus, false_statements, heldout_per_topic
from domains.maths.language import parse_all, render, verify
from domains.maths.plugin import RUBRIC, MathsDomain
from domains.maths.topics import ALL_TOPICS, TOPICS, fact_space

__all__ = ["ALL_TOPICS", "RUBRIC", "TOPICS", "MathsConfig", "MathsCorpus", "MathsDomain", "build_maths_corpus",
           "fact_space", "false_statements", "heldout_per_topic", "parse_all", "render", "verify"]
