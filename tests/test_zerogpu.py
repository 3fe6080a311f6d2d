"""ZeroGPU: Compare and the Arena answer from inside a forked `spaces.GPU` worker as the parent's engine would.

spaces 0.51.3 runs a decorated call in a process forked from the app (`spaces/zero/wrappers.py`:
`multiprocessing.get_context('fork')`, the arguments pickled into a queue, the result, or each item a generator
yields, pickled back; the task run in a thread of the child; the worker kept for the next call). The real decorator
cannot take that path on this CPU machine: with SPACES_ZERO_GPU unset `spaces.GPU` returns the function unchanged
(`zero/decorator.py`: `if not Config.zero_gpu: return task`), and with it set `spaces.config` requires
SPACES_ZERO_DEVICE_API_URL, `import spaces` patches torch.cuda (`is_available()` becomes True for the whole test
process), every call first asks Hugging Face's device API for a GPU over HTTP (`client.schedule`), and the forked
worker's `worker_init` runs `torch.init`, i.e. `torch.Tensor([0]).cuda()`, which a CPU build of torch cannot do.
Running it would mean faking the device API and CUDA, so `SpacesFork` below reproduces the fork path itself, as
wrappers.py does it, and stands in for `clo.app.jobs.on_gpu`; nothing here pretends to be the `spaces` package.
"""

import inspect
import multiprocessing
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from clo import CLOError
from conftest import make_adapters

FORK = multiprocessing.get_context("fork")  # what spaces 0.51.3 uses (wrappers.py: multiprocessing_ctx)
ANSWER_S = 120  # a forked worker that has not answered in this long is stuck: fail, never hang the run


def _worker(task, args_queue, res_queue, stop) -> None:
    """The child, as wrappers.py's `thread_wrapper`: forever take one call's arguments, run the task in a thread of
    its own (a ThreadPoolExecutor), send back its value, or each item it yields until `stop` is set; an exception
    travels as its class name only, as spaces sends any exception but a gr.Error."""
    while True:
        args, kwargs = args_queue.get()
        if inspect.isgeneratorfunction(task):
            stop.clear()

            def iterate():
                gen = task(*args, **kwargs)
                for item in gen:
                    if stop.is_set():
                        gen.close()
                        break
                    res_queue.put(("ok", item))

            with ThreadPoolExecutor() as pool:
                done = pool.submit(iterate)
            if done.exception() is not None:
                res_queue.put(("error", type(done.exception()).__name__))
            res_queue.put(("end", None))
        else:
            with ThreadPoolExecutor() as pool:
                done = pool.submit(task, *args, **kwargs)
            error = done.exception()
            res_queue.put(("error", type(error).__name__) if error is not None else ("ok", done.result()))


class SpacesFork:
    """`spaces.GPU`'s fork path, for `on_gpu(task, duration)`: one worker per task, forked at its first call and
    kept for the next ones (spaces keeps it while the same GPU stays attached); `fresh=True` forks a new one per
    call; a worker that sends nothing for `answer_s` seconds raises queue.Empty. `pids` holds the worker processes' ids; `close()` ends them."""

    def __init__(self, fresh: bool = False, answer_s: float = ANSWER_S):
        self.fresh, self.answer_s, self.workers, self.pids = fresh, answer_s, {}, []

    def __call__(self, task, duration: int = 60):
        def worker():
            if self.fresh or task not in self.workers:
                args_queue, res_queue, stop = FORK.Queue(), FORK.Queue(), FORK.Event()
                process = FORK.Process(target=_worker, args=(task, args_queue, res_queue, stop), daemon=True)
                process.start()
                self.pids.append(process.pid)
                self.workers[task] = (process, args_queue, res_queue, stop)
            return self.workers[task]

        def call(*args, **kwargs):
            _, args_queue, res_queue, _ = worker()
            args_queue.put((args, kwargs))
            kind, value = res_queue.get(timeout=self.answer_s)
            if kind == "error":
                raise RuntimeError(f"ZeroGPU worker error: {value}")
            return value

        def generate(*args, **kwargs):
            _, args_queue, res_queue, stop = worker()
            args_queue.put((args, kwargs))
            try:
                while (item := res_queue.get(timeout=self.answer_s))[0] != "end":
                    if item[0] == "error":
                        raise RuntimeError(f"ZeroGPU worker error: {item[1]}")
                    yield item[1]
            except GeneratorExit:  # spaces sets the stop event, then reads on to the worker's end before returning
                stop.set()
                while res_queue.get(timeout=self.answer_s)[0] != "end":
                    pass
                raise

        return generate if inspect.isgeneratorfunction(task) else call

    def close(self) -> None:
        for process, *_ in self.workers.values():
            process.kill()
            process.join(10)


