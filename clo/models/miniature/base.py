"""The miniature's English-centric base model: a few-million-parameter Llama pretrained on CPU in minutes, cached.

What it sees, mirroring an English-centric chat model:
- English queries answered in English (most of the data);
- target-language queries answered in English: it understands the target language but does not answer in it,
  the behaviour the paper starts from;
- plain target-language text (queries and answers as sentences, no chat turns), so the words are known.

It never sees a target-language answer to a chat query: that is what SFT and CLO must teach.

    from clo.models.miniature.base import base_model
    path = base_model()                     # models/miniature/base, built once (about 2-3 minutes on 2 cores)

or `python -m clo miniature --only-base`. The folder is an ordinary transformers model (safetensors, a word-level
tokenizer with a chat template), so `python app.py --model models/miniature/base` and every engine load it.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from clo.models.miniature.world import WORLD, World, generate

DEFAULT_PATH = Path("models") / "miniature" / "base"  # relative to the project folder, like adapters/ and runs/
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
FORMAT = 2  # bump when the saved model changes in a way `Pretraining` does not show (cached bases are rebuilt)


@dataclass(frozen=True)
class Pretraining:
    """The base model's size and its pretraining run. Changing any field rebuilds the cached model."""

    hidden_size: int = 192
    layers: int = 4
    heads: int = 3  # head size 64, which every engine (vLLM's CPU kernels too) supports
    kv_heads: int = 1
    intermediate_size: int = 512
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    english_share: float = 0.6  # English query -> English answer
    cross_share: float = 0.2  # target query -> English answer; the rest is plain target-language text
    seed: int = 0
    context: int = 2048  # positions the model accepts (RoPE: no weights depend on it); the app asks up to 256 new tokens


def build_tokenizer(world: World = WORLD):
    """A word-level tokenizer over the miniature's two languages, with a ChatML-style template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL_TOKENS + ["user", "assistant"] + world.vocabulary()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="[UNK]", bos_token=None, additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def corpus(n: int, cfg: Pretraining, world: World = WORLD) -> list[str]:
    """`n` pretraining documents in the proportions of `cfg`, deterministic in `cfg.seed`."""
    rng = random.Random(cfg.seed)
    examples = generate(n, seed=cfg.seed, split=None, distinct=False, world=world)
    docs = []
    for ex in examples:
        r = rng.random()
        if r < cfg.english_share:
            docs.append(_chat(ex.prompt_en, ex.response_en))
        elif r < cfg.english_share + cfg.cross_share:
            docs.append(_chat(ex.prompt_tgt, ex.response_en))
        else:
            other = examples[rng.randrange(len(examples))]
            docs.append(" ".join([ex.prompt_tgt, ex.response_tgt, other.response_tgt]) + "<|endoftext|>")
    return docs


def _chat(prompt: str, response: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>\n"


def is_current(path: Path, cfg: Pretraining | None = None, world: World = WORLD) -> bool:
    """Whether `path` holds a base built for this world (and from `cfg`, when given)."""
    manifest = Path(path) / "miniature.json"
    if not (manifest.is_file() and (Path(path) / "model.safetensors").is_file()):
        return False
    meta = json.loads(manifest.read_text(encoding="utf-8"))
    return (meta.get("format") == FORMAT and meta.get("world") == world.fingerprint
            and (cfg is None or meta.get("pretraining") == asdict(cfg)))


def base_model(path: str | Path = DEFAULT_PATH, cfg: Pretraining | None = None, rebuild: bool = False,
               world: World = WORLD, log=print) -> Path:
    """The cached base model at `path`; pretrained first (from `cfg`, default settings if None) when missing,
    built for another world, built from another `cfg` than the one given, or when `rebuild`."""
    path = Path(path)
    if not rebuild and is_current(path, cfg, world):
        return path
    return pretrain(path, cfg or Pretraining(), world, log)


def pretrain(path: Path, cfg: Pretraining = Pretraining(), world: World = WORLD, log=print) -> Path:
    """Pretrain the base from random weights with transformers' Trainer; written to `path` only when complete."""
    import torch
    from transformers import (DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, PrinterCallback,
                              Trainer, TrainerCallback, TrainingArguments)
    from transformers.utils import logging as hf_logging

    started = time.time()
    log(f"[clo] pretraining the miniature base model ({cfg.steps} steps × {cfg.batch_size} documents) → {path}")
    tokenizer = build_tokenizer(world)
    docs = corpus(cfg.steps * cfg.batch_size, cfg, world)
    ids = tokenizer(docs, add_special_tokens=False).input_ids
    assert all(tokenizer.unk_token_id not in x for x in ids), "the corpus has words outside the vocabulary"
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.hidden_size // cfg.heads, max_position_embeddings=cfg.context, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    args = TrainingArguments(
        output_dir=str(tmp / "trainer"), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(cfg.steps // 20, 1),
        weight_decay=0.01, logging_steps=max(cfg.steps // 8, 1), save_strategy="no", report_to=[], use_cpu=True,
        seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True,
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": x} for x in ids],
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        trainer.remove_callback(PrinterCallback)  # our own one-line progress instead
        trainer.add_callback(progress_callback(TrainerCallback, log, cfg.steps))
        result = trainer.train()
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {"format": FORMAT, "world": world.fingerprint, "pretraining": asdict(cfg), "parameters": model.num_parameters(),
                "final_loss": round(result.training_loss, 4), "seconds": round(time.time() - started, 1),
                "note": "synthetic miniature (clo.models.miniature): an English-centric base model for the CLO vs SFT replication"}
        (tmp / "miniature.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(path)
    finally:
        hf_logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[clo] miniature base: {meta['parameters'] / 1e6:.2f}M parameters, loss {meta['final_loss']}, {meta['seconds']} s")
    return path


def progress_callback(base: type, log, steps: int):
    """A Trainer callback (a subclass of transformers' TrainerCallback, passed in: this module imports no
    transformers at its top, so `python -m clo --help` stays instant) printing one line per logging step."""

    class Progress(base):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log(f"[clo]   step {state.global_step}/{steps}  loss {logs['loss']:.3f}")

    return Progress()
