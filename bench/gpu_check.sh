#!/usr/bin/env bash
# Issue 17's GPU check: one script, one GPU (H100/H200), at most ~8 minutes, everything under OUTDIR.
#
#   PYTHONPATH=src bash bench/gpu_check.sh OUTDIR                # on the GPU machine
#   PYTHONPATH=src bash bench/gpu_check.sh OUTDIR --cpu-dry-run  # tiny models on CPU, < 2 minutes
#
# Needs torch and transformers only (no pip install of phi1; no fastapi/uvicorn/datasketch).
# Writes OUTDIR/env.txt, one OUTDIR/<check>.log per step, OUTDIR/results.tsv and OUTDIR/summary.md.
# Each step runs under its own `timeout`; a failed step is a FAIL row and the script goes on.
# Exit 0 when every row is PASS (or INFO), 1 otherwise, 2 on bad usage.
# Targets (GPU only; a dry run records the numbers as INFO): phi-1 training >= 1.4x transformers
# compiled, phi-1-small >= 1.3x, phi-1 decode at batch 1 >= 75% of the weights-read limit
# (HBM bandwidth / 2.84 GB of bf16 weights).
set -u

usage() { echo "usage: bash bench/gpu_check.sh OUTDIR [--cpu-dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DRY=0
for a in "$@"; do
  case $a in
    --cpu-dry-run) DRY=1 ;;
    *) echo "gpu_check.sh: unknown option $a; the only option is --cpu-dry-run" >&2; exit 2 ;;
  esac
done
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "gpu_check.sh: $OUT exists and is not empty; give a new or empty directory (nothing is overwritten)" >&2
  exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PHI1_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
HELP="$PY $HERE/gpu_smoke.py"
T0=$(date +%s)

if [ $DRY = 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DEV=cpu; PRESET=micro; PRESET_SMALL=micro; SEQ=64; TP_ARGS="--batch 2 --steps 1 --rounds 1 --warmup 0 --threads 1"
  # train_throughput.py compiles with inductor, whose C++ build alone outlasts a dry run on 2 cores:
  # the dry run times both sides eager (the compiled training path is covered by tests/test_gpu_train.py).
  TP_COMPILE=""
  TR_STEPS=2; TR_COMPILE=false; PREC_A=fp32; PREC_B=bf16; GREEDY_DTYPE=float32
  DEC_ARGS="--preset micro --prompt-len 16 --new-tokens 3 --repeats 1 --threads 1 --hf-compile-backend aot_eager"
  DEC_BATCH="1,32"; DEC_DTYPE=float32
  TO_PREP=60 TO_GREEDY=60 TO_TRAIN=60 TO_TP=60 TO_DEC=90
else
  DEV=cuda; PRESET=phi-1; PRESET_SMALL=phi-1-small; SEQ=2048; TP_ARGS="--batch 4 --steps 4 --rounds 2 --warmup 2"; TP_COMPILE=--compile
  TR_STEPS=6; TR_COMPILE=true; PREC_A=fp16; PREC_B=bf16; GREEDY_DTYPE=bfloat16
  DEC_ARGS="--preset phi-1 --prompt-len 128 --new-tokens 128 --repeats 2 --compile"
  DEC_BATCH="1,32"; DEC_DTYPE=bfloat16
  TO_PREP=40 TO_GREEDY=50 TO_TRAIN=45 TO_TP=100 TO_DEC=110
fi

row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/results.tsv"; }
# step NAME SECONDS CMD...: run CMD under `timeout` into OUTDIR/NAME.log; rc in $RC.
step() {
  local name=$1 secs=$2; shift 2
  echo "== $name (timeout ${secs}s): $*" | tee -a "$OUT/$name.log" >&2
  timeout --kill-after=10 "$secs" "$@" >> "$OUT/$name.log" 2>&1
  RC=$?
  [ $RC = 124 ] || [ $RC = 137 ] && echo "TIMEOUT after ${secs}s" >> "$OUT/$name.log"
  echo "   rc=$RC after $(( $(date +%s) - T0 ))s total" >&2
}
cudagraph_skips() { grep -il "skipping cudagraphs" "$@" 2>/dev/null | head -1; }

# ---- environment ------------------------------------------------------------------------------------
{
  echo "date: $(date -u)"; echo "host: $(uname -a)"; echo "mode: $([ $DRY = 1 ] && echo cpu-dry-run || echo gpu)"
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; nvidia-smi -q -d CLOCK,MEMORY 2>/dev/null | head -60
  else echo "nvidia-smi: not present"; fi
  $PY - <<'EOF'
import sys, torch, transformers
print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda)
print("transformers", transformers.__version__)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for m in ("fastapi", "uvicorn", "datasketch"):
    try:
        __import__(m); print(m, "importable")
    except ImportError:
        print(m, "not importable")
EOF
} > "$OUT/env.txt" 2>&1
if grep -q "^torch " "$OUT/env.txt" && grep -q "^transformers " "$OUT/env.txt"; then
  row env PASS "$(grep -m1 '^torch ' "$OUT/env.txt" | cut -d' ' -f2), transformers $(grep -m1 '^transformers ' "$OUT/env.txt" | cut -d' ' -f2)" "torch + transformers import"
