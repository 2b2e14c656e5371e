#!/usr/bin/env bash
# The GPU paths that CPU-only machines never run, checked in under 10 minutes on the first machine
# with a CUDA GPU:
#
#   bench_step   experiments/bench_step.py on CUDA, 32x32 only, no torch.compile (a short setting)
#   bf16         200 iterations of the quickstart with trainer.precision=bf16-mixed (checkpoints, panels)
#   resume       bf16's last.ckpt restored onto the GPU, 50 more iterations
#   compile      200 iterations with performance.compile=reduce-overhead (CUDA graphs)
#   ddp          200 iterations on 2 processes over NCCL (trainer=ddp trainer.devices=2), with 2+ GPUs
#
#   bash experiments/gpu_check.sh        # PYTHON=... to choose the interpreter (default: .venv's)
#
# Each check has a time limit and its log in outputs/gpu_check/<time>/<check>.log (runs: their Hydra
# directory beside it). Prints one table: check, status (pass/fail/skipped), seconds, key number.
# Exit status: 0 all ran passed, 1 a check failed, 2 no GPU here (nothing checked).
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export PYTHONUNBUFFERED=1

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null | tail -n 1)
[[ $gpus =~ ^[0-9]+$ ]] || gpus=0
if [ "$gpus" -lt 1 ]; then
    listed=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    echo "gpu_check: no CUDA GPU here (torch.cuda.device_count() = $gpus, nvidia-smi lists ${listed:-0}): nothing checked" >&2
    exit 2
fi

OUT=outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)
mkdir -p "$OUT"
ROWS=()
FAILED=0

# run NAME LIMIT CMD...: CMD with at most LIMIT seconds, output in $OUT/NAME.log; sets RC and TOOK.
run() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "gpu_check: $name (at most $limit s), log in $OUT/$name.log" >&2
    echo "\$ $*" >"$OUT/$name.log"
    timeout --kill-after=15 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    RC=$?
    TOOK=$((SECONDS - start))
}

# record NAME KEY_COMMAND...: the row of the check just run; pass when it exited 0 and KEY_COMMAND
# prints its key number (and exits 0).
record() {
    local name=$1 key
    shift
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
        ROWS+=("$name|fail|$TOOK|timed out (log: $OUT/$name.log)")
        FAILED=1
    elif [ "$RC" -ne 0 ]; then
        ROWS+=("$name|fail|$TOOK|exit $RC: $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-80)")
        FAILED=1
    elif key=$("$@" 2>>"$OUT/$name.log"); then
        ROWS+=("$name|pass|$TOOK|$key")
    else
        ROWS+=("$name|fail|$TOOK|no result: $(tail -n 1 "$OUT/$name.log" | cut -c1-80)")
        FAILED=1
    fi
}

skip() {  # skip NAME WHY
    ROWS+=("$1|skipped|0|$2")
}

# The key number of a bench_step JSON: images/s of the defaults and of the Lightning run at 32x32.
bench_key() {
    "$PYTHON" - "$1" <<'EOF'
import json, sys
size = json.load(open(sys.argv[1]))["sizes"][0]
rate = {name: size["batch"] / r["median_s"] for name, r in size["results"].items()}
print(f"{rate['defaults']:.0f} img/s (defaults), {rate['framework (Lightning)']:.0f} img/s (Lightning), batch {size['batch']}")
EOF
}

# The key numbers of a run's metrics.csv: the last logged k, M and it/s, and the steps logged;
# fails when k or M is missing or not finite.
run_key() {
    "$PYTHON" - "$1" <<'EOF'
import csv, math, sys
rows = [row for row in csv.DictReader(open(sys.argv[1])) if row.get("train/k")]
last = lambda key: next((float(r[key]) for r in reversed(rows) if r.get(key)), math.nan)
k, M, rate = last("train/k"), last("train/M"), last("train/iterations_per_s")
if not (math.isfinite(k) and math.isfinite(M)):
    sys.exit(f"k={k}, M={M} in {sys.argv[1]}")
print(f"k={k:.4f} M={M:.4f} {rate:.1f} it/s, steps {rows[0]['step']}-{rows[-1]['step']}")
EOF
}

# train NAME LIMIT OVERRIDES...: the quickstart on the GPU, 200 iterations unless overridden.
train() {
    local name=$1 limit=$2
    shift 2
    run "$name" "$limit" "$PYTHON" -m vaegan.run +experiment=quickstart iterations=200 hydra.run.dir="$OUT/$name" \
        callbacks.progress_bar.enabled=false callbacks.images.every_n_iterations=100 \
        callbacks.checkpoint.every_n_iterations=100 "$@"
    record "$name" run_key "$OUT/$name/metrics.csv"
}

run bench_step 180 "$PYTHON" experiments/bench_step.py --device cuda --sizes 32 --repeats 3 --overhead-repeats 10 \
    --no-compile --json "$OUT/bench_step.json"
record bench_step bench_key "$OUT/bench_step.json"

train bf16 100 trainer=gpu trainer.precision=bf16-mixed
if [ -f "$OUT/bf16/checkpoints/last.ckpt" ]; then
    train resume 60 trainer=gpu trainer.precision=bf16-mixed iterations=250 ckpt_path="$OUT/bf16/checkpoints/last.ckpt"
else
    skip resume "bf16 wrote no checkpoints/last.ckpt"
fi

train compile 150 trainer=gpu performance.compile=reduce-overhead

if [ "$gpus" -ge 2 ]; then
    train ddp 100 trainer=ddp trainer.devices=2
else
    skip ddp "one GPU (torch.cuda.device_count() = $gpus)"
fi

{
    echo "gpu_check: $("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__)" 2>&1 | tail -n 1), $gpus GPU(s); logs in $OUT"
    printf '%-11s %-8s %8s  %s\n' check status seconds "key number"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r name status took key <<<"$row"
        printf '%-11s %-8s %8s  %s\n' "$name" "$status" "$took" "$key"
    done
} | tee "$OUT/summary.txt"
exit "$FAILED"
