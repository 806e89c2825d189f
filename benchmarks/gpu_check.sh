#!/usr/bin/env bash
# The GPU checks of issues 3 and 5 that need no Ray, in one device call of about 8 minutes.
#
# Prepare here (git-ignored .gpu/, ~52 MB, carried to the device machine):
#   .venv/bin/python benchmarks/gpu_recipe.py --data ../shared/data/fer2013 --pack .gpu/fer2013.npz
#   cp -r runs/dev/small_cnn .gpu/small_cnn      # any CNN artifact to score with
# Then on the device (run tool: carry [".gpu"], timeout_s 600):
#   bash benchmarks/gpu_check.sh                 # everything lands in $OUT (or gpu-out/)
#
# Steps, each under its own time limit so one failure cannot eat the others' time:
#   1. gpu_inference.py: FaceScorer CUDA vs CPU agreement, per-face cost at batch 1..256 (issue 5)
#   2. training img/s of the plain loop, VGG16-BN batch 256 bf16, eager and torch.compile (issue 3)
#   3. the recipe on real FER2013 with the fastest mode of step 2 (issue 3: >= 72% in <= 5 min);
#      RECIPE_ARGS overrides its settings, e.g. RECIPE_ARGS="--epochs 150 --batch-size 256 --lr 0.1".
# CHECK_ARGS goes to both gpu_recipe.py calls; a smoke test of this script on a CPU machine:
#   PYTHON=.venv/bin/python CHECK_ARGS="--model small_cnn --limit 1024 --throughput-steps 3" \
#     RECIPE_ARGS="--epochs 1" bash benchmarks/gpu_check.sh
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/check.log"; }

log "start on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/check.log"
$py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$out/check.log"

timeout 90 $py benchmarks/gpu_inference.py --artifact .gpu/small_cnn --out "$out" > "$out/inference.log" 2>&1
log "1. gpu_inference exit $? (gpu_inference.json, inference.log)"

timeout 200 $py benchmarks/gpu_recipe.py --data .gpu/fer2013.npz --out "$out/throughput" --workers 16 \
    --skip-recipe --throughput-compile none default reduce-overhead ${CHECK_ARGS:-} > "$out/throughput.log" 2>&1
log "2. throughput exit $? (throughput.log)"
grep '"train_images_per_s"' "$out/throughput.log" | tee -a "$out/check.log"

# The fastest mode that completed (eager when compiling failed or timed out).
mode=$($py - "$out/throughput.log" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train_images_per_s"' in l]
print(max(rows, key=lambda r: r["train_images_per_s"])["compile"] if rows else "none")
EOF
)
# CHECK_ARGS and RECIPE_ARGS are lists of flags: unquoted on purpose.
timeout 330 $py benchmarks/gpu_recipe.py --data .gpu/fer2013.npz --out "$out/recipe" --workers 16 \
    --throughput-compile --compile "$mode" --epochs 100 --erase-p 0.5 --time-limit 290 ${CHECK_ARGS:-} ${RECIPE_ARGS:-} \
    > "$out/recipe.log" 2>&1
log "3. recipe (compile $mode) exit $? (recipe.log, recipe/results.json)"
tail -n 2 "$out/recipe.log" | tee -a "$out/check.log"
# At most 8 files come back from $OUT: one JSON per step, beside its log.
mv "$out/throughput/results.json" "$out/throughput.json" 2>/dev/null && rmdir "$out/throughput"
mv "$out/recipe/results.json" "$out/recipe.json" 2>/dev/null && rmdir "$out/recipe"
log "done"
