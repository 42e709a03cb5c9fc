#!/usr/bin/env bash
# The long-budget DA grid on the whole Fashion-MNIST training split (experiment=budget_fashion_mnist_full,
# with real augment=auto runs) and, with BENCH=1, the GPU speed table first, on a lent GPU machine
# (make device-grid).
#
# That machine has torch, torchvision, lightning and torchmetrics, and nothing can be downloaded
# there: `make device-pack` puts what it lacks into .device/ (wheels of hydra-core, omegaconf and
# antlr4; Fashion-MNIST), which travels with the working tree. Then, on the machine:
#   MINUTES=9 OUT=/some/dir bash scripts/device_grid.sh          # about MINUTES of wall time in all
#   SMOKE=1 bash scripts/device_grid.sh                          # a tiny run of every step (CPU is fine)
# Steps: a preflight run, with BENCH=1 the speed table (python -m daqkd.bench_device → $OUT/device.json),
# then the budget grid (python -m daqkd.budget_grid: the teachers, then budgets EPOCHS cheapest first
# while the fitted cost of each says it fits: 7 DAs and auto × 3 seeds), the report, and
# $OUT/grid.tar.gz with every results.json (no checkpoints). A failed step does not stop the next.
# Run it from a clean checkout: every results.json records the commit (a +dirty one is flagged).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
MINUTES=${MINUTES:-9}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
START=$(date +%s)
log() { echo "[device_grid $(( $(date +%s) - START ))s] $*"; }

# What the machine lacks, from .device/ (a venv with hydra already installed needs nothing).
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/daqkd-site .device/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/daqkd-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DAQKD_ROOT=${DAQKD_ROOT:-$PWD} DAQKD_CACHE=${DAQKD_CACHE:-$PWD/.cache}
if [ -d .device/fashion-mnist ] && [ ! -d data/fashion_mnist ]; then
    mkdir -p data && cp -r .device/fashion-mnist data/fashion_mnist
fi
python3 - <<'PY' 2>&1 | tee "$OUT/machine.txt"
import os, platform, torch, torchvision, lightning
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "lightning", lightning.__version__, "cores", len(os.sched_getaffinity(0)))
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
PY

DAS=autoaugment_cifar10,autoaugment_imagenet,augmix,cutmix,minimal,randaugment,trivialaugment,auto
if [ "$SMOKE" = 1 ]; then
    BENCH_ARGS=(--quick --seconds 1 --jobs 1,2)
    GRID=(--parallel 2 --seeds 0 --das minimal,cutmix,auto --epochs 1,2,64 -- teacher.max_epochs=1 dataset.datamodule.train_subset=500
          dataset.datamodule.val_size=200 dataset.datamodule.test_subset=500 metric.num_samples=100 dataset.datamodule.num_workers=1
          dataset.datamodule.batch_size=64)
    GRID_MINUTES=3
else
    CORES=$(nproc)
    PARALLEL=${PARALLEL:-8}
    BENCH_ARGS=(--seconds 4 --jobs 1,2,4,8)
    GRID=(--parallel "$PARALLEL" --seeds 0,1,2 --das "$DAS" --epochs ${EPOCHS:-1,2,4,8} --
          dataset.datamodule.num_workers=$(( CORES / PARALLEL > 1 ? CORES / PARALLEL : 1 )))
fi

log "preflight: python -m daqkd.run debug=fast"
if ! timeout "${PREFLIGHT_S:-$([ "$SMOKE" = 1 ] && echo 1200 || echo 300)}" python3 -m daqkd.run debug=fast hydra.run.dir="$OUT/preflight" > "$OUT/preflight.log" 2>&1; then
    tail -40 "$OUT/preflight.log"
    log "preflight failed: stopping here (see preflight.log)"
    exit 1
fi
rm -rf "$OUT/preflight"

if [ "${BENCH:-0}" = 1 ] || [ "$SMOKE" = 1 ]; then
    log "speed table"
    timeout $(( MINUTES * 60 / 3 )) python3 -m daqkd.bench_device --out "$OUT/device.json" "${BENCH_ARGS[@]}" 2>&1 \
        | tee "$OUT/bench.log" || log "speed table failed or timed out (see bench.log)"
fi

ELAPSED=$(( $(date +%s) - START ))
GRID_MINUTES=${GRID_MINUTES:-$(python3 -c "print(round(($MINUTES * 60 - $ELAPSED - 45) / 60, 2))")}
log "budget grid: $GRID_MINUTES minutes"
python3 -m daqkd.budget_grid --experiment "${EXPERIMENT:-budget_fashion_mnist_full}" --out "$OUT/grid" --minutes "$GRID_MINUTES" \
    --teachers "${TEACHERS:-minimal}" "${GRID[@]}" 2>&1 \
    | tee "$OUT/grid.log" || log "budget grid failed (see grid.log)"

log "report"
python3 -m daqkd.report "$OUT/grid" > "$OUT/report.log" 2>&1 || log "report failed (see report.log)"
tar -czf "$OUT/grid.tar.gz" --exclude=checkpoints --exclude='*.ckpt' -C "$OUT" grid 2>/dev/null
rm -rf "$OUT/grid"
log "done"
