#!/usr/bin/env bash
# fedlocal on a lent GPU machine (issue 17): one command, results under $OUT.
#
# Prepare here first (wheels and data into the git-ignored .whl/ and .gpudata/):
#     python -m bench.gpu_check prepare
# Then, through the device tool, from the repository root, with carry [".whl", ".gpudata"]:
#     bash bench/gpu_check.sh
# Dry run on a machine without a GPU (flwr installed; the same checks on the CPU, smaller):
#     OUT=/tmp/gpucheck GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 bash bench/gpu_check.sh
#
# Steps, in order of importance, each under `timeout` (SIGTERM: the Python steps then stop
# the Flower processes they started) and within GPU_CHECK_BUDGET seconds for the whole
# script (default 370); a failed step does not stop the next:
#   install  flwr + deps from .whl/wheels-cp312.tar.xz into /tmp/site (skipped where flwr imports)
#   data     Fashion-MNIST to /usr/share/datasets/fashion-mnist, tiny Shakespeare to $WORK/data
#   env      versions, CUDA, the GPUs Ray sees                        (python -m bench.gpu_check env)
#   sim      Flower's simulation, clients on GPU shares               (... sim)
#   deploy   SuperLink + 2 SuperNodes with warm workers on the GPU    (... deploy)
#   compare  FedAvg on digits, CUDA against CPU                       (... compare)
#   bench-*  bench.run --device cuda: fedavg-fmnist, clipped-shakespeare, gossip-digits
#   report   $OUT/gpu_results.md and .json, $OUT/bench.md and .json
# $OUT receives at most 8 files: gpu_check.log, gpu_results.md, gpu_results.json,
# sim_metrics.jsonl, deploy_metrics.jsonl, deploy_workers.log, bench.md, bench.json.
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/gpu-check-out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET:-370}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$WORK"
export OUT GPU_CHECK_DEVICE=$DEVICE GPU_CHECK_QUICK=$QUICK GPU_CHECK_WORK=$WORK
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 FLWR_TELEMETRY_ENABLED=0
export FLWR_HOME=$WORK/flwr-home FEDLOCAL_CACHE=$WORK/split-cache MPLBACKEND=Agg
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
START=$SECONDS
echo "fedlocal GPU check: device $DEVICE, quick $QUICK, budget ${BUDGET} s, commit" \
     "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%F %T') UTC, $(nproc) cores"

step() {  # step NAME LIMIT COMMAND...: COMMAND under timeout, within what is left of BUDGET
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET - (SECONDS - START) - 15 ))
  if (( left < 20 )); then
    echo "=== $name: SKIPPED, ${left} s left of the ${BUDGET} s budget"
    printf '%s\tskipped\t0\n' "$name" >> "$WORK/steps.tsv"
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "=== [$(( SECONDS - START )) s] $name (timeout ${limit} s): $*"
  local t=$SECONDS rc
  timeout -k 20 "$limit" "$@"
  rc=$?
  (( rc == 124 )) && echo "=== $name: TIMED OUT after ${limit} s"
  echo "=== [$(( SECONDS - START )) s] $name: exit $rc after $(( SECONDS - t )) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t ))" >> "$WORK/steps.tsv"
}

install() {
  if python3 -c 'import flwr' 2>/dev/null; then
    echo "flwr already importable ($(python3 -c 'import flwr; print(flwr.__version__, flwr.__file__)')): not installing"
    return 0
  fi
  if [ ! -f .whl/wheels-cp312.tar.xz ]; then
    echo "no .whl/wheels-cp312.tar.xz: run 'python -m bench.gpu_check prepare' and carry .whl"
    return 1
  fi
  mkdir -p "$WORK/wheels" &&
    tar -xJf .whl/wheels-cp312.tar.xz -C "$WORK/wheels" &&
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WORK"/wheels/*.whl &&
    rm -rf "$WORK/wheels" &&
    ls /tmp/site/bin
}

data() {
  if [ -f .gpudata/data.tar.xz ]; then
    mkdir -p "$WORK/data" && tar -xJf .gpudata/data.tar.xz -C "$WORK/data" || return 1
  fi
  local fmnist=/usr/share/datasets/fashion-mnist
  if ls "$fmnist"/train-images-idx3-ubyte* >/dev/null 2>&1; then
    echo "Fashion-MNIST: $fmnist is there"
  elif [ -d "$WORK/data/fashion-mnist" ]; then
    mkdir -p "$fmnist" && cp "$WORK"/data/fashion-mnist/* "$fmnist"/ &&
      echo "Fashion-MNIST: carried files copied to $fmnist" ||
      echo "Fashion-MNIST: cannot write $fmnist; fedavg-fmnist will fail"
  else
    echo "Fashion-MNIST: none here or carried; fedavg-fmnist will fail"
  fi
  ls -la "$fmnist" "$WORK/data"/* 2>/dev/null
  return 0
}

timed() {  # timed NAME FUNCTION: a step that runs in this shell (no timeout: tar and pip)
  local t=$SECONDS rc
  echo "=== [$(( SECONDS - START )) s] $1"
  "$2"
  rc=$?
  echo "=== [$(( SECONDS - START )) s] $1: exit $rc after $(( SECONDS - t )) s"
  printf '%s\t%s\t%s\n' "$1" "$rc" "$(( SECONDS - t ))" >> "$WORK/steps.tsv"
}

# in this shell: the install sets PYTHONPATH and PATH for every later step
timed install install
if [ -d /tmp/site ]; then
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
timed data data

SHAKESPEARE=$WORK/data/tinyshakespeare/input.txt
[ -f "$SHAKESPEARE" ] || SHAKESPEARE=$(pwd)/../shared/data/tinyshakespeare/input.txt
step env 60 python3 -m bench.gpu_check env
step sim 120 python3 -m bench.gpu_check sim
step deploy 100 python3 -m bench.gpu_check deploy
step compare 60 python3 -m bench.gpu_check compare

# the benchmark's workloads on the device: engine (pure compute) and simulation (fedlocal),
# one bench.run per workload so that one hang costs only its own rows
if [ "$QUICK" != 0 ]; then
  BENCH_WORKLOADS=${GPU_CHECK_WORKLOADS:-gossip-digits}
  BENCH_ARGS=(--quick --rounds 2 --gossip-rounds 3 --shakespeare-rounds 2)
else
  BENCH_WORKLOADS=${GPU_CHECK_WORKLOADS:-fedavg-fmnist,clipped-shakespeare,gossip-digits}
  BENCH_ARGS=(--quick --rounds 4 --gossip-rounds 10 --shakespeare-rounds 4)
fi
for workload in ${BENCH_WORKLOADS//,/ }; do
  step "bench-$workload" 110 python3 -m bench.gpu_check bench -- --workloads "$workload" \
    --device "$DEVICE" --no-docs --no-baseline --shakespeare "$SHAKESPEARE" "${BENCH_ARGS[@]}"
done

echo "=== [$(( SECONDS - START )) s] report"
timeout -k 5 30 python3 -m bench.gpu_check report
ls -la "$OUT"
echo "fedlocal GPU check: done in $(( SECONDS - START )) s"
sleep 1  # let tee write the last lines of gpu_check.log
