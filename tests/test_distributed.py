"""Several training processes: `torchrun --nproc_per_node 2 -m clo train` and `accelerate launch` with
recipes/accelerate/ddp-2.yaml, on the CPU (gloo), train the tiny model's adapter to the same weights as one process on
the same global batch, and write one adapter and one run folder; so does training.parallel: fsdp, the model sharded by
FSDP2 (tests/fsdp_on_cpu.py lets accelerate shard CPU processes), with a full-precision and a 4-bit base. Without that,
fsdp on CPUs is refused, as are several methods under fsdp."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_clo

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed has no gloo backend here")

# 8 pairs, 2 optimiser steps of 4 pairs: 2 processes × batch 2, against 1 process × batch 2 × accumulation 2.
# No dropout, no warm-up, a constant rate: the adapters can differ only by how the gradients were combined. Plain SGD,
# whose step is the gradient itself: Adam's first steps are about lr·sign(g), blind to a gradient's scale, and they
# turn the float noise of a near-zero gradient element into a whole step.
COMMON = ["train", "--lang", "sw", "--method", "clo", "--pairs", "8", "--max-steps", "2", "--batch-size", "2",
          "--training.max_length", "128", "--training.max_prompt_length", "64", "--lora.dropout", "0",
          "--training.warmup", "0", "--training.lr_scheduler", "constant", "--training.optim", "sgd",
          "--training.learning_rate", "0.5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


TORCHRUN = lambda port: ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",  # noqa: E731
                          "--master_port", str(port)]
LAUNCHERS = {  # the two ways a user starts several processes (-m clo train follows either), and FSDP on the CPU
    "torchrun": lambda port: [*TORCHRUN(port), "-m", "clo"],
    "accelerate": lambda port: ["-m", "accelerate.commands.launch", "--config_file",
                                str(ROOT / "recipes" / "accelerate" / "ddp-2.yaml"), "--main_process_port", str(port),
                                "-m", "clo"],
    # training.parallel: fsdp, with accelerate's one CPU refusal turned off (tests/fsdp_on_cpu.py says why)
    "fsdp": lambda port: [*TORCHRUN(port), str(ROOT / "tests" / "fsdp_on_cpu.py")],
}
EXTRA = {"fsdp": ["--training.parallel", "fsdp"]}


def launch(launcher: str, cwd: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *LAUNCHERS[launcher](free_port()), *COMMON, "--model", str(model),
                           "--name", "two", *EXTRA.get(launcher, []), *extra], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def launch_two(launcher: str, cwd: Path, model: Path) -> Path:
    """`<launcher> -m clo train` on 2 CPU processes in its own folder; checks there is one of everything; the adapter."""
    r = launch(launcher, cwd, model)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("[clo] run ") == 1 and "2 processes" in r.stdout  # printed by the main process only
    assert r.stdout.count("[clo] wrote adapters/two") == 1
    assert r.stderr.count("fsdp_on_cpu: FSDP over gloo") == (2 if launcher == "fsdp" else 0)  # both processes sharded
    assert [p.name for p in (cwd / "adapters").iterdir()] == ["two"]
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1
    events = [json.loads(line)["event"] for line in (runs[0] / "log.jsonl").read_text().splitlines()]
    assert events.count("reference_begin") == events.count("train_begin") == events.count("done") == 1
    manifest = json.loads((cwd / "adapters" / "two" / "manifest.json").read_text())
    metrics = json.loads((cwd / "adapters" / "two" / "metrics.json").read_text())
    assert manifest["world_size"] == 2 and metrics["steps"] == 2 and metrics["pairs_seen"] == 8
    assert manifest["parallel"] == ("fsdp" if launcher == "fsdp" else "ddp")
    return cwd / "adapters" / "two"


@pytest.mark.slow
def test_two_processes_train_the_one_process_adapter(project, tiny_model):
    launched = {launcher: adapter_tensors(launch_two(launcher, project / launcher, tiny_model)) for launcher in LAUNCHERS}
    # one process, the same 4 pairs per step in two micro-batches of 2 (what the 2 processes each take)
    assert run_clo(*COMMON, "--model", tiny_model, "--name", "one", "--training.grad_accum", "2", cwd=project).returncode == 0
    # the control: what the main process alone would have trained had the gradients not been all-reduced
    assert run_clo(*COMMON, "--model", tiny_model, "--name", "half", cwd=project).returncode == 0
    assert json.loads((project / "adapters" / "one" / "manifest.json").read_text())["world_size"] == 1
    one, half = (adapter_tensors(project / "adapters" / name) for name in ("one", "half"))
    for launcher, two in launched.items():
        assert two.keys() == one.keys() and any("lora_B" in k and v.abs().max() > 0 for k, v in two.items())
        # measured: DDP ≤ 7e-8 apart, on values up to 4e-2; FSDP ≤ 1.3e-7 (its logits come whole from the forward
        # and its reduce-scatter adds in another order), still 2,000 times below the control's smallest gap
        atol = 5e-7 if launcher == "fsdp" else 1e-7
        for k in two:
            assert torch.allclose(two[k], one[k], rtol=1e-5, atol=atol), (launcher, k)
        for k in (k for k in two if "lora_B" in k):  # measured: 3e-4 to 3e-2 apart, a whole update: it can fail
            assert not torch.allclose(two[k], half[k], rtol=1e-5, atol=1e-7), (launcher, k)

def test_chunked_logps_through_a_wrapper_match_the_bare_model(project, tiny_model):
    """Under DDP the forward goes through the wrapper (so that its gradient all-reduce runs) and the chunked output
    layer reads the last hidden state it returns: the same log-probs and gradients as the decoder called directly."""
    from peft import LoraConfig, get_peft_model

    from clo.config import Recipe
    from clo.train.batches import PairCollator
    from clo.train.logps import group_logps
    from clo.train.objective import KEYS
    from clo.train.run import setup

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel is to group_logps: a forward and a .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    s = setup(Recipe.load(overrides={"model.name_or_path": str(tiny_model), "data.pairs": 3, "training.max_length": 128,
                                     "training.max_prompt_length": 64}))
    torch.manual_seed(0)
    model = get_peft_model(s.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = PairCollator(s.tokenizer.pad_token_id, KEYS)(s.features)
    results = []
    for outer, inner in ((model, None), (Wrapper(model), model)):
        model.zero_grad()
        out = group_logps(outer, batch, KEYS, chunk=5, unwrapped=inner)
        sum(v[0].sum() * (i + 1) for i, v in enumerate(out.values())).backward()
        results.append((out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (bare, g_bare), (wrapped, g_wrapped) = results
    for key in KEYS:
        assert torch.allclose(wrapped[key][0], bare[key][0], atol=1e-5) and torch.equal(wrapped[key][1], bare[key][1])
    assert g_bare.keys() == g_wrapped.keys() and g_bare
    for k in g_bare:
        assert torch.allclose(g_wrapped[k], g_bare[k], atol=1e-6, rtol=1e-5), k


def test_fsdp_on_cpu_processes_is_refused_leaving_nothing(project, tiny_model):
    """accelerate shards with FSDP only on GPU-like processes: on CPU ones it would train plain DDP while the recipe
    says fsdp, so the run stops with one sentence and leaves no adapter and no run folder."""
    r = launch("torchrun", project / "cpu", tiny_model, "--training.parallel", "fsdp")
    assert r.returncode != 0
    assert "training.parallel: fsdp needs GPUs" in r.stderr and "use training.parallel: ddp here" in r.stderr
    assert not (project / "cpu" / "adapters").exists() and not any((project / "cpu" / "runs").iterdir())


def test_fsdp_refuses_several_methods(tiny_model, monkeypatch):
    """Checked before anything loads: FSDP shards the base in place, so one method per launch."""
    from clo import CLOError
    from clo.config import Recipe
    from clo.train.run import setup

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under a launcher; nothing here joins a process group
    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "method.method": ["clo", "sft"],
                                    "training.parallel": "fsdp"})
    with pytest.raises(CLOError, match=r"fsdp trains one method per launch; launch once for each of clo, sft"):
        setup(recipe)
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process ignores training.parallel
    assert setup(Recipe.load(overrides={"model.name_or_path": str(tiny_model), "data.pairs": 2,
                                        "training.parallel": "fsdp"})).features


@pytest.mark.slow
def test_fsdp_shards_a_4bit_base_with_gradient_checkpointing(project, tiny_model):
    """QLoRA under FSDP: the 4-bit base (packed weights stored in the compute dtype) sharded over 2 processes, with
    gradient checkpointing on (auto with 4-bit), trains the one-process 4-bit adapter. FSDP's own activation
    checkpointing once wrapped each layer so that PEFT's saving found no LoRA weight (an adapter of 0 tensors);
    transformers' checkpointing is used instead, and `check_saved` would stop such an adapter."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    four = ("--model.load_in_4bit", "true")
    r = launch("fsdp", project / "fsdp-4bit", tiny_model, *four)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "mode: qlora-4bit" in r.stdout and r.stderr.count("fsdp_on_cpu: FSDP over gloo") == 2
    assert run_clo(*COMMON, "--model", tiny_model, "--name", "one", "--training.grad_accum", "2", *four,
                   cwd=project).returncode == 0
    assert run_clo(*COMMON, "--model", tiny_model, "--name", "half", *four, cwd=project).returncode == 0
    two = adapter_tensors(project / "fsdp-4bit" / "adapters" / "two")
    one, half = (adapter_tensors(project / "adapters" / name) for name in ("one", "half"))
    assert two.keys() == one.keys() and len(two) == 16
    for k in two:  # measured: ≤ 2.1e-7 apart
        assert torch.allclose(two[k], one[k], rtol=1e-5, atol=5e-7), k
    for k in (k for k in two if "lora_B" in k):  # measured: ≥ 2.5e-4 apart
        assert not torch.allclose(two[k], half[k], rtol=1e-5, atol=1e-7), k


