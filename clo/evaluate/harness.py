"""`python -m clo evaluate`: the base model and its adapters scored on lm-evaluation-harness tasks, the guard first.

    python -m clo evaluate --model smollm2 --adapters base,sft-sw,clo-sw --tasks smoke --json   # offline
    python -m clo evaluate --model Qwen/Qwen2.5-3B-Instruct --adapters base,clo-ko --lang ko --limit 200

The base model is loaded once (clo.engines.peft_engine.PeftEngine: every adapter in one PeftModel) and wrapped in
lm-eval's HFLM; `simple_evaluate` scores each variant with its adapter active (`set_adapter`), the base with every
adapter off (`disable_adapter()`), on the same items: the first `--limit` of each task, few-shot examples drawn
with lm-eval's fixed seed; the items' hash (ids and prompts) must be equal for every variant, else the run fails.

The guard: lm-eval documents that in some setups an adapter was silently not applied and the base model's scores
were reported as the adapter's. Before an adapter is scored on a task, the log-likelihoods of the task's first
GUARD_REQUESTS requests are computed with it and with the base; equal to float tolerance means the adapter changes
nothing (all its lora_B zero, or not applied), and it is reported and stored as "no effect: identical to the base",
never with a score of its own.

Results go to the vote store's database (clo.evaluate.benchmarks): one row per variant, task and metric (acc,
acc_norm). The real tasks download their datasets from the hub once (then the datasets cache serves them
offline); with the hub unreachable and a dataset not cached, one sentence names it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import math
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field

from clo import CLOError
from clo.engines.base import BASE
from clo.evaluate.benchmarks import (APPLIED, METRICS, NO_EFFECT, NO_EFFECT_NOTE, BenchmarkRow, chance_of,
                                     default_tasks, near_chance, smoke_dir, task_language)

# lm-eval's warnings that say nothing to this command's user: the model is passed loaded on purpose, the smoke
# task's loader takes no --metadata, and --num-fewshot is meant to override the task's default
QUIET = ("Custom kwargs can be passed", "`pretrained` model kwarg is not of type", "Passed an already-initialized model",
         "Overwriting default num_fewshot")


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(q in str(record.msg) for q in QUIET)


for _name in ("lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.evaluator"):
    logging.getLogger(_name).addFilter(_Quiet())

GUARD_REQUESTS = 8  # log-likelihood requests per task compared between an adapter and the base
GUARD_TOLERANCE = 1e-6  # relative and absolute: a zero lora_B adds exact zeros, so equal means bit-equal in practice
BOOTSTRAP = 1000  # lm-eval's bootstrap resamples for metrics without a closed form (KoBEST's f1; acc has one)


@dataclass
class Evaluation:
    """What one run measured: the stored rows, and per variant the seconds and requests its scoring took."""

    base_model: str
    base_hash: str | None
    tasks: list[str]
    num_fewshot: int
    limit: int | None
    lm_eval: str
    run_id: str
    rows: list[BenchmarkRow] = field(default_factory=list)
    no_effect: dict[str, list[str]] = field(default_factory=dict)  # variant -> tasks the guard stopped
    seconds: dict[str, float] = field(default_factory=dict)  # variant -> seconds scoring (simple_evaluate)
    requests: dict[str, int] = field(default_factory=dict)  # variant -> log-likelihood requests scored

    def as_json(self) -> dict:
        return {"base_model": self.base_model, "base_hash": self.base_hash, "tasks": self.tasks,
                "num_fewshot": self.num_fewshot, "limit": self.limit, "lm_eval": self.lm_eval, "run_id": self.run_id,
                "no_effect": self.no_effect, "seconds": self.seconds, "requests": self.requests,
                "rows": [asdict(r) for r in self.rows]}


@functools.lru_cache(maxsize=1)
def task_manager():
    """lm-eval's TaskManager with the project's own tasks (assets/benchmarks: smoke_en, smoke_ko, smoke_sw, smoke);
    built once a process (it indexes some 10,000 task files, seconds), each `load` builds its tasks anew."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(smoke_dir()))


