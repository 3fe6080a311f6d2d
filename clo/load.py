"""Loading a base chat model: local folder or hub id, QLoRA (4-bit nf4) or full precision, one line saying which.

Kept apart from clo.train so that serving does not import the training stack.

    model, tokenizer, mode = load_base(ModelConfig(name_or_path="Qwen/Qwen2.5-0.5B-Instruct"))
"""

from __future__ import annotations

import os

import torch

from clo import CLOError
from clo.config import ModelConfig
from clo.hub import explain_missing
from clo.models.table import locate_model


def load_base(cfg: ModelConfig, verbose: bool = True, sharded: bool = False):
    """(model, tokenizer, mode) with mode 'qlora-4bit' or 'lora-<dtype>'; the one line saying which runs is printed.

    `sharded`: the model is for FSDP (training.parallel: fsdp), which moves each process's shard to its GPU itself, so
    it is loaded into CPU memory, not whole onto one GPU; a 4-bit base keeps its packed weights in the compute dtype
    (bnb_4bit_quant_storage)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = locate_model(cfg.name_or_path, flag="--model")
    cuda = torch.cuda.is_available()
    want_4bit = cfg.load_in_4bit == "true" or (cfg.load_in_4bit == "auto" and cuda and _has_bitsandbytes())
    if want_4bit and not _has_bitsandbytes():
        raise CLOError("model.load_in_4bit is true but bitsandbytes is not installed (pip install bitsandbytes)")
    compute = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else (torch.float16 if cuda else torch.float32)
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=source.local_files_only)
    if want_4bit:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute,
            # FSDP: the packed 4-bit weights stored in the compute dtype, as bitsandbytes' FSDP-QLoRA guide sets it,
            # so that every tensor FSDP shards is a floating-point one of the same dtype
            **({"bnb_4bit_quant_storage": compute} if sharded else {}),
        )
        kw["dtype"] = compute
    else:
        kw["dtype"] = compute if cuda else torch.float32
    gpu = int(os.environ.get("LOCAL_RANK", "0"))  # each process of a multi-GPU run (torchrun, accelerate) on its own GPU
    with explain_missing(source):
        tokenizer = AutoTokenizer.from_pretrained(source.name, **{k: kw[k] for k in ("revision", "trust_remote_code", "local_files_only")})
        model = AutoModelForCausalLM.from_pretrained(source.name, use_safetensors=True, device_map={"": gpu} if cuda and not sharded else None, **kw)
    if getattr(model, "_hf_peft_config_loaded", False):  # a hub adapter repo: transformers loads its base and the adapter
        bases = {getattr(c, "base_model_name_or_path", None) for c in model.peft_config.values()} - {None, ""}
        raise CLOError(f"{cfg.name_or_path} is a LoRA adapter, not a base model; its base is "
                       f"{', '.join(sorted(bases)) or 'not recorded'}; pass the base as --model and serve the adapter "
                       "from --adapters-dir")
    if tokenizer.chat_template is None:
        raise CLOError(f"model {cfg.name_or_path} has no chat template; CLO needs a chat model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    mode = "qlora-4bit" if want_4bit else f"lora-{str(kw['dtype']).removeprefix('torch.')}"
    device = "cuda" if cuda else "cpu"
    dtype = str(compute).removeprefix("torch.")
    what = f"QLoRA: 4-bit nf4 base, {dtype} compute" if want_4bit else f"LoRA on a {str(kw['dtype']).removeprefix('torch.')} base"
    if verbose:
        print(f"[clo] mode: {mode} on {device} ({what}), model {cfg.name_or_path}", flush=True)
    return model, tokenizer, mode


def train_4bit_on_cpu(model) -> int:
    """Keep bitsandbytes' 4-bit layers differentiable on the CPU; returns how many layers were changed.

    bitsandbytes 0.50's Linear4bit.forward, on a CPU with AVX512-BF16, repacks its weight for a fused inference
    kernel at the first forward in eval mode without gradients, and keeps it so. That kernel has no backward: a
    training forward after it (CLO's π_ref pass runs in eval mode first) drops the gradient through every frozen
    4-bit layer without an error (one warning), and a layer with a bias fails outright. bench/gpu.py measures the
    difference (its 4-bit gradient check); tests/test_train.py checks the gradients against float32.
    """
    if not _has_bitsandbytes():
        return 0
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                raise CLOError("a 4-bit layer was already repacked for inference; load the model again to train it")
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True
