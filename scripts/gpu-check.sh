#!/usr/bin/env bash
# The GPU check of issue 9, for a lent H100/H200: the fast T5 against transformers' in bf16
# (fast-check), its generation against HF generate at t5-large (bench-eval), and training
# throughput of scratch/t5-base (our step, HF's T5) and scratch/t5-large (our step, the fast T5)
# at source 1024 / target 128, bf16, SuperNI prompt lengths, global batch 128
# sequences, ours against Seq2SeqTrainer with group_by_length, median of 3 alternating rounds.
#
#   scripts/gpu-check.sh                      # from the repository root; results in $OUT or ./gpu-check-out
#   GPU_CHECK_DRY_RUN=1 scripts/gpu-check.sh  # the same steps on CPU with scratch/t5-tiny, a few steps
#
# Needs only Python with torch and transformers (Seq2SeqTrainer also needs accelerate: without it
# only our side runs, and versions.txt says so); installs nothing, uses the repository through
# PYTHONPATH (no `pip install -e`). Every step runs under `timeout`, so one hang cannot take the
# budget: all steps together stay under 8 minutes. The bench writes its JSON after every round, so
# a step stopped by its timeout keeps the rounds it finished. Global batch = --batch x --accumulation:
# the micro-batches are what fitted on an H200 at main 63dcefe (t5-base 32 took 77 GB; t5-large 32
# did not fit in 139 GB); a side that does not fit is reported as such by the bench. t5-large runs
# ours with a token budget (--max-tokens: micro-batches of at most that many padded tokens, lengths
# bucketed, the global batch still 128 sequences): 9216 = 8 rows of 1024 + 128, what fitted as batch 8.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-check-out}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    # shape batch accumulation steps timeout_s implementation (of our side: hf, or the fast T5) max_tokens (0: fixed micro-batches of `batch` sequences)
    RUNS=("scratch/t5-tiny 2 2 2 120 hf 0" "scratch/t5-tiny 2 2 2 120 fast 2304")
    COMMON=(--threads 1 --repeats "${REPEATS:-2}")
    CHECK=(--shape scratch/t5-tiny --batch 2 --max-source 128 --max-target 32 --precision fp32)
    EVAL=(--shape scratch/t5-tiny --prompts 8 --batch 4 --max-source 128 --max-new-tokens 8 --threads 1 --repeats 2)
else
    RUNS=("scratch/t5-base 32 4 4 100 hf 0" "scratch/t5-large 8 16 3 180 fast 9216")
    COMMON=(--precision bf16 --repeats "${REPEATS:-3}")
    CHECK=(--shape scratch/t5-large --batch 4 --precision bf16)
    EVAL=(--shape scratch/t5-large --prompts 64 --batch 32 --max-new-tokens 32 --precision bf16 --repeats 3)
fi

step() {  # step NAME TIMEOUT_S COMMAND...: run it under a timeout, its output in $OUT/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s$([ $rc = 124 ] && echo " (stopped at its ${limit} s limit)")" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
step nvidia-smi 20 bash -c 'nvidia-smi && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || echo "no nvidia-smi"'
step versions 40 "$PYTHON" -c '
import importlib.util, platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("accelerate", "present" if importlib.util.find_spec("accelerate") else "absent: Seq2SeqTrainer cannot run, ours only")
'
cp "$OUT/versions.log" "$OUT/versions.txt"
HF=(--hf-group-by-length --no-hf-defaults)
grep -q "accelerate absent" "$OUT/versions.txt" && HF=(--no-hf)

# The fast T5 against transformers' (eager) in bf16: loss and gradients, the relative bias's included.
step fast-check 70 "$PYTHON" -m itstudy.training.fast_check "${CHECK[@]}"
# Greedy generation: the fast T5's KV-cached decoding against HF generate, same model and prompts.
step bench-eval 60 "$PYTHON" -m itstudy.training.bench eval "${EVAL[@]}" --out "$OUT/bench-eval.json"
for run in "${RUNS[@]}"; do
    read -r shape batch accumulation steps limit implementation max_tokens <<<"$run"
    name="bench-${shape#scratch/}-$implementation" budget=()
    [ "$max_tokens" != 0 ] && name="$name-tokens$max_tokens" budget=(--max-tokens "$max_tokens")
    step "$name" "$limit" "$PYTHON" -m itstudy.training.bench train --shape "$shape" --max-source 1024 --max-target 128 \
        --batch "$batch" --accumulation "$accumulation" --steps "$steps" --implementation "$implementation" \
        "${budget[@]}" "${COMMON[@]}" "${HF[@]}" --out "$OUT/$name.json"
done
echo "total: $SECONDS s" | tee -a "$OUT/summary.txt"
