"""Training run: setup -> fit -> save, one LoRA adapter per method of a recipe, on transformers' Trainer.

    from clo.config import Recipe
    from clo.train.run import train
    paths = train(Recipe.load("recipes/demo.yaml"))      # -> [Path("adapters/clo-ko"), ...]

or `python -m clo train --config recipes/demo.yaml`. QLoRA (4-bit nf4, double quantisation, bf16
compute, gradient checkpointing) when CUDA and bitsandbytes are present; LoRA in float32 on CPU.
The reference π_ref is the same weights with the adapter disabled, evaluated once before training.
Each run appends JSON lines to runs/<run>/log.jsonl; adapters are written to a temporary folder and
renamed into adapters/<name>/ only when complete, holding ADAPTER_FILES (weights, the resolved recipe,
the manifest: base model, data, versions; metrics; the run's log lines). SIGINT/SIGTERM stop at the next
step, writing nothing. Launched on several processes (`torchrun --nproc_per_node N -m clo train ...`), the same code
trains data-parallel: clo.train.ranks says which process writes (the main one) and shares the run folder and π_ref.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import clo
from clo import CLOError
from clo.config import Recipe
from clo.files import new_folder, remove_stale, staging
from clo.hub import model_fingerprint
from clo.load import load_base, train_4bit_on_cpu
from clo.models.table import locate_model
from clo.train import TrainingStopped, ranks
from clo.train.batches import PairCollator, needed_keys, tokenize_rows
from clo.train.data import CrossLingualData, build_pairs
from clo.train.logps import ReferenceCache, share_reference_logps
from clo.train.objective import KEYS
from clo.train.trainer import CLOTrainer, ReferencePass, RunLog, sharded, training_arguments

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md",
                 "recipe.yaml", "manifest.json", "metrics.json", "train_log.jsonl")


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


# ---- setup ----

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
    if sharded(t.parallel) and len(recipe.method.method) > 1:  # FSDP shards the base in place: one adapter per launch
        raise CLOError(f"training.parallel: fsdp trains one method per launch; launch once for each of "
                       f"{', '.join(recipe.method.method)} (--method {recipe.method.method[0]})")
    for method in recipe.method.method:
        dest = Path(t.adapters_dir) / recipe.adapter_name(method)
        if dest.exists() and not t.overwrite:
            raise CLOError(f"adapter folder {dest} already exists; pass --overwrite to replace it")
    locate_model(recipe.model.name_or_path, flag="--model")  # fail fast on a missing path
    with ranks.main_first():  # one process translates and downloads; the others read its caches
        data = data or build_pairs(recipe.data)
        model, tokenizer, mode = load_base(recipe.model, sharded=sharded(t.parallel))
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


# ---- fit ----

def fit(s: Setup, recipe: Recipe, method: str, run_dir: Path, callbacks=(), stop_requested=lambda: False):
    """Wrap the base in a fresh LoRA adapter and train it with `method`. Returns (peft_model, trainer)."""
    from peft import LoraConfig, get_peft_model

    t = recipe.training
    torch.manual_seed(t.seed)  # the same LoRA initialisation for every method
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=list(recipe.lora.target_modules), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(s.model, lora)
    callbacks = list(callbacks)

    def score_reference(model, chunk: int) -> None:
        for cb in callbacks:
            if isinstance(cb, RunLog):
                cb.write("reference_begin", pairs=len(s.features))
        cache = reference_cache(recipe, s) if ranks.is_main() else None  # one SQLite writer
        try:
            reused = share_reference_logps(model, s.features, PairCollator(s.tokenizer.pad_token_id, KEYS),
                                           2 * t.batch_size, stop_requested, chunk, cache)
        finally:
            if cache is not None:
                cache.close()
        if reused and cache is not None:  # (only the main process holds the cache, and prints)
            print(f"[clo] reference log-probs: {reused} of {len(s.features)} pairs from {cache.path}", flush=True)

    if method in ("clo", "dpo") and "ref_tgt_tgt" not in s.features[0]:
        if sharded(t.parallel):  # through the model once the Trainer has sharded it, logits from its forward
            callbacks.append(ReferencePass(lambda model: score_reference(model, 0)))
        else:
            score_reference(peft_model, t.logits_chunk)
    trainer = CLOTrainer(
        model=peft_model,
        args=training_arguments(recipe, run_dir / method, s.mode == "qlora-4bit"),
        train_dataset=s.features,
        data_collator=PairCollator(s.tokenizer.pad_token_id, needed_keys(method, recipe.method.sft_english)),
        callbacks=callbacks,
        method=method, lam=recipe.method.lam, beta=recipe.method.beta, orpo_lambda=recipe.method.orpo_lambda,
        sft_english=recipe.method.sft_english, backward=t.backward, logits_chunk=t.logits_chunk,
    )
    trainer.train()
    return peft_model, trainer


def reference_cache(recipe: Recipe, s: Setup) -> ReferenceCache | None:
    """Where π_ref log-probs of this base, loaded this way, are kept (None when the base has no fingerprint)."""
    fingerprint = model_fingerprint(recipe.model.name_or_path, recipe.model.revision)
    if fingerprint is None:
        return None
    loading = {k: v for k, v in vars(recipe.model).items() if k not in ("name_or_path", "revision")}
    model = json.dumps([fingerprint, s.mode, str(next(s.model.parameters()).dtype), loading], sort_keys=True)
    return ReferenceCache(Path(recipe.data.cache_dir) / "reference_logps.sqlite", model)


# ---- save ----

def adapter_weights(model) -> dict[str, torch.Tensor]:
    """The LoRA weights of an FSDP-sharded PEFT model, whole, on the CPU (a collective: every process calls it)."""
    from torch.distributed.tensor import DTensor

    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu()
            for name, p in model.state_dict().items() if "lora_" in name}


def save_adapter(model, dest: Path, recipe: Recipe, method: str, data: CrossLingualData, mode: str,
                 metrics: dict, log_lines: list[str], overwrite: bool, weights: dict | None = None) -> Path:
    """Write the adapter folder in a staging folder beside its destination, then rename it into place. `weights`:
    the adapter's tensors when the model holds only shards of them (adapter_weights).

    A full disk is one sentence, with nothing written; the staging folders of a killed run are removed at the next
    start (`clo.files.remove_stale`)."""
    import peft
    import transformers

    with _disk_full_says(dest), staging(dest.parent, dest.name) as stage:
        tmp = stage / dest.name
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
        check_saved(tmp, model)
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
            "world_size": ranks.world_size(),  # processes that trained it together (training.batch_size is per process)
            "parallel": recipe.training.parallel if ranks.world_size() > 1 else None,  # ddp, or fsdp: the base sharded
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


def check_saved(folder: Path, model) -> None:
    """The written adapter holds a tensor for every weight the model trained (a wrapper that hid them from PEFT's
    saving would otherwise leave an empty adapter that loads and does nothing)."""
    from safetensors import safe_open

    trained = sum(p.requires_grad for p in model.parameters())
    with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
        saved = len(list(fh.keys()))
    if saved != trained:
        raise CLOError(f"the adapter to be written holds {saved} tensors but the model trained {trained}; nothing was written")


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

def train(recipe: Recipe, data: CrossLingualData | None = None) -> list[Path]:
    """Train one adapter per method of the recipe; returns the adapter folders (on the main process; [] on the others
    of a run launched on several processes, clo.train.ranks)."""
    ranks.start()
    with ranks.quiet_unless_main():
        return _train(recipe, data)


def _train(recipe: Recipe, data: CrossLingualData | None) -> list[Path]:
    t = recipe.training
    if ranks.is_main():
        for folder in remove_stale(t.adapters_dir):  # what runs killed while saving left behind
            print(f"[clo] cleaned up {folder}, left by a run that was killed while saving", flush=True)
    s = setup(recipe, data)
    if len(set(ranks.gather(s.data.manifest.get("rows_sha256")))) > 1:
        raise CLOError("the training processes built different pairs; give them the same data and cache_dir")
    run_dir = None
    if ranks.is_main():
        run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{recipe.data.target_lang}-{'-'.join(recipe.method.method)}"
        run_dir = new_folder(t.runs_dir, run_id)  # its own folder: a run started in the same second gets run_id-2
    run_dir = Path(ranks.share(str(run_dir) if run_dir else None))  # one folder for all the processes
    run_id = run_dir.name
    log_path = run_dir / "log.jsonl"
    processes = f", {ranks.world_size()} processes" if ranks.world_size() > 1 else ""
    print(f"[clo] run {run_id}: {len(s.features)} pairs{processes}, log {log_path}", flush=True)

    written = []
    with stop_on_signals() as stop_requested:
        for method in recipe.method.method:
            dest = Path(t.adapters_dir) / recipe.adapter_name(method)
            log = RunLog(log_path, dest.name, stop_requested)
            started = time.time()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            try:
                peft_model, trainer = fit(s, recipe, method, run_dir, [log], stop_requested)
            except CLOError:  # refused before a step: the run folder, empty, goes too
                if ranks.is_main() and not any(f.is_file() for f in run_dir.rglob("*")):
                    shutil.rmtree(run_dir)
                raise
            if ranks.any_process(stop_requested()):
                log.write("stopped", step=trainer.state.global_step)
                raise TrainingStopped()
            state = trainer.state
            last = next((h for h in reversed(state.log_history) if "loss" in h), {})
            pairs_seen = state.global_step * t.batch_size * t.grad_accum * ranks.world_size()  # training.batch_size is per process
            metrics = {
                "method": method, "steps": state.global_step, "pairs_seen": pairs_seen,
                "train_loss": next((h["train_loss"] for h in state.log_history if "train_loss" in h), None),
                "runtime_s": round(time.time() - started, 2),
                "seconds_per_pair": round((time.time() - started) / max(pairs_seen, 1), 4),
                **peak_memory_mb(),
                "final": {k: v for k, v in last.items() if k not in ("step", "epoch")},
            }
            weights = adapter_weights(peft_model) if trainer.is_fsdp_enabled else None  # every process joins the gather
            if ranks.is_main():  # one adapter; the other processes wait for it at the barrier below
                log.write("saving", step=state.global_step)
                lines = [line for line in log_path.read_text(encoding="utf-8").splitlines(keepends=True)
                         if json.loads(line).get("adapter") == dest.name]
                written.append(save_adapter(peft_model, dest, recipe, method, s.data, s.mode, metrics, lines, t.overwrite, weights))
                log.write("done", path=str(dest), metrics=metrics)
                print(f"[clo] wrote {dest}", flush=True)
            ranks.barrier()
            if not trainer.is_fsdp_enabled:  # (FSDP: one method per launch)
                s.model = peft_model.unload()  # the clean base again, for the next method
    return written
