#!/usr/bin/env bash
# The prepared device command for a lent GPU: the gpu-marked tests, with 2 GPUs or more bench/ddp.py (several
# processes), then bench/gpu.py, all output under $OUT.
#
#   bash bench/gpu-run.sh --fetch    here, first: download the wheels the GPU machine lacks into .whl/ (git-ignored)
#   bash bench/gpu-run.sh            there: install those wheels, print the stack, run the tests and the benchmark
#
# The device tool's call:  run(command="bash bench/gpu-run.sh", carry=[".whl"], timeout_s=560)
# The GPU machine has Python 3.12, torch 2.11, transformers 5.17, peft and accelerate but no bitsandbytes, TRL or
# datasets, and no network. Carried (bench/README.md lists the sizes; 45 MB with the project's 1 MB):
# bitsandbytes (QLoRA), trl (the DPOTrainer baseline), and what trl imports that is missing there: datasets, dill,
# multiprocess. vLLM is not carried (hundreds of MB): the serving part measures the PEFT engine and says why not vLLM.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

if [ "${1:-}" = --fetch ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}" || exit 1
  du -b .whl/*.whl | awk '{printf "%6.1f MB  %s\n", $1 / 1e6, $2; t += $1} END {printf "%6.1f MB  in all\n", t / 1e6}'
  exit 0
fi

OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/clo-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/clo-site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in .whl/: run 'bash bench/gpu-run.sh --fetch' here first and carry .whl"
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import sys, importlib.metadata as m
print("python", sys.version.split()[0])
for n in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "pyarrow", "numpy", "tokenizers"):
    try: print(n, m.version(n))
    except m.PackageNotFoundError: print(n, "absent")'
} 2>&1 | tee "$OUT/env.txt"
status=0
timeout 180 python3 -m pytest -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" || status=1
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$gpus" -ge 2 ]; then  # one process, 2-process DDP and 2-process FSDP side by side (bench/ddp.py), then less for gpu.py
  timeout 150 python3 bench/ddp.py --out "$OUT" 2>&1 | tee "$OUT/ddp.log" || status=1
  timeout 330 python3 bench/gpu.py --out "$OUT" --budget-s 270 "$@" 2>&1 | tee "$OUT/bench.log" || status=1
else
  echo "$gpus GPU: the 2-process DDP / FSDP step (bench/ddp.py) needs 2 GPUs, so it did not run" | tee "$OUT/ddp.log"
  timeout 470 python3 bench/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" || status=1
fi
exit $status
