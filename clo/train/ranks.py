"""Several training processes (`torchrun --nproc_per_node N -m clo train ...`, `accelerate launch -m clo train ...`):
which one this is, and how they agree. One process (no launcher, WORLD_SIZE unset or 1) makes every call here a no-op.

    ranks.start()                       # the process group, before the model loads (gloo on CPU, NCCL on GPUs)
    with ranks.main_first(): ...        # the main process downloads / translates / caches first, the others then read
    run_dir = ranks.share(path)         # the main process's value on every process
    values = ranks.gather(mine)         # every process's value, in rank order, on every process

The main process (rank 0) alone prints, writes the run log, the adapter and its manifest (clo.train.run); the
Trainer wraps the model in DistributedDataParallel and shards the batches itself.
"""

from __future__ import annotations

import contextlib
import os
import sys


# the launcher's variables, not PartialState: they hold before start(), and one process builds no accelerate state
def world_size() -> int:
    """How many processes train together: the launcher's WORLD_SIZE (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def start() -> None:
    """Join the launcher's process group before anything is loaded, so that the processes can agree on the run folder
    and share the π_ref pass; accelerate picks the backend (gloo on the CPU, NCCL on CUDA) and each process's GPU
    (LOCAL_RANK). The Trainer's own setup later finds the group already there and keeps it."""
    if world_size() == 1:
        check_not_launched_bare()
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


# what MPI launchers (Open MPI, MPICH / Intel MPI, MVAPICH) and a SLURM job step tell each of several processes they
# start: a launcher that sets these but not WORLD_SIZE / RANK leaves every process believing it trains alone
_OTHER_LAUNCHERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def check_not_launched_bare() -> None:
    """One process by WORLD_SIZE, but several by another launcher's variables: stop with one sentence, before N
    processes each train the whole run and write the same adapter."""
    from clo import CLOError

    for name in _OTHER_LAUNCHERS:
        if os.environ.get(name, "1").strip().isdigit() and int(os.environ.get(name, "1")) > 1:
            raise CLOError(f"{name}={os.environ[name]}: several processes were started without torchrun or accelerate "
                           "launch, so each would train alone and write the same adapter; start them as "
                           "`torchrun --nproc_per_node N -m clo train ...` (under srun: one task per node running torchrun)")


def _group() -> bool:
    """Whether the process group is there (start() made it, and accelerate's state with it): accelerate's helpers
    are called only then, since PartialState() would otherwise set itself up (a device, a group) on the spot."""
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def share(value):
    """The main process's `value`, on every process (what the others pass is ignored)."""
    if not _group():
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def gather(value) -> list:
    """Every process's `value`, in rank order, on every process."""
    if not _group():
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])  # accelerate joins the processes' lists: a list of one value each


def any_process(flag: bool) -> bool:
    """True on every process when it is true on any: a stop decided at a step boundary by all processes together,
    since a process that stopped alone would leave the others waiting in the next gradient all-reduce."""
    return any(gather(bool(flag)))


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (a download, a translation written to a cache), the others after it,
    reading what it left; a failure on the main process ends the run there (the launcher stops the others)."""
    from accelerate import PartialState

    with PartialState().main_process_first() if _group() else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def quiet_unless_main():
    """Standard output only from the main process: N processes would print every line N times. Errors (stderr) still
    come from every process, so a failure on any one is seen."""
    if is_main() or world_size() == 1:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
        sys.stdout.flush()
