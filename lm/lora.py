"""Retrain: LoRA fine-tune (peft) of the base model on accepted texts plus replayed real texts."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from lm import distributed
from lm.base_model import load_base_model, train_lm
from lm.config import RetrainConfig


def lora_finetune(base_path: str, prev_adapter: str | None, texts: list[str], cfg: RetrainConfig,
                  out_dir: Path | None, seed: int, device: str = "cpu") -> dict:
    """Continue the previous generation's adapter (or start one) on `texts`; save it in peft format.

    The base weights stay frozen; only adapter weights train, and only they are saved
    loadable by peft and by vLLM's LoRARequest. Under torchrun every rank
    trains (`train_lm`: DistributedDataParallel) and rank 0 alone saves; `out_dir` None: not saved
    (the other ranks pass None).
    """
    from peft import LoraConfig, get_peft_model  # lazy: peft start-up, only when an adapter trains

    torch.manual_seed(seed)
    if prev_adapter is not None:
        tokenizer, model = load_base_model(base_path, device, adapter=prev_adapter, trainable_adapter=True)
    else:
        tokenizer, model = load_base_model(base_path, device)
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses = train_lm(model, tokenizer, texts, cfg.epochs, cfg.lr, cfg.batch_size, seed, desc="LoRA", params=trainable)
    if out_dir is not None and distributed.is_main():
        model.save_pretrained(out_dir)
    return {"texts": len(texts), "losses": losses, "trainable_params": sum(p.numel() for p in trainable)}


def retrain_texts(accepted: list[str], corpus: list[str], replay: int, seed: int) -> list[str]:
    """Accumulate, never replace: all accepted texts so far plus a replay share of real texts
    (replacing real data with generated data collapses self-trained models, Shumailov et al. 2024)."""
    rng = random.Random(seed)
    real = rng.sample(corpus, min(replay, len(corpus)))
    texts = list(accepted) + real
    rng.shuffle(texts)
    return texts
