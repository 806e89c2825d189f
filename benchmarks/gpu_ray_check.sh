#!/usr/bin/env bash
# The GPU checks that go through Ray, in one device call of about 5 minutes: the device machine
# has PyTorch but no Ray, so Ray travels as wheels (benchmarks/device_wheels.py, ~49 MiB).
#
# Prepare here (git-ignored .whl/ and .gpu/):
#   .venv/bin/python benchmarks/device_wheels.py             # -> .whl/
#   mkdir -p .gpu && cp -r runs/dev/small_cnn .gpu/small_cnn  # any CNN artifact
# Then on the device (run tool: carry [".whl", ".gpu/small_cnn"], timeout_s 600):
#   bash benchmarks/gpu_ray_check.sh                         # logs land in $OUT (or gpu-out/)
#
#   1. bench_train.py --gpu: one epoch's img/s through Ray Train (1 GPU worker) against the same
#      loop without Ray, VGG16-BN, batch 256, bf16 (issue 3: ratio >= 0.9)
#   2. bench_serve.py --gpu: Serve batched vs unbatched with the replica on the GPU, for an
#      untrained VGG16 and the small CNN (issue 5: >= 3x requests/s at no worse p99)
# TRAIN_ARGS / SERVE_ARGS add flags (e.g. SERVE_ARGS="--seconds 20").
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
py=${PYTHON:-python3}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/ray-check.log"; }

log "start: $(nvidia-smi --query-gpu=name --format=csv,noheader), $(nproc) CPUs"
if [ -d .whl ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        > "$out/pip.log" 2>&1 || { log "wheel install failed (pip.log)"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
$py -c "import ray, torch; print('ray', ray.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$out/ray-check.log"

# CHECK_ARGS/TRAIN_ARGS/SERVE_ARGS are lists of flags: unquoted on purpose.
timeout 240 $py benchmarks/bench_train.py --gpu --model vgg16_bn --batch-size 256 --epochs 3 --count 30000 \
    ${TRAIN_ARGS:-} > "$out/bench_train.log" 2>&1
log "1. bench_train --gpu exit $?"
tail -n 4 "$out/bench_train.log" | tee -a "$out/ray-check.log"

for model in vgg16 small; do
    extra=""
    [ "$model" = vgg16 ] && extra="--untrained vgg16"
    timeout 150 $py benchmarks/bench_serve.py --artifact .gpu/small_cnn --gpu --num-cpus 8 --seconds 15 \
        --servers batched,unbatched --concurrency 32 $extra ${SERVE_ARGS:-} > "$out/bench_serve_$model.log" 2>&1
    log "2. bench_serve --gpu ($model) exit $?"
    grep -E "^\| (batched|unbatched)|^ratio|^forward" "$out/bench_serve_$model.log" | tee -a "$out/ray-check.log"
done
log "done"
