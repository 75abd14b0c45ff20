"""The base language model: load any local Hugging Face causal LM, or train a small one.

The embedded default trains a byte-level BPE tokenizer and a small Llama-architecture model
from scratch on the corpus, saves both with `save_pretrained`, and reloads them through
`load_base_model`, the same code path a user's model takes. Everything downstream uses
`get_input_embeddings()` and `inputs_embeds`, never one family's attribute names.
"""
from __future__ import annotations

import gc
import logging
import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm

from common.errors import ModelError
from lm import distributed
from lm.config import BaseConfig

log = logging.getLogger(__name__)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on the corpus: decodes back to the exact text, any input encodes.

    Numbers are split into single digits (as LLaMA's tokenizer does): BPE merges of digits are
    arbitrary ("336" -> "33" + "6", "914" -> "9" + "14"), so a number never seen whole has no
    regular form, while digits compose. The SLLM round trip of held-out texts depends on it.
    """
    from transformers import PreTrainedTokenizerFast  # lazy: transformers start-up, not needed for --help

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=False), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=None
    )


def build_small_lm(tokenizer, cfg: BaseConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy: transformers start-up, not needed for --help

    torch.manual_seed(seed)
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.hidden * 2,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(mcfg)


def encode_texts(tokenizer, texts: list[str], max_len: int, add_eos: bool = True) -> list[list[int]]:
    """Token ids of each text: BOS + text (+ EOS), truncated to max_len."""
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        ids = [tokenizer.bos_token_id] + ids + ([tokenizer.eos_token_id] if add_eos else [])
        out.append(ids[:max_len])
    return out


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to (B, T) ids and attention mask."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def kv_shape(model) -> tuple[int, int, int]:
    """(layers, key/value heads, head width) of a decoder's attention: what a key/value prefix fills."""
    c = model.config.get_text_config(decoder=True)
    heads = c.num_attention_heads
    return (c.num_hidden_layers, getattr(c, "num_key_value_heads", None) or heads,
            getattr(c, "head_dim", None) or c.hidden_size // heads)


def prefix_cache(model, kv: torch.Tensor):
    """kv (layers, 2, B, kv_heads, P, head_dim) -> a cache holding it as P past positions of every
    layer (as prefix tuning does): the model attends to them as to earlier tokens, and gradients
    flow back into kv."""
    from transformers import DynamicCache  # lazy: transformers start-up, not needed for --help

    return DynamicCache(ddp_cache_data=[(kv[i, 0], kv[i, 1]) for i in range(kv.shape[0])], config=model.config)


def generate_inputs(model, embeds: torch.Tensor, kv: torch.Tensor | None = None) -> dict:
    """`generate` keyword arguments for input embeddings (B, L, E), after a key/value prefix when
    `kv` is given. `generate` counts cached positions as part of its input and feeds only what the
    cache does not hold, so P placeholder rows stand for the prefix (never read)."""
    B, L, _ = embeds.shape
    if kv is None:
        return {"inputs_embeds": embeds, "attention_mask": torch.ones(B, L, dtype=torch.long, device=embeds.device)}
    P = kv.shape[4]
    return {"inputs_embeds": torch.cat([embeds.new_zeros(B, P, embeds.shape[2]), embeds], 1),
            "attention_mask": torch.ones(B, P + L, dtype=torch.long, device=embeds.device),
            "past_key_values": prefix_cache(model, kv.to(embeds.dtype))}


def pack_sequences(enc: list[list[int]], groups: list[str | None] | None, max_len: int,
                   rng: random.Random, repeat_share: float = 0.5, copy_enc: list[list[int]] | None = None,
                   copy_units: int = 0) -> list[tuple[list[int], list[int]]]:
    """Packed pretraining sequences in which related texts sit side by side: (ids, labels) rows,
    labels -100 where no loss is taken. `enc` and `copy_enc` are token ids (`encode_texts`).

    A model trained on isolated sentences never learns to read context before a sentence,
    and then no soft prompt can steer it (measured here: even free per-text prompts stayed at
    the unconditional loss). So, as in In-Context Pretraining (Shi et al., 2023), the phrasings
    of one fact are packed together, and a share of texts is followed by a verbatim repeat,
    which trains the copy (induction) mechanism that soft prompts later drive.

    `copy_units` more units are drawn from `copy_enc` (at most one each): a text and its verbatim
    repeat, with the loss on the repeat only. They teach the copy mechanism on many more numbers
    and phrasings than the corpus has, without teaching the texts themselves (the built-in domain
    passes verifier-checked false sentences here). Measured on the built-in corpus: verbatim
    copies of held-out texts went from 0% (paraphrase units alone) to 95% (docs/research-log.md).
    """
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups if groups is not None else [None] * len(enc)):
        by_group.setdefault(g if g is not None else f"#{i}", []).append(i)
    units: list[tuple[list[int], list[int]]] = []
    for members in by_group.values():
        members = members[:]
        rng.shuffle(members)
        if rng.random() < repeat_share:
            members.append(members[0])
        ids = [t for i in members for t in enc[i]]
        units.append((ids, ids))
    if copy_enc and copy_units > 0:
        for i in rng.sample(range(len(copy_enc)), min(copy_units, len(copy_enc))):
            x = copy_enc[i]
            if 2 * len(x) <= max_len:  # a repeat that does not fit would be a unit with no loss
                units.append((x + x, [-100] * len(x) + x))
    rng.shuffle(units)
    seqs: list[tuple[list[int], list[int]]] = []
    cur: list[int] = []
    lab: list[int] = []
    for ids, labels in units:
        if cur and len(cur) + len(ids) > max_len:
            seqs.append((cur, lab))
            cur, lab = [], []
        cur, lab = (cur + ids)[:max_len], (lab + labels)[:max_len]
    if cur:
        seqs.append((cur, lab))
    return seqs


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    labels = ids.masked_fill(mask == 0, -100) if labels is None else labels.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def train_lm(model, tokenizer, texts: list[str], epochs: int, lr: float, batch_size: int, seed: int,
             max_len: int = 128, desc: str = "base", params=None, pack_groups: list[str | None] | None = None,
             pack: bool = False, copy_texts: list[str] | None = None, copy_units: int = 0) -> list[float]:
    """Causal-LM training; returns the mean loss per epoch.

    pack=False trains on whole texts one per row (LoRA retraining); pack=True on packed
    sequences of related texts and copy units (pretraining from scratch, see `pack_sequences`),
    re-packed each epoch.

    Under torchrun (lm.distributed): every rank packs and shuffles the same rows from the shared
    seed and takes its share of each global batch of `batch_size` rows; its loss is its tokens'
    sum over the global batch's token count (times the world size), so DistributedDataParallel's
    average gradient is one process's on the same batch (float rounding aside; dropout masks,
    drawn per rank, differ from one process's).
    """
    distributed.init()
    device = next(model.parameters()).device
    rng = random.Random(seed)
    enc = encode_texts(tokenizer, texts, max_len)  # once: packing re-draws units every epoch
    copy_enc = encode_texts(tokenizer, copy_texts, max_len) if pack and copy_texts and copy_units > 0 else []

    def rows():
        if pack:
            return pack_sequences(enc, pack_groups, max_len, rng, copy_enc=copy_enc, copy_units=copy_units)
        return [(ids, ids) for ids in enc]

    seqs = rows()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = max(1, epochs * math.ceil(len(seqs) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    several = distributed.world() > 1
    net = distributed.wrap(model)  # DDP over the trainable weights (all used every step); `model` alone in one process
    losses = []
    done = 0  # not bar.n: a disabled bar (TQDM_DISABLE) counts nothing
    with tqdm(total=steps, desc=desc, unit="step", leave=False, mininterval=2,
              **({} if distributed.is_main() else {"disable": True})) as bar:
        for epoch in range(epochs):
            if pack and epoch > 0:  # re-packing can give more rows than the first epoch's count
                seqs = rows()
            order = list(range(len(seqs)))
            rng.shuffle(order)
            tot, n = 0.0, 0
            for i in range(0, len(order), batch_size):
                if done >= steps:
                    break
                done += 1
                batch = [seqs[j] for j in order[i : i + batch_size]]
                sh = distributed.share(len(batch))
                mine = batch if sh is None else sh.take(batch)
                ids, mask = pad_batch([r[0] for r in mine], tokenizer.pad_token_id)
                labels, _ = pad_batch([r[1] for r in mine], -100)
                if sh is None:
                    loss = lm_loss(model, ids.to(device), mask.to(device), labels.to(device))
                else:  # this rank's sum over the global batch's target tokens (the labels after the first)
                    count = max(1, sum(1 for r in batch for lab in r[1][1:] if lab != -100))
                    labels = labels.masked_fill(mask == 0, -100)
                    loss = net(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device),
                               num_items_in_batch=count).loss * sh.scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                tot += loss.item()
                n += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if several:  # each rank summed its scaled share: the ranks' average is the global batch's
                tot = distributed.mean([tot])[0]
            losses.append(tot / max(n, 1))
    if several:
        del net  # DDP's gradient hooks go with it, before these weights meet another backward pass
        gc.collect()
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 64, max_len: int = 128) -> float:
    """Token-weighted perplexity of whole texts."""
    if not texts:
        return float("nan")
    device = next(model.parameters()).device
    model.eval()
    seqs = encode_texts(tokenizer, texts, max_len)
    nll, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[i : i + batch_size], tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = ids[:, 1:]
        m = mask[:, 1:].bool()
        lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
        nll += lp[m].sum().item()
        count += int(m.sum())
    return math.exp(nll / max(count, 1))


def train_small_base(texts: list[str], cfg: BaseConfig, out_dir: Path, seed: int,
                     groups: list[str | None] | None = None, copy_texts: list[str] | None = None,
                     tokenizer_fn=None) -> dict:
    """The embedded default: tokenizer + small LM from scratch on packed texts, saved to `out_dir`.
    `copy_texts` feed the copy-only units (`pack_sequences`), the first `cfg.copy_pool` of them;
    None or empty uses `texts` themselves. `tokenizer_fn(texts, vocab_size)` makes the tokenizer
    (the domain's; default `train_tokenizer`)."""
    torch.manual_seed(seed)
    tokenizer = (tokenizer_fn or train_tokenizer)(texts, cfg.vocab_size)
    model = build_small_lm(tokenizer, cfg, seed)
    losses = train_lm(model, tokenizer, texts, cfg.epochs, cfg.lr, cfg.batch_size, seed, desc="base LM",
                      max_len=cfg.pack_len, pack_groups=groups, pack=True,
                      copy_texts=(copy_texts or texts)[: cfg.copy_pool or None], copy_units=cfg.copy_units)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("trained base LM: %d params, final loss %.3f", n_params, losses[-1])
    return {"params": n_params, "final_loss": losses[-1], "losses": losses}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("run.device is cuda but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def check_model_path(name_or_path: str) -> None:
    """Cheap check of a local model folder, before any work starts."""
    p = Path(name_or_path).expanduser()
    looks_local = p.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        if not p.is_dir():
            raise ModelError(f"base model folder {name_or_path} does not exist; pass a folder holding config.json and weights, or omit --base-model to train a small one")
        if not (p / "config.json").is_file():
            raise ModelError(f"{name_or_path} is not a Hugging Face model folder (no config.json); pass a folder saved with save_pretrained")


def load_base_model(name_or_path: str, device: str | torch.device = "cpu", adapter: str | Path | None = None,
                    trainable_adapter: bool = False):
    """Load (tokenizer, model) from a local HF folder or a hub id; optionally a peft adapter on top.

    The base weights are always frozen; an adapter is trainable only when asked.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers start-up, not needed for --help

    check_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load base model {name_or_path!r}: {first}; pass a local causal-LM folder with config.json, tokenizer and weights") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    model.to(resolve_device(device) if isinstance(device, str) else device)
    for prm in model.parameters():
        prm.requires_grad_(False)
    if adapter is not None:
        from peft import PeftModel  # lazy: peft start-up, only for a model wearing an adapter

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable_adapter)
    model.eval()
    return tokenizer, model
