"""Training: setup -> fit -> save, one LoRA adapter per method, on transformers' Trainer.

    from clo.config import Recipe
    from clo.train.trainer import train
    paths = train(Recipe.load("recipes/demo.yaml"))      # -> [Path("adapters/clo-ko"), ...]

or `python -m clo train --config recipes/demo.yaml`. QLoRA (4-bit nf4, double quantisation, bf16
compute, gradient checkpointing) when CUDA and bitsandbytes are present; LoRA in float32 on CPU.
The reference π_ref is the same weights with the adapter disabled, evaluated once before training.
Each run appends JSON lines to runs/<run>/log.jsonl; adapters are written to a temporary folder and
renamed into adapters/<name>/ only when complete. SIGINT/SIGTERM stop at the next step, writing nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

import clo
from clo import CLOError
from clo.chat import chat_pieces, piece_ids, remainder
from clo.config import Recipe
from clo.train.data import CrossLingualData, build_pairs
from clo.files import new_folder, remove_stale, staging
from clo.hub import locate, model_fingerprint
from clo.load import load_base, train_4bit_on_cpu
from clo.train.objective import DIRECTIONS, KEYS, clo_loss, orpo_loss, sequence_logps, token_mean_nll

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md",
                 "recipe.yaml", "manifest.json", "metrics.json", "train_log.jsonl")
QUERY_ANSWER = {"tgt_tgt": ("prompt_tgt", "response_tgt"), "tgt_en": ("prompt_tgt", "response_en"),
                "en_en": ("prompt_en", "response_en"), "en_tgt": ("prompt_en", "response_tgt")}


BACKWARD_PASSES = {"pair": (KEYS,), "direction": tuple(DIRECTIONS.values()), "sequence": tuple((k,) for k in KEYS)}


class TrainingStopped(Exception):
    """Raised after SIGINT/SIGTERM stopped a run; nothing was written to adapters/."""


def needed_keys(method: str, sft_english: bool = False) -> tuple[str, ...]:
    """The cross-lingual sequences a method evaluates under π_θ."""
    if method == "sft":
        return ("tgt_tgt", "en_en") if sft_english else ("tgt_tgt",)
    return KEYS


# ---- setup: tokenised rows ----

def encode(tokenizer, prompt: str, response: str, max_length: int, max_prompt_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the chat-formatted prompt + answer, and labels that are -100 on the prompt.

    A prompt over max_prompt_length tokens keeps its end; the answer keeps its start, up to max_length in all."""
    return _cut(*_encode_uncut(tokenizer, prompt, response), max_length, max_prompt_length)