def test_an_adapter_missing_trained_weights_is_not_written(tmp_path, tiny_model):
    """An adapter whose file would hold fewer tensors than the model trained (PEFT's saving did not see them, as under
    FSDP's activation checkpointing) stops the save; the staging folder goes, nothing lands."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from clo import CLOError
    from clo.config import Recipe
    from clo.train.data import CrossLingualData
    from clo.train.run import save_adapter

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj"]))
    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model)})
    data = CrossLingualData([], {})
    with pytest.raises(CLOError, match=r"holds 0 tensors but the model trained 4; nothing was written"):
        save_adapter(model, tmp_path / "empty", recipe, "clo", data, "lora-float32", {}, [], False, weights={})
    assert list(tmp_path.iterdir()) == []
    assert save_adapter(model, tmp_path / "whole", recipe, "clo", data, "lora-float32", {}, [], False) == tmp_path / "whole"


@pytest.mark.parametrize("variable", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"])
def test_several_processes_without_a_torch_launcher_are_refused(project, tiny_model, monkeypatch, variable):
    """mpirun or a bare `srun --ntasks N` starts N processes that set no WORLD_SIZE: each would train the whole run
    alone and write the same adapter. One sentence instead, before anything loads; one task of a SLURM step is fine."""
    from clo import CLOError
    from clo.config import Recipe
    from clo.train.run import train

    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "data.pairs": 2, "training.max_steps": 1,
                                    "method.method": ["sft"], "training.max_length": 128,
                                    "training.max_prompt_length": 64})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(variable, "4")
    with pytest.raises(CLOError, match=rf"^{variable}=4: several processes were started without torchrun"):
        train(recipe)
    assert not (project / "runs").exists() and not (project / "adapters").exists()
    monkeypatch.setenv(variable, "1")
    assert [p.name for p in train(recipe)] == [recipe.adapter_name("sft")]


@pytest.mark.slow
def test_a_second_run_on_several_processes_reads_the_reference_cache(project, tiny_model):
    """π_ref is cached by the main process; a second launch in the same folder reads every pair from that cache
    (which the other process does not hold: it once failed there, printing the cache's path)."""
    first = launch("torchrun", project / "runs2", tiny_model)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch("torchrun", project / "runs2", tiny_model, "--name", "again")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[clo] reference log-probs: 8 of 8 pairs from cache/reference_logps.sqlite" in second.stdout
    assert sorted(p.name for p in (project / "runs2" / "adapters").iterdir()) == ["again", "two"]