@pytest.fixture
def services(tiny_model, project):
    """The app's services on the tiny model (PEFT engine, sft-ko and clo-ko), short answers with a repetition penalty."""
    from clo.app.context import Services
    from clo.app.settings import Settings

    make_adapters(tiny_model, project / "adapters")
    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db",
                                 max_tokens=24, repetition_penalty=1.3))
    yield services
    services.engine.close()


@pytest.fixture
def zerogpu(monkeypatch):
    """Services as on a ZeroGPU Space, each spaces.GPU call run by `SpacesFork` in a forked worker."""
    import clo.app.context
    import clo.app.zerogpu

    gpu = SpacesFork()
    monkeypatch.setattr(clo.app.context, "ZERO_GPU", True)
    monkeypatch.setattr(clo.app.zerogpu, "on_gpu", gpu)
    yield gpu
    gpu.close()


def test_the_threaded_engine_never_answers_in_a_forked_child(services):
    """Why the direct path exists: a forked child has no scheduler thread, so `engine.generate` waits forever there,
    while `generate_here` answers with the parent's own answers."""
    engine = services.engine
    requests = services.requests("서울에서 가 볼 만한 곳은?", ["base", "sft-ko", "clo-ko"])
    expected = [a.text for a in engine.generate(requests)]
    gpu = SpacesFork(fresh=True, answer_s=5)
    try:
        with pytest.raises(queue.Empty):  # the threaded path: no answer in 5 s (ever: the worker is killed below)
            gpu(lambda r: engine.worker.is_alive() or engine.generate(r))(requests)
        assert [a.text for a in gpu(engine.generate_here)(requests)] == expected
        assert gpu(lambda: engine.worker.is_alive())() is False and engine.worker.is_alive()
    finally:
        gpu.close()


def test_compare_on_zerogpu_answers_from_the_worker_as_the_parent_does(services, zerogpu, monkeypatch):
    """Compare's requests (both languages, all three slots, one batch) decoded in the forked worker give the parent's
    greedy answers, by `/compare` (Services.generate) and streamed by the tab (Services.stream, several snapshots)."""
    import clo.app.context
    from clo.app.ui.compare import compare_api, compare_stream

    prompt, english = "서울에서 가 볼 만한 곳은?", "What is worth seeing in Seoul?"
    monkeypatch.setattr(clo.app.context, "ZERO_GPU", False)
    expected_api = compare_api(services, prompt, "ko", english)
    expected_seen = []
    for _ in compare_stream(services, prompt, "ko", english, seen=expected_seen):
        pass
    monkeypatch.setattr(clo.app.context, "ZERO_GPU", True)
    generates = services.engine.stats["generates"]

    answered = compare_api(services, prompt, "ko", english)
    texts = lambda out: [(a["variant"], a["text"]) for side in ("target", "english") for a in out[side]]
    assert texts(answered) == texts(expected_api) and len(texts(answered)) == 6
    assert {a["batch"] for side in ("target", "english") for a in answered[side]} == {6}  # one batch of six rows
    seen, snapshots = [], 0
    for _ in compare_stream(services, prompt, "ko", english, seen=seen):
        snapshots += 1
    assert snapshots > 3 and [a.text for a in seen] == [a.text for a in expected_seen]  # streamed, the same answers
    assert services.engine.stats["generates"] == generates  # decoded in the worker, not by the parent's engine
    assert len(zerogpu.pids) == 2 and os.getpid() not in zerogpu.pids  # one worker per decorated function


def test_a_battle_on_zerogpu_streams_from_the_worker(services, zerogpu):
    """The Arena's battle streams from the worker, and its stored answers are what the parent's engine answers."""
    from clo.evaluate.arena import battle_stream

    prompt = "부산에서 가 볼 만한 곳은?"
    shown = list(battle_stream(services, prompt, "ko", voter="v"))
    assert len(shown) > 3 and "battle_id" in shown[-1] and zerogpu.pids
    reveal = services.store.vote(shown[-1]["battle_id"], "tie", voter="v")
    expected = services.engine.generate(services.requests(prompt, [reveal["variant_a"], reveal["variant_b"]]))
    assert [shown[-1]["answer_a"], shown[-1]["answer_b"]] == [a.text for a in expected]


