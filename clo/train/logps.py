"""Log-probabilities of answers: per sequence under the policy π_θ, and once under the reference π_ref.

    logps = group_logps(model, batch, KEYS)            # key -> (summed answer log-probs [B], answer tokens [B])
    add_reference_logps(peft_model, features, PairCollator(pad_id, KEYS), batch_size=8)   # f["ref_tgt_tgt"], ...

One forward evaluates several sequence groups of a batch (clo.train.batches) at once; with `chunk` > 0 the logits are
never whole (the output layer runs a few answer positions at a time), for long answers over a large vocabulary.
π_ref is the same weights with the LoRA adapter disabled, evaluated once before training (clo.train.run.fit), and
kept in a `ReferenceCache` (SQLite, beside the translations): another method, seed, data size or LoRA layer set on
the same base model and the same tokens reads them instead of scoring them again (`python -m clo replicate` trains
dozens of adapters on the same pairs).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from clo.train import TrainingStopped, ranks
from clo.train.batches import PairCollator
from clo.train.data import KeyValueCache
from clo.train.objective import KEYS, sequence_logps


def group_logps(model, batch: dict, keys, chunk: int = 0, unwrapped=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One forward over the sequences of `keys`: key -> (summed answer log-probs [B], answer tokens [B]).

    Logits are computed only from the first answer position of the batch on (`logits_to_keep`). With `chunk` > 0
    they are never whole: the decoder's hidden states go through the output layer and the log-softmax `chunk`
    answer positions at a time (`chunked_answer_logps`), the same numbers in a fraction of the memory.

    `unwrapped` is the model inside `model` when `model` is a wrapper (DistributedDataParallel, given by the Trainer's
    accelerator): its config and output layer are read there, but the forward still goes through the wrapper, since
    DDP all-reduces the gradients of a backward only after its own forward has run (a forward of the decoder alone
    would leave each process with its own gradient, silently). The wrapper's forward then returns the last hidden
    state (`hidden_states[-1]`, after the final norm) beside one position's logits.
    """
    inner = model if unwrapped is None else unwrapped
    width = max(batch[f"{k}_input_ids"].shape[1] for k in keys)
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    ids = torch.cat([pad(batch[f"{k}_input_ids"], 0) for k in keys])
    mask = torch.cat([pad(batch[f"{k}_attention_mask"], 0) for k in keys])
    labels = torch.cat([pad(batch[f"{k}_labels"], -100) for k in keys])
    first_answer = int((labels != -100).int().argmax(-1).min())
    if chunk and plain_output_layer(inner):
        if inner is model:
            hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            hidden = model(input_ids=ids, attention_mask=mask, logits_to_keep=1, output_hidden_states=True,
                           use_cache=False).hidden_states[-1]
        sums, counts = chunked_answer_logps(inner.get_output_embeddings(), hidden[:, first_answer - 1 : -1],
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


class ReferenceCache(KeyValueCache):
    """sha256(base model, one sequence's token ids and labels) → its π_ref log-prob.

    `model` must say everything that changes the numbers: the base's fingerprint (clo.hub.model_fingerprint) and how
    it was loaded (4-bit or not, dtype). A sequence scored in another batch may differ in the last float32 digits
    (padding changes the order of sums), far below anything the loss can tell apart."""

    table, column, value_type = "reference_logps", "logp", "REAL"

    def __init__(self, path: Path, model: str):
        super().__init__(path)
        self.model = model

    def key(self, input_ids: list[int], labels: list[int]) -> str:
        return self.digest(self.model, input_ids, labels)


def read_reference_cache(features: list[dict], cache: ReferenceCache | None) -> dict[int, dict[str, str]]:
    """Fill in the π_ref values of the pairs whose four sequences are all in `cache`; returns each pair's cache keys
    (by id of its feature dict)."""
    if cache is None:
        return {}
    keys = {id(f): {k: cache.key(f[f"{k}_input_ids"], f[f"{k}_labels"]) for k in KEYS} for f in features}
    known = cache.get([key for per in keys.values() for key in per.values()])
    for f in features:
        if all(key in known for key in keys[id(f)].values()):
            f.update({f"ref_{k}": known[key] for k, key in keys[id(f)].items()})
    return keys


@torch.no_grad()
def add_reference_logps(model, features: list[dict], collator: PairCollator, batch_size: int, should_stop=lambda: False,
                        chunk: int = 0, cache: ReferenceCache | None = None) -> int:
    """π_ref log-probs of the four sequences of every pair, with the LoRA adapter disabled, stored in the features.
    Pairs whose four sequences are all in `cache` are not scored again; the rest are scored and added to it.
    Returns how many pairs came from the cache."""
    from tqdm.auto import tqdm

    keys = read_reference_cache(features, cache)
    todo = [f for f in features if f"ref_{KEYS[0]}" not in f]
    if not todo:
        return len(features)
    was_training = model.training
    model.eval()
    with model.disable_adapter():
        for start in tqdm(range(0, len(todo), batch_size), desc="reference log-probs", unit="batch", disable=not ranks.is_main()):
            if should_stop():
                raise TrainingStopped()
            rows = todo[start : start + batch_size]
            batch = {k: v.to(model.device) for k, v in collator(rows).items()}
            for key, (sums, _) in group_logps(model, batch, KEYS, chunk).items():
                for f, value in zip(rows, sums.tolist()):
                    f[f"ref_{key}"] = value
            if cache is not None:  # batch by batch: a stopped run keeps what it scored
                cache.put({keys[id(f)][k]: f[f"ref_{k}"] for f in rows for k in KEYS})
    model.train(was_training)
    return len(features) - len(todo)


def share_reference_logps(model, features: list[dict], collator: PairCollator, batch_size: int, should_stop=lambda: False,
                          chunk: int = 0, cache: ReferenceCache | None = None) -> int:
    """`add_reference_logps` over the processes of a run (clo.train.ranks): the main process reads the cache, each
    process scores every N-th of the pairs left (its share), and all values are gathered on every process; only the
    main process writes them to the cache (one SQLite writer). One process: `add_reference_logps` itself. `model` may
    be the Trainer's FSDP-sharded model (clo.train.trainer.ReferencePass): then every process must run it as often as
    the others, which the shares below ensure."""
    if ranks.world_size() == 1:
        return add_reference_logps(model, features, collator, batch_size, should_stop, chunk, cache)
    keys = read_reference_cache(features, cache) if ranks.is_main() else {}  # each sequence's cache key, hashed once
    values = lambda f: {k: f[f"ref_{k}"] for k in KEYS}  # noqa: E731
    known = ranks.share([values(f) if f"ref_{KEYS[0]}" in f else None for f in features])
    todo = [i for i, v in enumerate(known) if v is None]
    mine = todo[ranks.rank()::ranks.world_size()]
    # every process the same number of batches: under FSDP each forward is a collective every process must join, so
    # a process with one pair fewer scores a copy of its first pair again (a result nobody keeps)
    share = -(-len(todo) // ranks.world_size())
    extra = [dict(features[todo[0]]) for _ in range(share - len(mine))]
    add_reference_logps(model, [features[i] for i in mine] + extra, collator, batch_size, should_stop, chunk)
    for i, v in enumerate(known):
        if v is not None:
            features[i].update({f"ref_{k}": x for k, x in v.items()})
    for scored in ranks.gather({i: values(features[i]) for i in mine}):
        for i, v in scored.items():
            features[i].update({f"ref_{k}": x for k, x in v.items()})
    if ranks.is_main() and cache is not None and todo:
        cache.put({keys[id(features[i])][k]: features[i][f"ref_{k}"] for i in todo for k in KEYS})
    return len(features) - len(todo)
