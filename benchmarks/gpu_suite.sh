#!/usr/bin/env bash
# The GPU suite (issue 15): every GPU row in one run, ≤ 8 minutes of device time on one H100/H200, one table.
#
#   bash benchmarks/gpu_suite.sh            # on a GPU machine (synthetic data only: nothing to copy there)
#   bash benchmarks/gpu_suite.sh --smoke    # the same rows at tiny sizes on the CPU, in one process (CI)
#
# Rows (each script's docstring says what it times):
#   mlps      MLPS stage 1 and 2 training img/s and peak memory: fp32 eager, bf16 + channels_last, + torch.compile
#             (mlps_speed.py, batch 20, 224 px: the official MLPS stage-1 setting)
#   plimseg   PLIMSeg stage 1 against MLPS stage 1: label-trained and QuiltNet-B-32-architecture matchers
#   semi      UniSemAlign training img/s, bf16 vs fp32 (semi_ebhi.py --speed on a synthetic set)
#   overhead  the engine end to end (Trainer.fit, its data loading included) vs a bare loop, the four training
#             rows; MLPS stage 1 end to end against the official 215.5 img/s on one H100 (goal ≥ 650)
#   slide     slide prediction end to end vs model only on the same tiles (goal ≥ 70 %)
#   ddp       the engine under torchrun, DDP over every visible GPU; skipped by --smoke (DDP on the CPU with
#             two gloo processes is tests/engine/test_ddp.py, and two more interpreters would double the smoke)
# On a GPU every row is its own process under `timeout` with its planned budget, so the suite stays inside
# its total; a row that fails or runs out of time is marked in the table and the others still run.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
WORK=${SUITE_WORKDIR:-$(mktemp -d -t tissueseg-gpu-suite-XXXXXX)}
mkdir -p "$WORK"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ $SMOKE = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""
    DEV="--device cpu"
    MLPS="--size 32 --batch 2 --steps 1 --warmup 1 --decoder-channels 16"  # no --compile: minutes on a CPU
    PLIM="--size 32 --batch 2 --steps 1 --warmup 1"  # no --clip: ViT-B-32 takes 224-px inputs
    SEMI="--image-size 32 --batch-size 2 --speed-steps 1 --decoder-channels 16 --threads 1"
    OVER="--threads 1 --size 32 --batch 2 --steps 1 --epochs 1 --rounds 1 --decoder-channels 16"
    SLIDE="--size 512 --tile 128 --overlap 16 --batch-size 4 --workers 0 --threads 1 --decoder-channels 16"
    declare -A BUDGET=([mlps]=60 [plimseg]=60 [semi]=60 [overhead]=60 [slide]=60 [ddp]=0)
else
    DEV="--device cuda"
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "$GPUS" -ge 1 ] || { echo "error: no GPU found (fix: run on a GPU machine, or pass --smoke)" >&2; exit 1; }
    WORKERS=$(( $(nproc) / GPUS > 8 ? 8 : $(nproc) / GPUS ))
    MLPS="--size 224 --batch 20 --steps 30 --warmup 5 --compile"
    PLIM="--size 224 --batch 20 --steps 15 --warmup 3 --clip"
    SEMI="--image-size 224 --batch-size 8 --speed-steps 20 --decoder-channels 256"
    OVER="--size 224 --batch 20 --steps 20 --epochs 2 --rounds 2 --workers $WORKERS --decoder-channels 256"
    SLIDE="--size 8192 --tile 512 --batch-size 32 --workers $WORKERS --decoder-channels 256"
    DDP="--size 224 --batch 20 --steps 20 --epochs 2 --rounds 2 --workers $WORKERS"
    declare -A BUDGET=([mlps]=150 [plimseg]=45 [semi]=45 [overhead]=120 [slide]=60 [ddp]=45)
fi
ROWS=(mlps plimseg semi overhead slide ddp)
declare -A COMMAND=(
    [mlps]="benchmarks/mlps_speed.py $DEV $MLPS"
    [plimseg]="benchmarks/plimseg_speed.py $DEV $PLIM"
    [semi]="benchmarks/semi_ebhi.py $DEV --format synthetic --labelled 25% --rows --no-full --speed --no-pretrained \
--text-encoder learnable --out $WORK/semi $SEMI"
    [overhead]="benchmarks/training_overhead.py $DEV $OVER --workdir $WORK/overhead"
    [slide]="benchmarks/slide_throughput.py $DEV $SLIDE --workdir $WORK/slide"
)
total=0; for r in "${ROWS[@]}"; do total=$((total + BUDGET[$r])); done
echo "GPU suite$([ $SMOKE = 1 ] && echo ' --smoke (CPU)'), work folder $WORK; planned budget per row (s):"
for r in "${ROWS[@]}"; do printf '  %-9s %4d\n' "$r" "${BUDGET[$r]}"; done
echo "  total     $total$([ $SMOKE = 1 ] || echo ' (≤ 480)')"

if [ $SMOKE = 1 ]; then
    args=(); for r in "${ROWS[@]}"; do [ "$r" = ddp ] || args+=("$r" "${BUDGET[$r]}" "${COMMAND[$r]}"); done
    "$PYTHON" benchmarks/suite_rows.py run "$WORK" "${args[@]}"
    echo "skipped on the CPU smoke: DDP with two gloo processes is tests/engine/test_ddp.py" >"$WORK/ddp.out"
    : >"$WORK/ddp.err"; echo 0 >"$WORK/ddp.rc"; echo 0 >"$WORK/ddp.ms"
else
    COMMAND[ddp]="-m torch.distributed.run --standalone --nproc-per-node $GPUS benchmarks/training_overhead.py \
--engine-only --rows mlps-stage1 --device auto $DDP --workdir $WORK/ddp"
    for r in "${ROWS[@]}"; do
        start=$(date +%s%N)
        timeout --kill-after=10 "${BUDGET[$r]}" $PYTHON ${COMMAND[$r]} >"$WORK/$r.out" 2>"$WORK/$r.err"
        echo $? >"$WORK/$r.rc"
        echo $(( ($(date +%s%N) - start) / 1000000 )) >"$WORK/$r.ms"
    done
fi
for r in "${ROWS[@]}"; do
    echo; echo "== $r ($(cat "$WORK/$r.ms") ms, rc $(cat "$WORK/$r.rc")): ${COMMAND[$r]:-}"
    cat "$WORK/$r.out"
    [ "$(cat "$WORK/$r.rc")" = 0 ] || tail -n 20 "$WORK/$r.err"
done
echo; echo "## GPU suite results$([ $SMOKE = 1 ] && echo ' (--smoke: tiny sizes on the CPU; the numbers mean nothing)')"
"$PYTHON" benchmarks/suite_rows.py table "$WORK" "${ROWS[@]}"