def leaf_tasks(names: list[str], manager) -> list[str]:
    """`names` with groups and tags expanded to their tasks (smoke → smoke_en, smoke_ko, smoke_sw), in order, once
    each; an unknown name is one sentence."""
    index = manager.task_index
    out: list[str] = []

    def expand(name: str, depth: int = 0) -> None:
        entry = index.get(name)
        if entry is None:
            near = difflib.get_close_matches(name, list(index), n=4, cutoff=0.6)
            raise CLOError(f"lm-evaluation-harness has no task {name!r}" +
                           (f" (similar: {', '.join(near)})" if near else "") +
                           "; `python -m lm_eval ls tasks` lists them, and `smoke` is this project's offline task")
        kind = entry.kind.name if hasattr(entry.kind, "name") else str(entry.kind)
        if kind == "GROUP" and depth < 5:
            for child in (entry.cfg or {}).get("task") or []:
                expand(child if isinstance(child, str) else child.get("task"), depth + 1)
        elif kind == "TAG":
            for child in sorted(n for n, e in index.items() if name in e.tags):
                expand(child, depth + 1)
        elif name not in out:
            out.append(name)

    for name in names:
        expand(name)
    return out


def load_tasks(names: list[str], manager) -> dict:
    """The tasks' lm-eval objects, their datasets loaded (from the hub once, then its cache). With the hub
    unreachable, a dataset not in the cache is one sentence naming it, not a traceback."""
    from clo.hub import hub_online

    import datasets

    online = hub_online()
    was = datasets.config.HF_HUB_OFFLINE
    tasks = {}
    for name in names:
        try:
            # the hub does not answer: datasets reads its cache only, instead of retrying for a minute (its
            # setting is read once, at import; put back afterwards, so nothing else in this process changes)
            datasets.config.HF_HUB_OFFLINE = was or not online
            tasks[name] = manager.load([name])["tasks"][name]
        except CLOError:
            raise
        except Exception as e:  # noqa: BLE001 (datasets' and the hub's many failures: one sentence each)
            cfg = manager.task_index[name].cfg or {}
            what = cfg.get("dataset_path") or "its dataset"
            if cfg.get("dataset_name"):
                what += f" ({cfg['dataset_name']})"
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            if not online:
                raise CLOError(f"task {name} needs the dataset {what} from the Hugging Face hub, which is unreachable, "
                               "and it is not in the local datasets cache: run it once where the hub answers, or "
                               "use --tasks smoke offline") from None
            raise CLOError(f"cannot load the dataset {what} of task {name}: {reason}") from None
        finally:
            datasets.config.HF_HUB_OFFLINE = was
    return tasks


