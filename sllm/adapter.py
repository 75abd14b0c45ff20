"""The SLLM's decoder adapter: a LoRA on the frozen base model, trained with the SLLM and active
only while the base model decodes from a latent.

Input soft prompts alone are the weakest channel into a small frozen model (Lester et al. 2021);
the strong text autoencoders adapt the decoder (ICAE trains a LoRA, Optimus fine-tunes GPT-2).
The adapter is a peft LoRA named `DECODER` beside whatever adapter the base model already wears
(the loop's retrained one): both are active while decoding, only the base model's own while the
encoder reads hidden states, so the encoder's input and every other user of the model (judges,
perplexity, `lm` sampling) are unchanged. vLLM serves one LoRA a request: `merged_for_vllm`
concatenates the two adapters' ranks into one peft folder, which is exactly their sum.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch

DECODER = "sllm-decoder"
FOLDER = "decoder-adapter"  # inside an SLLM checkpoint folder


def lora_config(r: int):
    from peft import LoraConfig  # lazy: peft start-up, only with a decoder adapter

    # all-linear: every projection of every layer, the same modules the loop's retrained adapter and
    # vLLM's `lora_target_modules` take; alpha = 2r, as the retrained adapter's default.
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def has_decoder(model) -> bool:
    return DECODER in getattr(model, "peft_config", {})


def _others(model) -> list[str]:
    return [a for a in getattr(model, "peft_config", {}) if a != DECODER]


def attach(model, r: int = 0, path: str | Path | None = None):
    """`model` wearing a fresh decoder adapter of rank `r`, or the one saved in `path`, switched off.
    A plain model becomes a PeftModel; a PeftModel gets a second adapter (one already named
    DECODER is replaced). Returns the model to use from now on."""
    from peft import PeftModel, get_peft_model  # lazy: peft start-up, only with a decoder adapter

    model = detach(model)
    if isinstance(model, PeftModel):
        if path is not None:
            model.load_adapter(str(path), adapter_name=DECODER, is_trainable=False)
        else:
            model.add_adapter(DECODER, lora_config(r))
    elif path is not None:
        model = PeftModel.from_pretrained(model, str(path), adapter_name=DECODER, is_trainable=False)
    else:
        model = get_peft_model(model, lora_config(r), adapter_name=DECODER)
    set_decoding(model, False)
    return model


def detach(model):
    """`model` without the decoder adapter (the model it was attached to, when it was the only one)."""
    if not has_decoder(model):
        return model
    set_decoding(model, False)
    if _others(model):
        model.delete_adapter(DECODER)
        return model
    return model.unload()  # peft cannot delete its last adapter: the bare model, LoRA layers removed


def decoder_parameters(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if f".{DECODER}." in n]


def set_decoding(model, on: bool, trainable: bool = False) -> None:
    """Decoder adapter on (with the model's own adapters) or off (the model's own adapters alone).
    Every adapter weight is frozen, the decoder adapter's excepted when `trainable` (the SLLM's
    training): peft's set_adapter would otherwise mark every active adapter trainable."""
    if not has_decoder(model):
        return
    base = model.base_model  # peft's LoraModel
    others = _others(model)
    if on or others:
        base.enable_adapter_layers()
        base.set_adapter(others + [DECODER] if on else others)
    else:
        base.disable_adapter_layers()
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(bool(on and trainable and f".{DECODER}." in n))
    model._sllm_decoding = (on, trainable)


@contextlib.contextmanager
def decoding(model, trainable: bool = False):
    """The decoder adapter switched on inside the block (no-op without one)."""
    if not has_decoder(model):
        yield model
        return
    before = getattr(model, "_sllm_decoding", (False, False))
    set_decoding(model, True, trainable)
    try:
        yield model
    finally:
        set_decoding(model, *before)


@contextlib.contextmanager
def reading(model):
    """The decoder adapter switched off inside the block: the base model as the encoder reads it."""
    before = getattr(model, "_sllm_decoding", (False, False))
    if not has_decoder(model) or not before[0]:
        yield model
        return
    set_decoding(model, False)
    try:
        yield model
    finally:
        set_decoding(model, *before)


def save(model, folder: str | Path) -> None:
    """The decoder adapter alone, in peft format, in `folder`."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[DECODER])
        # peft puts a non-default adapter in a subfolder of its name
        src = Path(tmp) / DECODER if (Path(tmp) / DECODER).is_dir() else Path(tmp)
        src.rename(folder)


def merged_for_vllm(model, folder: str | Path) -> Path:
    """One peft LoRA folder equal to the model's own adapters plus the decoder adapter (their
    ranks concatenated: exactly the sum of their updates), for a backend that takes one LoRA a
    request. Written to `folder`, which must not exist yet."""
    folder = Path(folder)
    others = _others(model)
    if not others:
        save(model, folder)
        return folder
    name = "sllm-decode-merged"
    if name in model.peft_config:
        model.delete_adapter(name)
    model.add_weighted_adapter(others + [DECODER], [1.0] * (len(others) + 1), name, combination_type="cat")
    try:
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            model.save_pretrained(tmp, selected_adapters=[name])
            (Path(tmp) / name).rename(folder)
    finally:
        model.delete_adapter(name)
        set_decoding(model, False)
    return folder
