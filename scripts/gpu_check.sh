#!/usr/bin/env bash
# Run every accelerator path of the project, small, on this machine's GPU(s), and print one
# summary table (step, path, result, figure, seconds). Issue 17; aimed at under 8 minutes on one GPU.
#
#   bash scripts/gpu_check.sh                       # on a GPU machine
#   bash scripts/gpu_check.sh --dry-run             # anywhere, no GPU: print each command and check
#                                                   # that it composes / its arguments parse
#   bash scripts/gpu_check.sh --only train-gpu-32,predict-input,predict-gpu --out logs/gpu_check/again
#
# Options:
#   --dry-run         print the commands; check them with scripts/gpu_check_dry.py (train.py overrides
#                     compose and the module builds on the CPU, each script's arguments parse)
#   --out DIR         logs, run folders, JSON results and summary.md (default: logs/gpu_check/<time>)
#   --only A,B,...    run only these steps (names as in the table)
#   --set STEP=ARG    append ARG to STEP's command (repeatable): --set train-ddp=trainer.max_epochs=3
#                     (each command ends with its Hydra overrides / key=value arguments)
# Environment: PYTHON (default: python), GPU_CHECK_GPUS (GPUs to use; default: torch's count, 2 in a
# dry run so that the 2-process DDP command is the one checked).
# Results: PASS; MISS (it ran, a performance goal of issue 17 was missed); FAIL; DRY-OK (dry run).
# Exit status: 1 if any step failed, 2 on bad usage or without a GPU, else 0.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-python}"
DRY=0
OUT=""
ONLY=""
SETS=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift ;;
    --only) [ $# -ge 2 ] || die "--only needs step names, e.g. --only train-gpu-32,export"; ONLY="$2"; shift ;;
    --set) [ $# -ge 2 ] || die "--set needs STEP=ARG"; SETS+=("$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

OUT="${OUT:-logs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}"
mkdir -p "$OUT/logs" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
# The folder goes into Hydra overrides and key=value arguments, whose grammar would split on these.
case "$OUT" in *[!A-Za-z0-9_./+-]*) die "--out $OUT: use a path of letters, digits and _ . / + - only" ;; esac
RUNS="$OUT/runs"
CKPT="$RUNS/train-gpu-32/checkpoints/last.ckpt"

if [ -n "${GPU_CHECK_GPUS:-}" ]; then
  NGPU="$GPU_CHECK_GPUS"
elif [ "$DRY" = 1 ]; then
  NGPU=2
else
  NGPU="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" || NGPU=0
fi
case "$NGPU" in ''|*[!0-9]*) die "GPU_CHECK_GPUS=$NGPU: give a number" ;; esac
if [ "$DRY" = 0 ] && [ "$NGPU" -lt 1 ]; then
  die "no CUDA GPU visible to $PYTHON (torch.cuda.device_count() is 0): run this on a GPU machine, or use --dry-run"
fi
# DDP: two processes when there are two GPUs; on one GPU, one DDP process (the NCCL process group,
# DDP wrapper and SyncBatchNorm still run; the 2-process exchange needs a second GPU).
DDP_DEVICES=$(( NGPU >= 2 ? 2 : 1 ))

# ---------------------------------------------------------------------------------- the steps --
NAMES=(); TIMEOUTS=(); PATHS=(); FIGURES=(); NEEDS=(); CMDS=()
# step NAME TIMEOUT_S "PATH (table)" "FIGURE KIND ARGS" "FILES NEEDED" SCRIPT ARGS...
step() {
  local name="$1" timeout="$2" path="$3" figure="$4" needs="$5" cmd
  shift 5
  cmd="$(printf '%s\t' "$@")"
  NAMES+=("$name"); TIMEOUTS+=("$timeout"); PATHS+=("$path"); FIGURES+=("$figure"); NEEDS+=("$needs")
  CMDS+=("${cmd%$'\t'}")
}

# A short real run: 2 epochs of 4 batches (64 px, batch 16), checkpoints and metrics.csv included.
SMALL=(debug=limit trainer.limit_train_batches=4 data.num_samples=80 callbacks.progress_bar=null)
for precision in 32 16-mixed bf16-mixed; do
  [ "$precision" = 32 ] && p=32-true || p="$precision"
  step "train-gpu-$precision" 180 "train.py trainer=gpu trainer.precision=$p" "train $RUNS/train-gpu-$precision" "" \
    train.py trainer=gpu "trainer.precision=$p" "${SMALL[@]}" "hydra.run.dir=$RUNS/train-gpu-$precision"