def _encode_uncut(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-formatted prompt (generation prompt included) and of the answer (end of turn included).

    The data's text is tokenized as text, so only the template makes turn markers (clo.chat)."""
    messages = [{"role": "user", "content": prompt}]
    prompt_pieces = chat_pieces(tokenizer, messages, add_generation_prompt=True)
    full = chat_pieces(tokenizer, messages + [{"role": "assistant", "content": response}])
    answer = remainder(full, "".join(text for text, _ in prompt_pieces))
    if answer is None:  # a template whose full chat does not begin with its prompt
        answer = [(response, True), (tokenizer.eos_token, False)]
    return piece_ids(tokenizer, prompt_pieces), piece_ids(tokenizer, answer)


def _cut(prompt_ids: list[int], answer_ids: list[int], max_length: int, max_prompt_length: int) -> tuple[list[int], list[int]]:
    prompt_ids = prompt_ids[-max_prompt_length:]
    answer_ids = answer_ids[: max_length - len(prompt_ids)]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def tokenize_rows(rows: list[dict], tokenizer, keys, max_length: int, max_prompt_length: int,
                  overlong: str = "cut") -> list[dict]:
    """One feature per pair: {key}_input_ids and {key}_labels for each cross-lingual sequence in `keys`, and
    `cut`: whether any of them was longer than the limits. overlong = "cut" shortens such a pair (see `encode`);
    "drop" leaves it out, so len(result) may be below len(rows)."""
    features = []
    for row in rows:
        feature, cut = {"id": row["id"]}, False
        for key in keys:
            q, a = QUERY_ANSWER[key]
            prompt_ids, answer_ids = _encode_uncut(tokenizer, row[q], row[a])
            cut = cut or len(prompt_ids) > max_prompt_length or len(prompt_ids) + len(answer_ids) > max_length
            feature[f"{key}_input_ids"], feature[f"{key}_labels"] = _cut(prompt_ids, answer_ids, max_length, max_prompt_length)
        if cut and overlong == "drop":
            continue
        features.append(feature | {"cut": cut})
    return features


class PairCollator:
    """Right-pads each sequence group of a batch separately; carries precomputed reference log-probs."""

    def __init__(self, pad_token_id: int, keys):
        self.pad_token_id, self.keys = pad_token_id, keys

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in self.keys:
            ids = [f[f"{key}_input_ids"] for f in features]
            width = max(map(len, ids))
            batch[f"{key}_input_ids"] = torch.tensor([x + [self.pad_token_id] * (width - len(x)) for x in ids])
            batch[f"{key}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            batch[f"{key}_labels"] = torch.tensor([f[f"{key}_labels"] + [-100] * (width - len(f[f"{key}_labels"])) for f in features])
            if f"ref_{key}" in features[0]:
                batch[f"ref_{key}"] = torch.tensor([f[f"ref_{key}"] for f in features], dtype=torch.float32)
        return batch


def group_logps(model, batch: dict, keys, chunk: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One forward over the sequences of `keys`: key -> (summed answer log-probs [B], answer tokens [B]).

    Logits are computed only from the first answer position of the batch on (`logits_to_keep`). With `chunk` > 0
    they are never whole: the decoder's hidden states go through the output layer and the log-softmax `chunk`
    answer positions at a time (`chunked_answer_logps`), the same numbers in a fraction of the memory.
    """
    width = max(batch[f"{k}_input_ids"].shape[1] for k in keys)
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    ids = torch.cat([pad(batch[f"{k}_input_ids"], 0) for k in keys])
    mask = torch.cat([pad(batch[f"{k}_attention_mask"], 0) for k in keys])
    labels = torch.cat([pad(batch[f"{k}_labels"], -100) for k in keys])
    first_answer = int((labels != -100).int().argmax(-1).min())
    if chunk and plain_output_layer(model):
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        sums, counts = chunked_answer_logps(model.get_output_embeddings(), hidden[:, first_answer - 1 : -1],
                                            labels[:, first_answer:], chunk)
    else:
        keep = width - first_answer + 1
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
        sums, counts = sequence_logps(logits[:, :-1], labels[:, width - keep + 1 :])
    n = batch[f"{keys[0]}_input_ids"].shape[0]
    return {k: (sums[i * n : (i + 1) * n], counts[i * n : (i + 1) * n]) for i, k in enumerate(keys)}


# config fields of models whose logits are more than the output layer of the last hidden state (Gemma 2's soft cap,
# Cohere's and Granite's scaling): the chunked path would miss them, so those models take the whole-logits path
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def plain_output_layer(model) -> bool:
    """Whether the model's logits are exactly its output layer applied to its decoder's last hidden state."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return not any(getattr(text, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)


def chunked_answer_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps(head(hidden), labels)` without the whole [B, T, V] logits: `chunk` positions at a time.

    hidden: [B, T, H], position t predicts labels[:, t]; labels: [B, T] with -100 off the answer.
    With gradients, each chunk is recomputed in the backward pass (activation checkpointing), so only one chunk's
    float32 logits exist at once in either pass.
    """
    from torch.utils.checkpoint import checkpoint

    def part(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(head(h), y)

    sums = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    counts = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[1], chunk):
        h, y = hidden[:, start : start + chunk], labels[:, start : start + chunk]
        if not bool((y != -100).any()):
            continue
        s, c = checkpoint(part, h, y, use_reentrant=False) if torch.is_grad_enabled() and h.requires_grad else part(h, y)
        sums, counts = sums + s, counts + c
    return sums, counts


@torch.no_grad()
def add_reference_logps(model, features: list[dict], collator: PairCollator, batch_size: int, should_stop=lambda: False,
                        chunk: int = 0) -> None:
    """π_ref log-probs of the four sequences of every pair, with the LoRA adapter disabled, stored in the features."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    with model.disable_adapter():
        for start in tqdm(range(0, len(features), batch_size), desc="reference log-probs", unit="batch"):
            if should_stop():
                raise TrainingStopped()
            rows = features[start : start + batch_size]
            batch = {k: v.to(model.device) for k, v in collator(rows).items()}
            for key, (sums, _) in group_logps(model, batch, KEYS, chunk).items():
                for f, value in zip(rows, sums.tolist()):
                    f[f"ref_{key}"] = value
    model.train(was_training)


# ---- fit: the Trainer subclass that calls clo.train.objective ----

class CLOTrainer(Trainer):
    """transformers' Trainer with the loss of one method (clo, sft, dpo, orpo) on cross-lingual pairs."""

    def __init__(self, *args, method: str, lam: float, beta: float, orpo_lambda: float,
                 sft_english: bool, backward: str = "sequence", logits_chunk: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunk = logits_chunk
        self.method, self.lam, self.beta, self.orpo_lambda = method, lam, beta, orpo_lambda
        self.keys = needed_keys(method, sft_english)
        self.passes = BACKWARD_PASSES["pair" if method == "sft" else backward]
        self._metrics: dict[str, list[float]] = {}

    def method_loss(self, logps: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss from {key: (summed log-probs, token counts)} of the policy."""
        target_nll = token_mean_nll(*logps["tgt_tgt"])
        if self.method == "sft":
            if "en_en" in logps:  # English mixed in: one token mean over both languages
                both = [torch.cat([logps[k][i] for k in ("tgt_tgt", "en_en")]) for i in (0, 1)]
                return token_mean_nll(*both), {"loss": token_mean_nll(*both).item(), "l_sft": target_nll.item()}
            return target_nll, {"loss": target_nll.item(), "l_sft": target_nll.item()}
        if self.method == "orpo":
            means = {k: s / c.clamp(min=1) for k, (s, c) in logps.items()}
            return orpo_loss(means, target_nll, self.orpo_lambda)
        policy = {k: s for k, (s, _) in logps.items()}
        reference = {k: batch[f"ref_{k}"] for k in KEYS}
        return clo_loss(policy, reference, target_nll, beta=self.beta, lam=self.lam if self.method == "clo" else 0.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.method_loss(group_logps(model, inputs, self.keys, self.chunk), inputs)
        self._store(metrics)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Back-propagate the pair's sequences in the passes of `backward` (default "sequence": one at a time).

        Every loss here is a sum of an x_l term and an x_en term, each coupling only its own chosen and
        rejected answer. So a pass may stand in detached values for sequences it does not evaluate: for its
        own direction the true values (computed without gradient first, in "sequence" mode), for the other
        direction anything finite, which only shifts the loss by a constant. The passes' gradients add up to
        the joint gradient exactly (with dropout, each pass draws its own mask).
        """
        if len(self.passes) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        known: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if len(self.passes) == len(KEYS):  # one sequence per pass: first the rejected answers' values
            with torch.no_grad(), self.compute_loss_context_manager():
                known.update(group_logps(model, inputs, tuple(r for _, r in DIRECTIONS.values()), self.chunk))
        for keys in self.passes:
            with self.compute_loss_context_manager():
                fresh = group_logps(model, inputs, keys, self.chunk)
            stand_in = _placeholder(fresh[keys[0]])
            logps = {k: fresh.get(k) or known.get(k) or stand_in for k in KEYS}
            loss, _ = self.method_loss(logps, inputs)
            self.accelerator.backward(loss / self.current_gradient_accumulation_steps)
            known.update({k: (s.detach(), c) for k, (s, c) in fresh.items()})
        loss, metrics = self.method_loss(known, inputs)
        self._store(metrics)
        return loss.detach() / self.current_gradient_accumulation_steps

    def _store(self, metrics: dict[str, float]) -> None:
        if self.model.training:
            for k, v in metrics.items():
                self._metrics.setdefault(k, []).append(v)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the means of our metrics since the last one
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if k != "loss"})  # Trainer's own loss stays
            self._metrics.clear()
        super().log(logs, start_time)


def _placeholder(like: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in log-probs for a direction not yet evaluated: finite and < 0, so every loss stays defined."""
    return -torch.ones_like(like[0]), torch.ones_like(like[1])


class RunLog(TrainerCallback):
    """Appends one JSON object per event to a JSONL file that a UI can poll; also stops on a signal."""

    def __init__(self, path: Path, adapter: str, stop_requested):
        self.path, self.adapter, self.stop_requested = path, adapter, stop_requested
        self.started = time.time()

    def write(self, event: str, **fields) -> None:
        record = {"event": event, "adapter": self.adapter, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **fields}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_train_begin(self, args, state, control, **kw):
        self.started = time.time()
        self.write("train_begin", max_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kw):
        elapsed = time.time() - self.started
        step = max(state.global_step, 1)
        eta = elapsed / step * max(state.max_steps - state.global_step, 0)
        event = "train_end" if "train_runtime" in (logs or {}) else "log"
        self.write(event, step=state.global_step, max_steps=state.max_steps, elapsed=round(elapsed, 2), eta=round(eta, 2), **(logs or {}))

    def on_step_end(self, args, state, control, **kw):
        if self.stop_requested():
            control.should_training_stop = True
        return control


@contextlib.contextmanager
def stop_on_signals():
    """Yield a function telling whether SIGINT/SIGTERM arrived; a second SIGINT aborts at once."""
    flag = {"stop": False}
    previous = {}

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        print(f"\n[clo] {signal.Signals(signum).name}: stopping after this step; no adapter will be written", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, no signals
            previous[sig] = signal.signal(sig, handler)
    try:
        yield lambda: flag["stop"]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def training_arguments(recipe: Recipe, output_dir: Path, quantized: bool) -> TrainingArguments:
    t = recipe.training
    cuda = torch.cuda.is_available()
    gc = t.gradient_checkpointing == "true" or (t.gradient_checkpointing == "auto" and quantized)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        report_to=[],
        remove_unused_columns=False,
        seed=t.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=cuda and not torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        gradient_checkpointing=gc and not quantized,  # prepare_model_for_kbit_training enables it for 4-bit
        gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
        optim="adamw_torch",
    )


# ---- save ----

def save_adapter(model, dest: Path, recipe: Recipe, method: str, data: CrossLingualData, mode: str,
                 metrics: dict, log_lines: list[str], overwrite: bool) -> Path:
    """Write the adapter folder in a staging folder beside its destination, then rename it into place.

    A full disk is one sentence, with nothing written; the staging folders of a killed run are removed at the next
    start (`clo.files.remove_stale`)."""
    import peft
    import transformers

    with _disk_full_says(dest), staging(dest.parent, dest.name) as stage:
        tmp = stage / dest.name
        model.save_pretrained(tmp, safe_serialization=True)
        single = Recipe.from_dict(recipe.to_dict())
        single.method.method, single.training.name = [method], dest.name
        single.save(tmp / "recipe.yaml")
        config = model.get_base_model().config
        manifest = {
            "name": dest.name,
            "method": method,
            "target_lang": recipe.data.target_lang,
            "base_model": {"name_or_path": recipe.model.name_or_path, "revision": recipe.model.revision,
                           "commit": getattr(config, "_commit_hash", None), "architecture": (config.architectures or [None])[0],
                           "fingerprint": model_fingerprint(recipe.model.name_or_path, recipe.model.revision)},  # what it is, wherever it lies
            "mode": mode,
            "data": data.manifest,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"clo": clo.__version__, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (tmp / "train_log.jsonl").write_text("".join(log_lines), encoding="utf-8")
        if not dest.exists():
            tmp.rename(dest)
            return dest
        if not overwrite:
            raise CLOError(f"adapter folder {dest} already exists; pass --overwrite to replace it")
        with staging(dest.parent, dest.name, "old") as aside:  # the old adapter waits here until the new one is in
            dest.rename(aside / dest.name)
            try:
                tmp.rename(dest)
            except BaseException:
                (aside / dest.name).rename(dest)
                raise
    return dest


@contextlib.contextmanager
def _disk_full_says(dest: Path):
    """A full disk (OSError ENOSPC/EDQUOT, or safetensors' SafetensorError saying so) while writing `dest`: one sentence."""
    try:
        yield
    except CLOError:
        raise
    except Exception as e:  # noqa: BLE001 (only the disk-full ones are translated; the rest propagate unchanged)
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            words in str(e) for words in ("No space left on device", "Disk quota exceeded", "StorageFull"))
        if not full:
            raise
        raise CLOError(f"no space left on device while writing {dest}; nothing was written; free space and run again") from None


def peak_memory_mb() -> dict[str, float]:
    """Peak CUDA memory since the last reset (per method), or the process's peak RSS on CPU (not resettable)."""
    if torch.cuda.is_available():
        return {"peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux


# ---- the whole run: setup -> fit -> save ----

@dataclass
class Setup:
    model: object  # the base model (4-bit or full precision), no adapter
    tokenizer: object
    mode: str  # "qlora-4bit" or "lora-<dtype>"
    features: list[dict]  # tokenised pairs; reference log-probs are added once, when a method needs them
    data: CrossLingualData


def setup(recipe: Recipe, data: CrossLingualData | None = None) -> Setup:
    """Check everything that can be checked, then load the data, the model and tokenise the pairs."""
    from peft import prepare_model_for_kbit_training

    recipe.validate()
    t = recipe.training
    for method in recipe.method.method:
        dest = Path(t.adapters_dir) / recipe.adapter_name(method)
        if dest.exists() and not t.overwrite:
            raise CLOError(f"adapter folder {dest} already exists; pass --overwrite to replace it")
    locate(recipe.model.name_or_path, kind="model", flag="--model")  # fail fast on a missing path
    data = data or build_pairs(recipe.data)
    model, tokenizer, mode = load_base(recipe.model)
    check_target_modules(model, recipe.lora.target_modules, recipe.model.name_or_path)
    if mode == "qlora-4bit":
        if model.device.type == "cpu":
            train_4bit_on_cpu(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing != "false",
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    keys = KEYS if any(m != "sft" for m in recipe.method.method) else needed_keys("sft", recipe.method.sft_english)
    features = tokenize_rows(data.rows, tokenizer, keys, t.max_length, t.max_prompt_length, t.overlong)
    overlong = sum(f["cut"] for f in features) + len(data.rows) - len(features)
    limits = f"{t.max_length} tokens (prompts {t.max_prompt_length})"
    if not features:
        raise CLOError(f"all {len(data.rows)} pairs are longer than {limits}, so training.overlong: drop leaves none to "
                       "train on; raise training.max_length / max_prompt_length or use training.overlong: cut")
    if overlong:
        done = "left out (training.overlong: drop)" if t.overlong == "drop" else "cut to fit (training.overlong: drop leaves them out)"
        print(f"[clo] {overlong} of {len(data.rows)} pairs are longer than {limits} and were {done}", flush=True)
    # the adapter's manifest records it with the data it was trained on
    data = CrossLingualData(data.rows, {**data.manifest, "overlong": {"pairs": overlong, "action": t.overlong,
                                                                      "max_length": t.max_length, "max_prompt_length": t.max_prompt_length}})
    return Setup(model, tokenizer, mode, features, data)


def check_target_modules(model, targets: list[str], model_name: str) -> None:
    """Every name in lora.target_modules matches a layer as PEFT matches them (the layer's full name, or its end after
    a dot), else one sentence listing the names of the layers LoRA can adapt here (before any run folder exists)."""
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    adaptable = dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                              if n and (isinstance(m, kinds) or type(m).__name__ == "Conv1D"))
    raise CLOError(f"lora.target_modules: {', '.join(map(repr, missing))} {'matches' if len(missing) == 1 else 'match'} "
                   f"no layer of {model_name}; the layers LoRA can adapt there are named {', '.join(adaptable)}")


def fit(s: Setup, recipe: Recipe, method: str, run_dir: Path, callbacks=(), stop_requested=lambda: False):
    """Wrap the base in a fresh LoRA adapter and train it with `method`. Returns (peft_model, trainer)."""
    from peft import LoraConfig, get_peft_model

    t = recipe.training
    torch.manual_seed(t.seed)  # the same LoRA initialisation for every method
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=list(recipe.lora.target_modules), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(s.model, lora)
    if method in ("clo", "dpo") and "ref_tgt_tgt" not in s.features[0]:
        for cb in callbacks:
            if isinstance(cb, RunLog):
                cb.write("reference_begin", pairs=len(s.features))
        add_reference_logps(peft_model, s.features, PairCollator(s.tokenizer.pad_token_id, KEYS), 2 * t.batch_size, stop_requested,
                            t.logits_chunk)
    trainer = CLOTrainer(
        model=peft_model,
        args=training_arguments(recipe, run_dir / method, s.mode == "qlora-4bit"),
        train_dataset=s.features,
        data_collator=PairCollator(s.tokenizer.pad_token_id, needed_keys(method, recipe.method.sft_english)),
        callbacks=list(callbacks),
        method=method, lam=recipe.method.lam, beta=recipe.method.beta, orpo_lambda=recipe.method.orpo_lambda,
        sft_english=recipe.method.sft_english, backward=t.backward, logits_chunk=t.logits_chunk,
    )
    trainer.train()
    return peft_model, trainer


def train(recipe: Recipe, data: CrossLingualData | None = None) -> list[Path]:
    """Train one adapter per method of the recipe; returns the adapter folders."""
    t = recipe.training
    for folder in remove_stale(t.adapters_dir):  # what runs killed while saving left behind
        print(f"[clo] cleaned up {folder}, left by a run that was killed while saving", flush=True)
    s = setup(recipe, data)
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{recipe.data.target_lang}-{'-'.join(recipe.method.method)}"
    run_dir = new_folder(t.runs_dir, run_id)  # its own folder: a run started in the same second gets run_id-2
    run_id = run_dir.name
    log_path = run_dir / "log.jsonl"
    print(f"[clo] run {run_id}: {len(s.features)} pairs, log {log_path}", flush=True)

    written = []
    with stop_on_signals() as stop_requested:
        for method in recipe.method.method:
            dest = Path(t.adapters_dir) / recipe.adapter_name(method)
            log = RunLog(log_path, dest.name, stop_requested)
            started = time.time()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            peft_model, trainer = fit(s, recipe, method, run_dir, [log], stop_requested)
            if stop_requested():
                log.write("stopped", step=trainer.state.global_step)
                raise TrainingStopped()
            state = trainer.state
            last = next((h for h in reversed(state.log_history) if "loss" in h), {})
            pairs_seen = state.global_step * t.batch_size * t.grad_accum
            metrics = {
                "method": method, "steps": state.global_step, "pairs_seen": pairs_seen,
                "train_loss": next((h["train_loss"] for h in state.log_history if "train_loss" in h), None),
                "runtime_s": round(time.time() - started, 2),
                "seconds_per_pair": round((time.time() - started) / max(pairs_seen, 1), 4),
                **peak_memory_mb(),
                "final": {k: v for k, v in last.items() if k not in ("step", "epoch")},
            }
            log.write("saving", step=state.global_step)
            lines = [line for line in log_path.read_text(encoding="utf-8").splitlines(keepends=True)
                     if json.loads(line).get("adapter") == dest.name]
            written.append(save_adapter(peft_model, dest, recipe, method, s.data, s.mode, metrics, lines, t.overwrite))
            log.write("done", path=str(dest), metrics=metrics)
            print(f"[clo] wrote {dest}", flush=True)
            s.model = peft_model.unload()  # the clean base again, for the next method
    return written
