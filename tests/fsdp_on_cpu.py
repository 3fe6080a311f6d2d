"""Not a test: `python tests/fsdp_on_cpu.py train ...` is `python -m clo train ...` with accelerate's FSDP allowed on
CPU processes, so that tests/test_distributed.py can run training.parallel: fsdp on a machine without GPUs.

accelerate 1.16 turns an FSDP plugin into FSDP only for GPU-like process groups (AcceleratorState, state.py); on CPU
processes (gloo) it quietly keeps plain data parallelism, which clo refuses (clo.train.trainer.CLOTrainer). Here that
one decision is made the other way: the model is then really sharded by torch's fully_shard (FSDP2) over gloo, every
other line of accelerate, transformers and clo runs as it would on GPUs. It says so on stderr, once per process.
"""

import runpy
import sys

import accelerate.state as state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _init_allowing_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        print("fsdp_on_cpu: FSDP over gloo", file=sys.stderr, flush=True)


state.AcceleratorState.__init__ = _init_allowing_cpu_fsdp
sys.argv = ["clo", *sys.argv[1:]]
runpy.run_module("clo", run_name="__main__", alter_sys=True)
