"""A tiny random Llama-style chat model with a locally trained tokenizer, and random LoRA adapters, offline.

For tests, benchmarks and smoke runs where no hub is reachable. Its answers are noise.

    python -m clo tiny models/tiny          # or: from clo.models.tiny import build_tiny_model
    python app.py --model tiny              # the registry's shorthand (clo.models.table): models/tiny, made on first use
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clo.models.table import SAMPLE, OfflineModel, register

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(limit: int = 400) -> list[str]:
    texts = ["The quick brown fox jumps over the lazy dog.", "user", "assistant"]
    if SAMPLE.is_file():
        for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:limit]:
            row = json.loads(line)
            texts += [v for k, v in row.items() if k.startswith(("prompt_", "response_"))]
    return texts


def build_tiny_model(
    path: str | Path,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    seed: int = 0,
) -> Path:
    """Write a random LlamaForCausalLM (head size 64) and a byte-level BPE tokenizer to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path


def build_random_adapter(model_path: str | Path, folder: str | Path, seed: int = 0, rank: int = 8,
                         scale: float = 0.3, base_name: str | None = None) -> Path:
    """Write a LoRA adapter (q/k/v/o) with random non-zero weights for `model_path`, plus a manifest.

    Its answers differ from the base model's, which is what serving tests and benchmarks need.
    `base_name` overrides the base model recorded in the manifest (to test mismatches).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False)
    peft = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0, scale)
    peft.save_pretrained(folder)
    manifest = {"method": "random", "target_lang": None, "base_model": {"name_or_path": base_name or str(model_path)}}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@dataclass(frozen=True, kw_only=True)
class Tiny(OfflineModel):
    def make(self, out: Path, seed: int = 0) -> Path:
        """Built in a marked staging folder and renamed into place whole."""
        from clo import CLOError
        from clo.files import remove_stale, staging

        if out.exists():
            raise CLOError(f"{out} exists but is not a model folder (no config.json); remove it or pass another folder")
        remove_stale(out.parent)
        with staging(out.parent, out.name) as tmp:
            build_tiny_model(tmp / out.name, seed=seed)
            (tmp / out.name).rename(out)
        return out


TINY = register(Tiny(
    name="tiny",
    title="a tiny random model",
    description="random weights (a 2-layer, 128-wide Llama, about 0.6M parameters, with a byte-level tokenizer "
                "trained on the sample), built here in seconds for smoke runs of the plumbing; its answers are noise",
    folder="tiny",
    license="Apache-2.0 (this project)",
    credits="built by this project (clo.models.tiny)",
    origin="built here by clo.models.tiny.build_tiny_model (random weights)",
))
