#!/usr/bin/env bash
# The GPU measurements that benchmarks/NOTES.md lists, in three parts that each end well
# inside ten minutes on one H100. Every command's output goes to OUTDIR/log.txt; the JSON
# results go to OUTDIR as well. A command that fails or runs past its limit is reported
# and the next one runs.
#
#   bash benchmarks/gpu_runs.sh check OUTDIR       # the GPU tests; a step's profile with and
#                                                  # without a CUDA graph; the best speed run's
#                                                  # recipe (run p) with and without the graph
#   bash benchmarks/gpu_runs.sh mfu OUTDIR         # GPT-2 124M: tokens/s and MFU, ours and
#                                                  # transformers' GPT2LMHeadModel
#   bash benchmarks/gpu_runs.sh references OUTDIR [CHAPTER...]  # the chapters' full-size reference
#                                                  # recipes (ch03, ch02, ch04): one or two a call; one
#                                                  # stopped at its limit resumes where it stood when the
#                                                  # same command runs again on the same machine
#   bash benchmarks/gpu_runs.sh decode OUTDIR      # greedy decoding, lmbook against transformers'
#                                                  # generate: both shapes, float32 and bf16
#
# The corpus is read from LMBOOK_DATA (or downloaded); set LMBOOK_COMMIT where the copy has
# no .git, so that each JSON names the commit it measured.
set -uo pipefail

part=${1:?"say which part: check, mfu, decode or references"}
out=${2:?"say where the results go (a folder)"}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-python3}
failed=0

# step SECONDS COMMAND...: run COMMAND with a time limit, its output appended to the log
step() {
    local limit=$1
    shift
    echo "== $(date -u +%H:%M:%S) $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "== exit status $rc$([ "$rc" -eq 124 ] && echo " (past its limit of $limit s)")" | tee -a "$log"
        failed=$((failed + 1))
    fi
}

# run p of the notes: 1,100 steps of 128 x 256, lr 2e-3 decaying linearly to 0, weight decay 0.3
recipe=(--steps 1100 --batch-size 128 --lr 2e-3 --min-lr 0 --warmup 50 --schedule linear --weight-decay 0.3
        --eval-interval 150)

case "$part" in
check)
    "$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log"
    step 300 "$python" -m pytest -q -m gpu tests/ -p no:cacheprovider
    step 120 "$python" benchmarks/bench_gpt.py --preset shakespeare-char --batch-size 128 --no-hf --profile 10
    step 120 "$python" benchmarks/bench_gpt.py --preset shakespeare-char --batch-size 128 --no-hf --profile 10 \
        --cuda-graph
    step 120 "$python" benchmarks/speedrun_char.py "${recipe[@]}" --label p2 --out "$out/p2.json"
    step 120 "$python" benchmarks/speedrun_char.py "${recipe[@]}" --cuda-graph --label p2-graph \
        --out "$out/p2-graph.json"
    ;;
mfu)
    step 150 "$python" benchmarks/bench_gpt.py --preset gpt2 --batch-size 16 --compile --out "$out/gpt2-b16.json"
    step 150 "$python" benchmarks/bench_gpt.py --preset gpt2 --batch-size 32 --compile --vocab-size 50304 \
        --out "$out/gpt2-b32-v50304.json"
    step 240 "$python" benchmarks/bench_gpt.py --preset gpt2 --batch-size 32 --compile --vocab-size 50304 \
        --compile-mode max-autotune-no-cudagraphs --no-hf --profile 5 --out "$out/gpt2-b32-v50304-autotune.json"
    ;;
decode)
    step 240 "$python" benchmarks/bench_decode.py --out "$out/decode-fp32.json"
    step 240 "$python" benchmarks/bench_decode.py --dtype bfloat16 --out "$out/decode-bf16.json"
    ;;
references)
    shift 2
    names=("$@")
    [ ${#names[@]} -gt 0 ] || names=(ch03 ch02 ch04 ch07)
    for name in "${names[@]}"; do
        step 580 "$python" -m lmbook.runs.reference record "$name" --level gpu --directory "$out"
    done
    ;;
*)
    echo "unknown part '$part': check, mfu, decode or references" >&2
    exit 2
    ;;
esac
echo "== $(date -u +%H:%M:%S) done: $failed command(s) failed" | tee -a "$log"
[ "$failed" -eq 0 ]