def evaluate(model: str, variants: list[str], tasks: list[str] | None = None, lang: str | None = None,
             limit: int | None = None, num_fewshot: int = 0, batch_size: int = 8, adapters_dir: str = "adapters",
             store=None, say=print) -> Evaluation:
    """Score `variants` ("base" and adapter names: folders under `adapters_dir` or hub repos owner/name[@rev]) of
    `model` on `tasks` (default: `lang`'s set, clo.evaluate.benchmarks.default_tasks); store the rows in `store`
    when given. `say` gets the progress lines."""
    try:
        import lm_eval
    except ImportError:  # a ZeroGPU Space's requirements leave it out (clo.app.space)
        raise CLOError("lm-evaluation-harness is not installed here: pip install lm_eval==0.4.13") from None
    from lm_eval.models.huggingface import HFLM

    from clo.engines import load_engine
    from clo.hub import served_name

    if not variants:
        raise CLOError("name the variants to score: --adapters base,ADAPTER,...")
    if limit is not None and limit < 1:
        raise CLOError(f"--limit must be at least 1 item per task, got {limit}")
    if num_fewshot < 0:
        raise CLOError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    names = [served_name(v) for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CLOError(f"variant {twice[0]!r} is named twice in --adapters")
    if tasks is None:
        if not lang:
            raise CLOError("name the tasks (--tasks smoke, or lm-eval task names) or a language (--lang ko) whose "
                           "default set to run")
        tasks = default_tasks(lang)
    manager = task_manager()
    leaves = leaf_tasks(tasks, manager)
    loaded = load_tasks(leaves, manager)  # before the model: a missing dataset is said at once
    engine = load_engine("peft", model=model, adapters_dir=adapters_dir, adapters=[v for v in variants if v != BASE])
    try:
        base_model, base_hash = engine.base_identity()
        run = Evaluation(base_model, base_hash, leaves, num_fewshot, limit, lm_eval.__version__, uuid.uuid4().hex[:12])
        net = engine.peft if engine.peft is not None else engine.base
        lm = HFLM(pretrained=net, tokenizer=engine.tokenizer, batch_size=batch_size)
        with engine.lock:  # the engine's scheduler thread stays idle: this thread owns the model meanwhile
            _score_all(run, engine, lm, loaded, manager, [served_name(v) for v in variants], say)
    finally:
        engine.close()
    if store is not None:
        store.record_benchmark(run.rows)
    return run


def _score_all(run: Evaluation, engine, lm, loaded: dict, manager, variants: list[str], say) -> None:
    import lm_eval

    guard, base_ll = {}, {}
    if any(v in engine.adapters for v in variants):  # the base's side of the guard, once for every adapter
        guard = {name: _guard_requests(task) for name, task in loaded.items()}
        with _variant(engine, BASE):
            base_ll = {name: _loglikelihoods(lm, requests) for name, requests in guard.items()}
    items: dict[str, str] = {}
    for variant in variants:
        adapter = engine.adapters.get(variant)
        mine = list(run.tasks)
        if adapter is not None:
            with _variant(engine, variant):
                same = [t for t in run.tasks if _equal(_loglikelihoods(lm, guard[t]), base_ll[t])]
            if same:
                run.no_effect[variant] = same
                say(f"[clo] {variant}: {NO_EFFECT_NOTE} on {', '.join(same)} (its log-likelihoods of "
                    f"{GUARD_REQUESTS} requests equal the base model's): not scored")
            mine = [t for t in run.tasks if t not in same]
        common = dict(base_model=run.base_model, base_hash=run.base_hash, variant=variant,
                      adapter_hash=adapter.sha256 if adapter else None, source=adapter.source if adapter else None,
                      num_fewshot=run.num_fewshot, item_limit=run.limit, lm_eval=run.lm_eval, run_id=run.run_id)
        for task in run.no_effect.get(variant, []):
            run.rows.append(BenchmarkRow(**common, task=task, task_version=None, language=task_language(task),
                                         metric=None, value=None, stderr=None, n=None, chance=None, items=None,
                                         effect=NO_EFFECT))
        if not mine:
            continue
        say(f"[clo] scoring {variant} on {', '.join(mine)}")
        start = time.perf_counter()
        with _variant(engine, variant):
            # the Task objects loaded once (load_tasks), not their names: no dataset is loaded again per variant
            results = lm_eval.simple_evaluate(model=lm, tasks=[loaded[t] for t in mine], num_fewshot=run.num_fewshot,
                                              limit=run.limit, task_manager=manager, bootstrap_iters=BOOTSTRAP,
                                              log_samples=True)
        run.seconds[variant] = round(time.perf_counter() - start, 3)
        run.requests[variant] = 0
        for task in mine:
            samples = results["samples"][task]
            digest = _items_hash(samples)
            if items.setdefault(task, digest) != digest:
                raise CLOError(f"{variant} was scored on other items of {task} than the variants before it; the "
                               "scores are not comparable, so none was stored")
            run.requests[variant] += sum(len(s["arguments"]) for s in samples)
            chance = sum(1 / len(s["arguments"]) for s in samples) / len(samples) if samples else chance_of(task)
            scores = results["results"][task]
            # the shots lm-eval used: a task whose config fixes 0 keeps 0 whatever --num-fewshot said
            shots = int(results.get("n-shot", {}).get(task, run.num_fewshot))
            for metric in METRICS:
                if f"{metric},none" not in scores:
                    continue
                stderr = scores.get(f"{metric}_stderr,none")
                run.rows.append(BenchmarkRow(
                    **{**common, "num_fewshot": shots}, task=task, task_version=str(results["versions"].get(task)),
                    language=task_language(task), metric=metric, value=float(scores[f"{metric},none"]),
                    stderr=float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
                    n=int(results["n-samples"][task]["effective"]), chance=chance, items=digest, effect=APPLIED))


@contextlib.contextmanager
def _variant(engine, variant: str):
    """The model as `variant`: every adapter off for the base, else that adapter active (PEFT's set_adapter)."""
    if engine.peft is None:  # no adapter loaded: the bare base model
        yield
    elif variant == BASE:
        with engine.peft.disable_adapter():
            yield
    else:
        engine.peft.set_adapter(variant)
        yield


def _guard_requests(task) -> list:
    """The task's first GUARD_REQUESTS log-likelihood requests (zero-shot), built as lm-eval builds them."""
    shots = task.get_config("num_fewshot")
    task.set_config(key="num_fewshot", value=0)
    try:
        task.build_all_requests(limit=GUARD_REQUESTS)
    finally:  # put back: simple_evaluate ignores --num-fewshot for a task whose config says 0
        task.set_config(key="num_fewshot", value=shots)
    return [r for r in task.instances if r.request_type == "loglikelihood"][:GUARD_REQUESTS]


def _loglikelihoods(lm, requests: list) -> list[float]:
    return [ll for ll, _greedy in lm.loglikelihood(requests, disable_tqdm=True)] if requests else []


def _equal(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=GUARD_TOLERANCE, abs_tol=GUARD_TOLERANCE)
                                    for x, y in zip(a, b))