done
step train-ddp 240 "train.py trainer=ddp trainer.devices=$DDP_DEVICES ($DDP_DEVICES process(es); $NGPU GPU(s) visible)" \
  "train $RUNS/train-ddp" "" \
  train.py trainer=ddp "trainer.devices=$DDP_DEVICES" "${SMALL[@]}" "hydra.run.dir=$RUNS/train-ddp"
step seglosses-fused-cuda 180 "seglosses fused paths on CUDA: float32, float16 and bfloat16 autocast" \
  "losses $OUT/losses.json" "" \
  scripts/gpu_check_losses.py --device cuda --out "$OUT/losses.json"
step bench-losses-cuda 240 "scripts/bench_losses.py --device cuda (vs smp, MONAI)" "bench-losses" "" \
  scripts/bench_losses.py --device cuda --cases binary multiclass
step bench-train-gpu 240 "scripts/bench_train.py trainer=gpu (harness vs plain PyTorch loop)" \
  "bench-train $OUT/bench_train_gpu.json" "" \
  scripts/bench_train.py --out "$OUT/bench_train_gpu.json" trainer=gpu
step predict-input 120 "input images for predict (scripts/make_folder_dataset.py, CPU)" \
  "count $OUT/predict_input/images 6" "" \
  scripts/make_folder_dataset.py "$OUT/predict_input" --num-samples 6 --image-size 96
step predict-gpu 180 "scripts/predict.py trainer.accelerator=gpu (checkpoint of train-gpu-32)" \
  "count $OUT/predict/masks 6" "$CKPT $OUT/predict_input/images" \
  scripts/predict.py "ckpt_path=$CKPT" "input=$OUT/predict_input/images" "output=$OUT/predict" \
  trainer.accelerator=gpu trainer.devices=1
step export 240 "scripts/export.py (ONNX + TorchScript of the GPU-trained checkpoint; export.py exports on CPU)" \
  "export" "$CKPT" \
  scripts/export.py "ckpt_path=$CKPT" "output=$OUT/export/model.onnx"
# Full-size network at 512 px: a short training run (10 steps; a NaN loss fails it: DivergenceGuard
# stops the run, and metrics.csv is read for NaN) and the images/s (2 rounds per side keep it short).
R34=(model=unet_resnet34 data.image_size=512 data.batch_size=16 trainer=gpu callbacks.progress_bar=null)
for precision in bf16-mixed 16-mixed; do
  step "r34-512-$precision-train" 240 "model=unet_resnet34 512 px trainer.precision=$precision: training, NaN check" \
    "train $RUNS/r34-512-$precision" "" \
    train.py "${R34[@]}" "trainer.precision=$precision" data.num_samples=96 trainer.max_epochs=2 \
    trainer.limit_val_batches=2 "hydra.run.dir=$RUNS/r34-512-$precision"
  step "r34-512-$precision-speed" 240 "model=unet_resnet34 512 px trainer.precision=$precision: images/s (bench_train.py)" \
    "bench-train $OUT/bench_train_r34_$precision.json" "" \
    scripts/bench_train.py --out "$OUT/bench_train_r34_$precision.json" --rounds 2 \
    "${R34[@]}" "trainer.precision=$precision" data.num_samples=80
done

# ------------------------------------------------------------------- --only and --set checks --
index_of() { local i; for i in "${!NAMES[@]}"; do [ "${NAMES[$i]}" = "$1" ] && { echo "$i"; return 0; }; done; return 1; }
for set in ${SETS[@]+"${SETS[@]}"}; do
  name="${set%%=*}"
  [ "$name" != "$set" ] || die "--set $set: write STEP=ARG, e.g. --set train-ddp=trainer.max_epochs=3"
  i="$(index_of "$name")" || die "--set $set: no step $name; the steps: ${NAMES[*]}"
  CMDS[$i]+=$'\t'"${set#*=}"
done
SELECTED=()
if [ -n "$ONLY" ]; then
  IFS=',' read -ra wanted <<< "$ONLY"
  for name in "${wanted[@]}"; do
    i="$(index_of "$name")" || die "--only: no step $name; the steps: ${NAMES[*]}"
    SELECTED+=("$i")
  done
else
  SELECTED=("${!NAMES[@]}")
fi

# ------------------------------------------------------------------------------------- running --
RESULT=(); FIGURE=(); SECS=()
show() { local i="$1" cmd; IFS=$'\t' read -ra cmd <<< "${CMDS[$i]}"; echo "$PYTHON ${cmd[*]}"; }

