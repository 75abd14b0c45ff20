"""A SMILES-aware tokenizer: one token per atom, bond, ring digit, branch or bracket atom.

Byte-level BPE merges SMILES characters arbitrarily ("Cl" may split, "c1cc" may merge), so
the model must learn chemistry and spelling at once. The regular expression of Schwaller et
al. 2019 (Molecular Transformer) splits a SMILES into its grammatical units: bracket atoms
whole ("[nH]", "[C@@H]"), two-letter halogens, aromatic atoms, bonds, branches, ring
closures ("%12" as one token). The vocabulary is the units seen in the corpus plus
specials; a unit never seen maps to <unk>. Saved and loaded as a Hugging Face fast
tokenizer, so a base model trained with it goes through the same `save_pretrained` /
`from_pretrained` path as any other.
"""
from __future__ import annotations

import re
from collections import Counter

SMILES_PATTERN = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$"
                  r"|%[0-9]{2}|[0-9])")
_SMILES_RE = re.compile(SMILES_PATTERN)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def smiles_tokens(smiles: str) -> list[str]:
    """The SMILES units of `smiles`; characters outside the grammar are dropped by the regex,
    so a caller that needs exactness compares "".join(tokens) with the input."""
    return _SMILES_RE.findall(smiles)


def train_smiles_tokenizer(texts: list[str], vocab_size: int | None = None):
    """A word-level fast tokenizer over the SMILES units of `texts`. `vocab_size` is ignored
    (the units decide the vocabulary: about 30-60 for drug-like molecules); kept so that the
    signature matches `lm.base_model.train_tokenizer` (Domain.train_tokenizer)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # lazy: tokenizers start-up, not needed to read a run's settings
    from transformers import PreTrainedTokenizerFast  # lazy: transformers start-up, not needed to read a run's settings

    counts = Counter(tok for t in texts for tok in smiles_tokens(t))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for unit in sorted(counts):
        vocab.setdefault(unit, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()  # units join with no separator: decode(encode(s)) == s
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