def test_a_kept_worker_catches_up_with_an_adapter_loaded_after_its_fork(services, zerogpu, tiny_model, project):
    """spaces keeps a worker between calls: an adapter the Train tab hot-loads afterwards is loaded in the worker
    too; a stream closed half-way leaves the worker free for the next call."""
    from clo.models.tiny import build_random_adapter

    requests = services.requests("서울에서 가 볼 만한 곳은?", ["base", "clo-ko"])
    first = services.stream(requests)
    next(first)
    first.close()  # the visitor left: the worker stops at the next step
    assert [a.text for a in services.generate(requests)] == [a.text for a in services.engine.generate(requests)]
    services.engine.add_adapter(build_random_adapter(tiny_model, project / "adapters" / "clo-ko-new", seed=9))
    late = services.requests("서울에서 가 볼 만한 곳은?", ["clo-ko-new"])
    assert [a.text for a in services.generate(late)] == [a.text for a in services.engine.generate(late)]
    assert len(zerogpu.pids) == 2  # the same generate worker answered every call (and the one stream worker)


def test_a_worker_forked_while_the_model_was_busy_refuses_in_one_sentence(services, zerogpu):
    """A lock held by a parent thread at fork time stays held in the child: the worker neither waits on it nor
    decodes a model that may be half-changed; its refusal comes back as the sentence, not spaces' class name."""
    requests = services.requests("서울에서 가 볼 만한 곳은?", ["base"])
    with services.engine.lock:  # what an adapter load or the scheduler's generate holds
        with pytest.raises(CLOError, match=r"^the GPU worker was forked while the server was loading an adapter or "
                                           r"decoding, so its copy of the model may be half-changed: try again$"):
            services.generate(requests)
    with pytest.raises(CLOError, match="unknown variant 'nope'"):  # refused before any GPU time is asked for
        services.generate(services.requests("hi", ["nope"]))


def test_zerogpu_serves_only_the_peft_engine(services, zerogpu, monkeypatch):
    from clo.engines.base import Engine

    class Other(Engine):
        kind = "vllm"

        def stream(self, requests):
            raise AssertionError("never reached")

        def _load(self, adapter):
            pass

    monkeypatch.setattr(services, "engine", Other("m"))
    for call in (services.generate, services.stream):
        with pytest.raises(CLOError, match=r"^on ZeroGPU the app answers with the PEFT engine inside spaces.GPU calls, "
                                           r"not the vllm engine: start it with --engine peft"):
            call(services.requests("hi", ["base"]))
    assert not zerogpu.pids


def test_the_direct_path_in_the_parent_waits_for_the_scheduler(services):
    """In the process that built the engine the direct path takes the engine's lock, so it never decodes beside the
    scheduler's generate or an adapter load."""
    engine = services.engine
    requests = services.requests("서울에서 가 볼 만한 곳은?", ["base", "sft-ko"])
    done = []
    with engine.lock:
        caller = threading.Thread(target=lambda: done.append(engine.generate_here(requests)))
        caller.start()
        caller.join(1.0)
        assert caller.is_alive() and not done
    caller.join(60)
    assert [a.text for a in done[0]] == [a.text for a in engine.generate(requests)]


@pytest.mark.slow
def test_a_training_run_on_zerogpu_runs_in_the_worker_and_is_served(services, zerogpu, tiny_model, monkeypatch):
    """The Train tab on ZeroGPU: the run goes through one spaces.GPU call from a thread (transformers' Trainer in the
    forked worker), its output and outcome land in output.log, and the adapter it wrote is hot-loaded here and
    answered by a generate worker like the parent's engine answers."""
    import time

    import clo.app.jobs
    from clo.config import Recipe

    monkeypatch.setattr(clo.app.jobs, "ZERO_GPU", True)
    monkeypatch.setattr(clo.app.jobs, "on_gpu", zerogpu)
    before = services.generate(services.requests("서울에서 가 볼 만한 곳은?", ["base"]))  # a generate worker, forked now
    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": "clo", "data.pairs": 8,
                                    "training.max_steps": 3, "training.max_length": 128, "training.max_prompt_length": 64,
                                    "training.name": "zero-{method}-{lang}"})
    job = services.jobs.start(None, recipe)
    assert job["command"] == "clo.train.run.train (in process, ZeroGPU)" and services.jobs.running()
    deadline = time.time() + 300
    while services.jobs.running() and time.time() < deadline:
        time.sleep(0.5)
    log = services.jobs.tail(200)
    assert not services.jobs.running() and log.splitlines()[-1].startswith("done: "), log
    assert "[clo]" in log  # the worker's printed lines, as a subprocess run's
    assert len(zerogpu.pids) == 2  # the run had a worker of its own
    assert services.jobs.hot_load(None) == ["zero-clo-ko"]
    requests = services.requests("서울에서 가 볼 만한 곳은?", ["base", "zero-clo-ko"])
    assert [a.text for a in services.generate(requests)] == [a.text for a in services.engine.generate(requests)]
    assert before[0].text == services.engine.generate(requests[:1])[0].text
