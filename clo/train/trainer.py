"""The Trainer of one method: transformers' Trainer computing the loss of clo.train.objective on cross-lingual pairs.

    trainer = CLOTrainer(model=peft_model, args=training_arguments(recipe, out, quantized=False),
                         train_dataset=features, data_collator=PairCollator(pad_id, needed_keys("clo")),
                         method="clo", lam=0.5, beta=0.1, orpo_lambda=0.1, sft_english=False)
    trainer.train()

The trainer computes log-probabilities (clo.train.logps) and calls the pure losses; it never writes one itself.
`training_step` may back-propagate a pair's sequences in several passes (training.backward) for memory. RunLog is
the callback that appends the run's JSON lines (runs/<run>/log.jsonl) and stops at a signal. clo.train.run builds
all of this from a recipe (`fit`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from clo import CLOError
from clo.config import Recipe
from clo.train import ranks
from clo.train.batches import needed_keys
from clo.train.logps import group_logps
from clo.train.objective import DIRECTIONS, KEYS, clo_loss, orpo_loss, token_mean_nll

BACKWARD_PASSES = {"pair": (KEYS,), "direction": tuple(DIRECTIONS.values()), "sequence": tuple((k,) for k in KEYS)}


class CLOTrainer(Trainer):
    """transformers' Trainer with the loss of one method (clo, sft, dpo, orpo) on cross-lingual pairs."""

    def __init__(self, *args, method: str, lam: float, beta: float, orpo_lambda: float,
                 sft_english: bool, backward: str = "sequence", logits_chunk: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.fsdp and not self.is_fsdp_enabled:  # accelerate would quietly train DDP instead
            raise CLOError("training.parallel: fsdp needs GPUs: accelerate shards a model with FSDP only on CUDA "
                           "(or another accelerator's) processes, not on CPU ones; use training.parallel: ddp here")
        # under FSDP the output layer's weight is a shard outside the model's forward: the logits come from the forward
        self.chunk = 0 if self.is_fsdp_enabled else logits_chunk
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
        loss, metrics = self.method_loss(group_logps(model, inputs, self.keys, self.chunk, self._inner(model)), inputs)
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
                known.update(group_logps(model, inputs, tuple(r for _, r in DIRECTIONS.values()), self.chunk, self._inner(model)))
        for keys in self.passes:
            with self.compute_loss_context_manager():
                fresh = group_logps(model, inputs, keys, self.chunk, self._inner(model))
            stand_in = _placeholder(fresh[keys[0]])
            logps = {k: fresh.get(k) or known.get(k) or stand_in for k in KEYS}
            loss, _ = self.method_loss(logps, inputs)
            self.accelerator.backward(loss / self.current_gradient_accumulation_steps)
            known.update({k: (s.detach(), c) for k, (s, c) in fresh.items()})
        loss, metrics = self.method_loss(known, inputs)
        self._store(metrics)
        return loss.detach() / self.current_gradient_accumulation_steps

    def _inner(self, model):
        """The model inside the Trainer's wrapper (DistributedDataParallel with several processes), for group_logps."""
        return self.accelerator.unwrap_model(model)

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


class ReferencePass(TrainerCallback):
    """π_ref for a sharded run (training.parallel: fsdp): `score(model)` through the model the Trainer has just
    sharded, before the first step, where an unsharded pass would need the whole base on each GPU."""

    def __init__(self, score):
        self.score = score

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.score(model)


class RunLog(TrainerCallback):
    """Appends one JSON object per event to a JSONL file that a UI can poll; also stops on a signal."""

    def __init__(self, path: Path, adapter: str, stop_requested):
        self.path, self.adapter, self.stop_requested = path, adapter, stop_requested
        self.started = time.time()

    def write(self, event: str, **fields) -> None:
        if not ranks.is_main():  # one log for the run, however many processes train it
            return
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
        if ranks.any_process(self.stop_requested()):  # every process stops at the same step, or none does
            control.should_training_stop = True
        return control


def training_arguments(recipe: Recipe, output_dir: Path, quantized: bool) -> TrainingArguments:
    """transformers' TrainingArguments from the recipe's training section (bf16/fp16 on CUDA, float32 on the CPU)."""
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
        # with several processes: every trainable weight is a LoRA matrix on the path to every answer's log-prob, so
        # none is unused, and DDP's search for unused ones would only cost a graph walk per forward (and would hide
        # a weight that truly got no gradient, which DDP now reports at the next step)
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        optim=t.optim,
        **sharding_arguments(t.parallel),
    )


def sharding_arguments(parallel: str) -> dict:
    """TrainingArguments for `training.parallel` when several processes train (none for ddp, or for one process)."""
    if not sharded(parallel):
        return {}
    # FSDP2: each decoder layer (the model's _no_split_modules) a unit of its own, the rest with the root. Activation
    # checkpointing stays transformers' (gradient_checkpointing): FSDP's own wraps each layer in a CheckpointWrapper,
    # whose `_checkpoint_wrapped_module` in the module names hides every LoRA weight from PEFT's saving (an adapter
    # of 0 tensors, seen on gloo), at the price of one more all-gather per layer in the backward
    return {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                          "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": False}}


def sharded(parallel: str) -> bool:
    """Whether this run shards the model across its processes (training.parallel: fsdp, and more than one process)."""
    return parallel == "fsdp" and ranks.world_size() > 1
