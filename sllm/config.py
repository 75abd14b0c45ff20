"""Settings of the SLLM (sentence-level autoencoder) and its training."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import check as _check


ENCODER_INPUTS = ("embeddings", "hidden")
# Settings that say how long, how fast and on which extra texts an SLLM trains, not what it is: an
# SLLM may start from another one (`init`) that differs in these alone.
TRAINING_ONLY = ("epochs", "continue_epochs", "lr", "batch_size", "init", "false_texts", "texts_file", "compile")


@dataclass
class SLLMConfig:
    latent_dim: int = 256  # larger than the base model's hidden size by default, as the idea asks
    # K soft-prompt vectors the decoder emits from the one latent. More slots give the frozen base
    # model one to attend to per output position (ICAE, Ge et al. 2023, uses 128); docs/research-log.md
    # has the search.
    n_prompt: int = 32
    # What the encoder reads: "embeddings" (the base model's input embeddings of the text) or
    # "hidden" (those, concatenated with the frozen base model's last hidden states).
    encoder_input: str = "hidden"
    enc_layers: int = 2
    enc_heads: int = 4
    enc_dim: int = 128
    pool_queries: int = 8  # attention-pooling queries concatenated into the latent
    max_tokens: int = 48  # texts longer than this are truncated for the SLLM
    meaning_weight: float = 1.0  # weight of the sentence-embedding prediction term
    # Paraphrase InfoNCE (needs fact keys): phrasings of one fact against look-alike texts, in
    # batches of their own (sllm.train.HardNegatives), so that phrasings of one fact lie closer than
    # near misses; a larger weight buys closeness with round-trip accuracy (docs/research-log.md).
    paraphrase_weight: float = 0.01
    paraphrase_tau: float = 0.05  # InfoNCE temperature (cosine similarities / tau)
    latent_l2: float = 1e-3  # keeps the latent cloud in a known envelope
    # Weight of the prompt-copy term (sllm.train.prompt_copy_error): the soft prompts should spell the
    # text's own token embeddings, right-aligned in the K slots, which the base model's pretrained copy
    # mechanism then reproduces. 0 = off (the built-in domain reaches its round trip without it).
    prompt_copy_weight: float = 0.0
    # How many of the domain's language texts (Domain.language_texts; maths: verifier-checked FALSE
    # sentences) join the SLLM's training texts. They teach the domain's language (any numbers in
    # any template) and carry no true fact, so no held-out truth leaks; the corpus alone is too
    # small to learn a round trip that generalises. A domain without them ignores this.
    false_texts: int = 16000
    # A file of more texts (.txt, one a line, or .jsonl) the SLLM trains on beside the corpus in every
    # generation; the base model, the map and novelty never see them (the knowledge holdout's NN2
    # learns part A of the held-out set this way). "" = none.
    texts_file: str = ""
    # Rank of the decoder adapter (sllm.adapter): a LoRA on every linear layer of the frozen base
    # model, trained with the SLLM and active only while decoding from a latent. 0 = none: the latent
    # reaches the base model as input soft prompts alone, which measured worse on both built-in
    # domains (docs/sllm.md: held-out exact match higher on each of 3 training seeds on maths).
    decoder_lora_r: int = 16
    # Per-layer latent injection: P key/value slots in every attention layer of the base model, made
    # from z (prefix tuning, Li & Liang 2021; Optimus's latent memory; 500xCompressor's KV values), on
    # top of the soft prompts. 0 = off. Only the transformers backend decodes it: vLLM takes no
    # key/value cache from a client.
    kv_prefix: int = 0
    # Word dropout (Bowman et al. 2016): the share of teacher-forced input tokens (BOS aside) whose
    # embedding is zeroed in training, so that the decoder must read the latent to fill them in.
    word_dropout: float = 0.0
    # Off-manifold cycle term (sllm.train.cycle_loss): every `cycle_every` steps, `cycle_batch` latents
    # drawn from N(0, I) are decoded greedily and the encoder is pulled to map each decode back to its
    # latent, so that a dark latent's decode stays where it was decoded from. 0 = off.
    cycle_weight: float = 0.0
    cycle_every: int = 10
    cycle_batch: int = 32
    # Variational latent (Kingma & Welling 2014; Bowman et al. 2016 for text): the encoder also gives a
    # per-dimension log-variance, training decodes z = mu + sigma * eps, and a KL term (in nats per
    # target token, so that 1.0 is the per-token ELBO) pulls sigma towards the prior's 1, so that
    # dimensions the decoder does not need fill with noise and a latent drawn from N(0, I) looks to
    # the decoder like one it was trained on. The latent of a text stays mu. 0 = a plain autoencoder.
    kl_weight: float = 0.0
    epochs: int = 5
    continue_epochs: int = 1  # epochs per later generation (continued training)
    # An SLLM folder (a run's gen-NNN/sllm) that generation 0 starts from instead of a fresh SLLM, then
    # trains `epochs` more (the holdout experiment's NN2: NN1 continued). Its settings must equal
    # these but for the training budget (TRAINING_ONLY). "" = a fresh SLLM.
    init: str = ""
    lr: float = 1e-3
    batch_size: int = 64  # performance knob
    # Train through torch.compile (inductor): the base model's forward and backward become fused
    # kernels, which on a CPU spares the many small elementwise passes of a 128-wide model (about a
    # sixth of a molecules step, docs/sllm.md) for a minute of compiling first; needs a C++ compiler.
    # The weights and the result are those of the eager training, up to float rounding.
    compile: bool = False

    def __post_init__(self):
        for k in ("latent_dim", "n_prompt", "enc_layers", "enc_heads", "enc_dim", "pool_queries", "max_tokens", "epochs", "batch_size"):
            _check(getattr(self, k) >= 1, f"sllm.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.encoder_input in ENCODER_INPUTS,
               f"sllm.encoder_input must be one of {', '.join(ENCODER_INPUTS)}, got {self.encoder_input!r}")
        _check(self.false_texts >= 0, f"sllm.false_texts must be >= 0, got {self.false_texts}")
        _check(self.kv_prefix >= 0, f"sllm.kv_prefix must be >= 0, got {self.kv_prefix}")
        _check(self.decoder_lora_r >= 0, f"sllm.decoder_lora_r must be >= 0, got {self.decoder_lora_r}")
        _check(self.cycle_every >= 1 and self.cycle_batch >= 2,
               f"sllm.cycle_every must be >= 1 and sllm.cycle_batch >= 2, got {self.cycle_every}, {self.cycle_batch}")
        _check(0 <= self.word_dropout < 1, f"sllm.word_dropout must be in [0, 1), got {self.word_dropout}")
        _check(self.continue_epochs >= 0, f"sllm.continue_epochs must be >= 0, got {self.continue_epochs}")
        _check(self.enc_dim % self.enc_heads == 0, f"sllm.enc_dim ({self.enc_dim}) must be divisible by sllm.enc_heads ({self.enc_heads})")
        for k in ("meaning_weight", "paraphrase_weight", "latent_l2", "prompt_copy_weight", "cycle_weight", "kl_weight"):
            _check(getattr(self, k) >= 0, f"sllm.{k} must be >= 0, got {getattr(self, k)}")
        _check(self.lr > 0, f"sllm.lr must be > 0, got {self.lr}")
        _check(self.paraphrase_tau > 0, f"sllm.paraphrase_tau must be > 0, got {self.paraphrase_tau}")