else
  row env FAIL "see env.txt" "torch + transformers import"
fi

# ---- smoke ------------------------------------------------------------------------------------------
step prep "$TO_PREP" $HELP prep "$OUT"
PREP_RC=$RC
if [ $PREP_RC = 0 ]; then
  step smoke-greedy "$TO_GREEDY" $HELP greedy "$OUT" --device $DEV --dtype $GREEDY_DTYPE --batch 2 --new-tokens 24
  if [ $RC = 0 ] && [ -z "$(cudagraph_skips "$OUT/smoke-greedy.log")" ]; then
    row smoke-greedy PASS "same ids, $DEV $GREEDY_DTYPE" "identical greedy ids"
  elif [ $RC = 0 ]; then row smoke-greedy FAIL "'skipping cudagraphs' in log" "identical greedy ids, no cudagraph skips"
  else row smoke-greedy FAIL "rc=$RC (smoke-greedy.log)" "identical greedy ids"; fi

  for pair in "smoke-train-fp16 $PREC_A" "smoke-train-bf16 $PREC_B"; do
    set -- $pair; name=$1; prec=$2
    step "$name" "$TO_TRAIN" $PY -m phi1 train src/phi1/recipes/test-micro.yaml \
      --set run.device=$DEV --set run.out_dir="$OUT/work/runs" --set run.name="$name" \
      --set data.train="$OUT/work/shards" --set model.tokenizer="$OUT/work/tok" \
      --set train.precision=$prec --set train.compile=$TR_COMPILE --set train.max_steps=$TR_STEPS \
      --set eval.interval=$TR_STEPS --set checkpoint.interval=$TR_STEPS
    run="$OUT/work/runs/$name"
    if [ $RC != 0 ]; then row "$name" FAIL "rc=$RC ($name.log)" "train + eval + checkpoint"
    elif [ -n "$(cudagraph_skips "$OUT/$name.log")" ]; then row "$name" FAIL "'skipping cudagraphs' in log" "no cudagraph skips"
    elif ! grep -q val_loss "$run/metrics.jsonl" 2>/dev/null; then row "$name" FAIL "no val_loss in metrics.jsonl" "train + eval + checkpoint"
    elif [ ! -e "$run/checkpoints/step-$TR_STEPS/model" ]; then row "$name" FAIL "no checkpoints/step-$TR_STEPS" "train + eval + checkpoint"
    else row "$name" PASS "$prec, compile=$TR_COMPILE, $TR_STEPS steps, eval + checkpoint" "train + eval + checkpoint"; fi
  done
else
  for name in smoke-greedy smoke-train-fp16 smoke-train-bf16; do row "$name" FAIL "prep failed (prep.log)" "-"; done
fi

# ---- training throughput: ours vs transformers, both compiled ----------------------------------------
for pair in "train-phi-1 $PRESET 1.4" "train-phi-1-small $PRESET_SMALL 1.3"; do
  set -- $pair; name=$1; preset=$2; target=$3
  step "$name" "$TO_TP" $PY bench/train_throughput.py --preset $preset --seq-len $SEQ --device $DEV \
    --dtype bf16 $TP_COMPILE $TP_ARGS
  $PY "$HERE/gpu_smoke.py" judge-train "$OUT" "$name" "$OUT/$name.log" $RC "$target" $DRY
done

# ---- decode: ours vs transformers (eager, and static cache + compiled) --------------------------------
step decode "$TO_DEC" $PY bench/decode.py $DEC_ARGS --device $DEV --dtype $DEC_DTYPE --batches $DEC_BATCH
$PY "$HERE/gpu_smoke.py" judge-decode "$OUT" "$OUT/decode.log" $RC $DRY

# ---- summary ----------------------------------------------------------------------------------------
echo "total wall time: $(( $(date +%s) - T0 ))s" >> "$OUT/env.txt"
$PY "$HERE/gpu_smoke.py" summary "$OUT" --wall "$(( $(date +%s) - T0 ))"
