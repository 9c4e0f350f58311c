#!/usr/bin/env bash
# The GPU checks of issue 17, in one run that fits a lent GPU's time (under 8 minutes on one
# H100/H200). Run from the repository root on the GPU machine:
#
#     bash benchmarks/gpu_check.sh            # writes $OUT (default build/gpu-check) and a table
#     GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh    # the same steps, tiny, on CPU (plumbing)
#
# 1. DPO against TRL on realistic lengths (benchmarks/dpo_vs_trl.py --data realistic) on a
#    random Qwen2-0.5B-shaped model in bf16, at 8 and at 32 pairs per step: tok/s, MFU, peak
#    memory, final loss, for alignkit and every TRL setting that runs there;
# 2. generation (benchmarks/generation.py) on the same shape, 256 new tokens: the backend as it is
#    by default (dynamic cache, batch 16; 128 prompts), then 512 prompts at batch 128 with the
#    dynamic cache and with the static one (decoding compiled into CUDA graphs), and with
#    continuous batching over a paged cache (all 512 requests in flight);
# 3. `alignkit demo` on cuda and on cpu: wall time of each;
# 4. where a DPO step waits for the GPU (benchmarks/host_syncs.py: synchronising operations a
#    step, by line).
# Each step's output goes to $OUT/*.log; the summary table is printed last and written to
# $OUT/summary.md. A step that fails is reported in the table and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu-check}"
mkdir -p "$OUT"
export ALIGNKIT_CACHE="${ALIGNKIT_CACHE:-$OUT/cache}"

if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
    DEVICE=cpu DTYPE=fp32 GEN_DTYPE=float32 SHAPE=qwen2-small DPO_MODEL=testbed
    DPO8=(--batch-size 2 --steps 2 --pairs 4
          --variants alignkit,alignkit-shared,alignkit-shared-flex,alignkit-compile,trl)
    DPO32=(--batch-size 4 --steps 1 --pairs 4 --variants alignkit,trl)
    GEN_BASE=(--n 4 --max-new-tokens 8 --batch-size 2) GEN=(--n 8 --max-new-tokens 8 --batch-size 8)
    GEN_PAGED_BATCH=8 SYNCS=(--steps 1 --batch-size 2)
    DEMO=(--skip redteam --skip revise --skip feedback --skip train --skip evaluate)
else
    DEVICE=cuda DTYPE=bf16 GEN_DTYPE=bfloat16 SHAPE=qwen2-0.5b DPO_MODEL=random:qwen2-0.5b
    # at 8 pairs every variant (prefix sharing with sdpa and with FlexAttention, compiled layers);
    # at 32 pairs alignkit's default against the TRL settings, to fit the time
    DPO8=(--batch-size 8 --steps 24 --pairs 192)
    DPO32=(--batch-size 32 --steps 8 --pairs 256 --variants alignkit,trl,trl-precompute,trl-liger)
    GEN_BASE=(--n 128 --max-new-tokens 256 --batch-size 16)
    GEN=(--n 512 --max-new-tokens 256 --batch-size 128) DEMO=() GEN_PAGED_BATCH=512
    SYNCS=(--steps 4 --batch-size 8)
fi

status=()
step() {  # step NAME COMMAND...: run it with its output in $OUT/NAME.log, note how it ended
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name: $*" >&2
    if "$@" >"$OUT/$name.log" 2>&1; then
        status+=("| $name | ok | $((SECONDS - start)) s |")
    else
        status+=("| $name | FAILED (exit $?; see $OUT/$name.log) | $((SECONDS - start)) s |")
        tail -5 "$OUT/$name.log" >&2
    fi
}

python -c "import torch, transformers, trl; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| trl', trl.__version__, '| cuda', torch.cuda.is_available() and
torch.cuda.get_device_name())" >"$OUT/versions.txt" 2>&1
alignkit testbed build >"$OUT/testbed.log" 2>&1
for size in 8 32; do
    sizes="DPO$size[@]"  # the array DPO8 or DPO32
    step "dpo-$size" python benchmarks/dpo_vs_trl.py --data realistic --model "$DPO_MODEL" \
        --device "$DEVICE" --dtype "$DTYPE" "${!sizes}" --repeats 1 --markdown \
        --json "$OUT/dpo-$size.json"
done
gen() {  # gen NAME ARGS...: one generation benchmark run on the random model
    local name=$1
    shift
    step "$name" python benchmarks/generation.py --model "random:$SHAPE" --device "$DEVICE" \
        --dtype "$GEN_DTYPE" "$@" --batched-only --repeats 1 --json "$OUT/$name.json"
}
gen generation-default "${GEN_BASE[@]}"
gen generation-dynamic "${GEN[@]}"
gen generation-static "${GEN[@]}" --kv-cache static
gen generation-paged "${GEN[@]}" --kv-cache paged --batch-size "${GEN_PAGED_BATCH}"
step host-syncs python benchmarks/host_syncs.py --model "$DPO_MODEL" --device "$DEVICE" \
    --dtype "$DTYPE" "${SYNCS[@]}"
for device in "$DEVICE" cpu; do
    step "demo-$device" alignkit demo --device "$device" --output-dir "$OUT/demo-$device" \
        ${DEMO[@]+"${DEMO[@]}"}
    [ "$DEVICE" = cpu ] && break
done

{
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    cat "$OUT/versions.txt"
    echo
    echo "| step | result | wall |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${status[@]}"
    for size in 8 32; do
        echo
        sed -n '/^DPO, /,$p' "$OUT/dpo-$size.log"
    done
    echo
    for name in generation-default generation-dynamic generation-static generation-paged; do
        echo "$name: $(grep -h "tokens/s\|memory read" "$OUT/$name.log" | tr "\n" " ")"
    done
    echo
    sed -n '/synchronis/,$p' "$OUT/host-syncs.log"
} | tee "$OUT/summary.md"