def _items_hash(samples: list[dict]) -> str:
    """sha256 over the items a variant was scored on: each doc's id and the hash of its prompt (few-shot included)."""
    keys = sorted((s["doc_id"], s["prompt_hash"]) for s in samples)
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()


# ---- the command's output ----

def print_table(run: Evaluation, out=None) -> None:
    """The run's scores: one line per task and variant, accuracy and acc_norm with standard errors, n, chance."""
    out = out or sys.stdout
    shots = f"{run.num_fewshot}-shot" + (f", first {run.limit} items per task" if run.limit else ", every item")
    print(f"# {run.base_model} on lm-evaluation-harness {run.lm_eval} ({shots}); accuracy % ± standard error", file=out)
    by = {}
    for r in run.rows:
        by.setdefault((r.task, r.variant), {})[r.metric] = r
    width = max([len(v) for _, v in by] + [7])
    print(f"{'task':<20} {'variant':<{width}} {'acc':>13} {'acc_norm':>13} {'n':>5} {'chance':>6}  note", file=out)
    for (task, variant), m in by.items():
        if None in m:
            print(f"{task:<20} {variant:<{width}} {'—':>13} {'—':>13} {'':>5} {'':>6}  {NO_EFFECT_NOTE}", file=out)
            continue
        acc, norm = m.get("acc"), m.get("acc_norm")
        cells = [f"{100 * x.value:.1f} ± {100 * (x.stderr or 0):.1f}" if x else "" for x in (acc, norm)]
        first = acc or norm
        near = near_chance(first.value, first.stderr, first.chance, first.n)
        print(f"{task:<20} {variant:<{width}} {cells[0]:>13} {cells[1]:>13} {first.n:>5} "
              f"{100 * (first.chance or 0):>5.0f}%  {'near chance' if near else ''}", file=out)
    for variant, seconds in run.seconds.items():
        n = run.requests.get(variant, 0)
        per = f", {1000 * seconds / n:.1f} s per 1,000 log-likelihood requests" if n else ""
        print(f"[clo] {variant}: {n} requests in {seconds:.1f} s{per}", file=out)