run_step() {
  local i="$1" name="${NAMES[$1]}" log="$OUT/logs/${NAMES[$1]}.log" cmd fig need start rc line
  IFS=$'\t' read -ra cmd <<< "${CMDS[$i]}"
  read -ra fig <<< "${FIGURES[$i]}"
  SECS[$i]=0
  for need in ${NEEDS[$i]}; do
    if [ ! -e "$need" ]; then
      RESULT[$i]=FAIL; FIGURE[$i]="needs $need, written by an earlier step (see the rows above)"; return
    fi
  done
  start=$SECONDS
  # timeout signals the whole process group: DDP ranks started by the step go too.
  timeout -k 15 "${TIMEOUTS[$i]}" "$PYTHON" "${cmd[@]}" > "$log" 2>&1
  rc=$?
  SECS[$i]=$(( SECONDS - start ))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    RESULT[$i]=FAIL; FIGURE[$i]="timed out after ${TIMEOUTS[$i]} s (log: logs/$name.log)"
  elif [ "$rc" != 0 ]; then
    line="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-200)"
    RESULT[$i]=FAIL; FIGURE[$i]="exit $rc: $line (log: logs/$name.log)"
  else
    line="$("$PYTHON" scripts/gpu_check_figures.py "${fig[0]}" "$log" "${fig[@]:1}")" || line=$'FAIL\tgpu_check_figures.py failed'
    RESULT[$i]="${line%%$'\t'*}"; FIGURE[$i]="${line#*$'\t'}"
  fi
}

TOTAL_START=$SECONDS
if [ "$DRY" = 1 ]; then
  echo "Dry run (no GPU needed): the commands a GPU run would start, from $ROOT:"
  : > "$OUT/dry_manifest.tsv"
  for i in "${SELECTED[@]}"; do
    echo "  [${NAMES[$i]}] $(show "$i")"
    printf '%s\t%s\t%s\n' "${NAMES[$i]}" "${FIGURES[$i]}" "${CMDS[$i]}" >> "$OUT/dry_manifest.tsv"
  done
  echo "Checking that each command composes / its arguments parse (scripts/gpu_check_dry.py):"
  "$PYTHON" scripts/gpu_check_dry.py "$OUT/dry_manifest.tsv" "$OUT/dry_results.tsv"
  dry_rc=$?
  declare -A DRY_RESULT=() DRY_TEXT=()
  if [ -f "$OUT/dry_results.tsv" ]; then
    while IFS=$'\t' read -r name result text; do DRY_RESULT[$name]="$result"; DRY_TEXT[$name]="$text"; done < "$OUT/dry_results.tsv"
  fi
  for i in "${SELECTED[@]}"; do
    RESULT[$i]="${DRY_RESULT[${NAMES[$i]}]:-FAIL}"
    FIGURE[$i]="${DRY_TEXT[${NAMES[$i]}]:-not checked: gpu_check_dry.py stopped (exit $dry_rc)}"
    SECS[$i]="-"
  done
else
  echo "GPU check: $NGPU GPU(s), python $PYTHON, output $OUT"
  n=0
  for i in "${SELECTED[@]}"; do
    n=$(( n + 1 ))
    echo "[$n/${#SELECTED[@]}] ${NAMES[$i]}: $(show "$i")"
    run_step "$i"
    echo "      -> ${RESULT[$i]} (${SECS[$i]} s): ${FIGURE[$i]}"
  done
fi

# ------------------------------------------------------------------------------------- summary --
{
  echo
  total=$(( SECONDS - TOTAL_START ))
  if [ "$DRY" = 1 ]; then
    echo "GPU check, dry run (nothing ran on a GPU)"
  else
    # Issue 17 sizes the whole check to under 8 minutes on one GPU: say so when a run outgrows it.
    echo "GPU check: $NGPU GPU(s), $total s in all$([ "$total" -gt 480 ] && echo " (over the 8-minute aim: shrink the slowest rows)")"
  fi
  echo
  echo "| step | path | result | figure | s |"
  echo "|---|---|---|---|---|"
  for i in "${SELECTED[@]}"; do
    # A | inside a cell (e.g. "max |diff|") would end it.
    echo "| ${NAMES[$i]} | ${PATHS[$i]//|/\\|} | ${RESULT[$i]} | ${FIGURE[$i]//|/\\|} | ${SECS[$i]} |"
  done
} | tee "$OUT/summary.md"

failed=()
for i in "${SELECTED[@]}"; do [ "${RESULT[$i]}" = FAIL ] && failed+=("${NAMES[$i]}"); done
echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (logs in $OUT/logs)"
  exit 1
fi
echo "No step failed. Summary: $OUT/summary.md"
exit 0
