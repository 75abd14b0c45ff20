"""Settings of the self-trained base model and of LoRA retraining."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import check as _check


@dataclass
class BaseConfig:
    model: str | None = None  # local HF causal-LM folder or hub id; None = train a small one
    # The embedded default: a small Llama-architecture LM trained from scratch on the corpus.
    vocab_size: int = 1024
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    max_len: int = 512
    pack_len: int = 96  # tokens per packed pretraining sequence
    epochs: int = 30
    # Copy units per epoch: a text and its verbatim repeat, loss on the repeat only, drawn from the
    # SLLM's language texts (built-in domain) or the corpus. They give the small model the in-context
    # copying that pretrained LMs have and that soft prompts drive (see pack_sequences); without
    # them the small model paraphrases instead of copying (docs/research-log.md).
    copy_units: int = 2000
    # The copy units are drawn from the first copy_pool of those texts (0: all of them).
    copy_pool: int = 8000
    lr: float = 3e-3
    batch_size: int = 32  # performance knob
    # Texts the base model pretrains on beyond the corpus, drawn by the domain from what it holds
    # besides (molecules: more MOSES training molecules); the SLLM, the map and novelty never see
    # them. 0: the corpus alone. On molecules, 8x the molecules at the same steps changed neither
    # held-out perplexity nor validity (docs/molecules.md).
    extra_texts: int = 0

    def __post_init__(self):
        for k in ("vocab_size", "hidden", "layers", "heads", "max_len", "pack_len", "epochs", "batch_size"):
            _check(getattr(self, k) >= 1, f"base.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.copy_units >= 0, f"base.copy_units must be >= 0, got {self.copy_units}")
        _check(self.copy_pool >= 0, f"base.copy_pool must be >= 0, got {self.copy_pool}")
        _check(self.extra_texts >= 0, f"base.extra_texts must be >= 0, got {self.extra_texts}")
        _check(self.hidden % self.heads == 0, f"base.hidden ({self.hidden}) must be divisible by base.heads ({self.heads})")
        _check(self.lr > 0, f"base.lr must be > 0, got {self.lr}")


@dataclass
class RetrainConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    epochs: int = 2
    lr: float = 2e-3
    replay_texts: int = 512  # real corpus texts replayed beside the accepted ones
    batch_size: int = 32  # performance knob
    # What the next base model and SLLM learn from: "accepted" (the loop), or "corpus": as many
    # corpus texts as were accepted, drawn afresh, in their place. The control for "more training"
    # (the same fine-tuning steps, no generated text), as the generations experiment's replay.
    source: str = "accepted"

    def __post_init__(self):
        _check(self.lora_r >= 1, f"retrain.lora_r must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha >= 1, f"retrain.lora_alpha must be >= 1, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, f"retrain.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check(self.epochs >= 0, f"retrain.epochs must be >= 0, got {self.epochs}")
        _check(self.lr > 0, f"retrain.lr must be > 0, got {self.lr}")
        _check(self.replay_texts >= 0, f"retrain.replay_texts must be >= 0, got {self.replay_texts}")
        _check(self.batch_size >= 1, f"retrain.batch_size must be >= 1, got {self.batch_size}")
        _check(self.source in ("accepted", "corpus"),
               f"retrain.source must be accepted or corpus, got {self.source!r}")
