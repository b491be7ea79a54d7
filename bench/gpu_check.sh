#!/usr/bin/env bash
# Everything this project runs on a lent GPU machine, in one call (DESIGN section 10).
#
# Here, first:
#   python bench/gpu_prepare.py [--silver-docs 4000 --case-augment 0.25]   # .gpu/data: training examples (with
#                                                      # stage 7's extra text), KB, eval windows and NER spans
#   bash ../shared/tools/gpu-model-parts.sh .gpu 39    # .gpu/model.part.aa|ab|ac: the default model's GGUF
#   pip download --no-deps -d .gpu/whl transformers==5.24.0 peft==0.21.2 gguf==0.19.0   # (image has 5.17)
# A call carries at most 64 MiB with the working tree (~24 MB with the bundled adapter), so the model
# travels in parts, one per call, each call right after the last (the machine stays warm ~30 s):
#   calls 1, 2: carry .gpu/model.part.aa (then .ab); run: mkdir -p /root/keep && cp .gpu/model.part.* /root/keep/
#   call 3: carries .gpu/model.part.ac .gpu/whl .gpu/data; runs: CALL_SECONDS=<its timeout_s> bash bench/gpu_check.sh
#   e.g. configs/default.toml's stage 7 as it was made on 2026-12-04 (onegen/default_adapter was then stage 6's),
#   compared with the model it started from in the same call:
#   CALL_SECONDS=590 DECODE=0 GPU_RUN_ARGS="--stages 7 --init onegen/default_adapter --baseline onegen/default_adapter"
#   Stage 7 again with another seed, from stage 6 (commit 8a0a342's adapter; one call more, before call 3):
#     here: mkdir -p .gpu/s6 && git archive 8a0a342 onegen/default_adapter | tar x -C .gpu/s6
#     call: carry .gpu/s6; run: cp -r .gpu/s6/onegen/default_adapter /root/keep/stage-6
#     call 3: GPU_RUN_ARGS="--stages 7 --init /root/keep/stage-6 --seed 1"  (about 450 s: 350 steps, then linking)
#   Linker settings alone, no training: the shipped default decoded on all ten sets, which measures the README table
#   in one pass (since 2026-12-05 it is the GPU's candidates with the documents split spans changes relinked on a
#   CPU), about 160 s of linking; call 3 runs:
#     CALL_SECONDS=590 DECODE=0 GPU_RUN_ARGS="--link-only --init onegen/default_adapter" bash bench/gpu_check.sh
#   (with --baseline DIR, another model's candidates beside it, e.g. a linker_config.json changed in a copy)
#
# $OUT brings back at most 8 files of at most 16 MiB each, so the results are packed into:
#   adapter.tgz.part.*  the trained stages (bench/gpu_run.py's stage-N/ folders, checkpoints left out), split under 16 MiB
#   results.tgz         candidates-*.jsonl.gz (main; baseline with --baseline), results.json, gpu_run.log
#   gpu.txt, decode.log the machine, and the decode benchmarks
# Then, here: cat adapter.tgz.part.* | tar xz; tar xzf results.tgz; python bench/gpu_score.py --candidates .
set -uo pipefail
OUT=${OUT:?set OUT to the folder for results}
DATA=${DATA:-.gpu/data}  # bench/gpu_prepare.py output
GPU_RUN_ARGS=${GPU_RUN_ARGS:-}  # bench/gpu_run.py options: the recipe's stages to run, e.g. "--stages 1-2" (default all
                                # of configs/default.toml), "--stages 3-4 --init onegen/default_adapter" to go on from
                                # a stage carried there (a CPU smoke run: --limit-examples 2 --limit-kb 200)
CALL_SECONDS=${CALL_SECONDS:-600}  # the call's timeout: the decode benchmarks get what is left of it
DECODE=${DECODE:-1}  # 0: no decode benchmark after the run (its device time goes to nothing else)
DECODE_7B=${DECODE_7B:-0}  # 1: also the random Llama-7B decode table (~80 s; it did not fit after a 420 s run)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ONEGEN_CACHE=/tmp/onegen-cache ONEGEN_DEFAULT_GGUF=/root/keep/model.gguf

mkdir -p /root/keep
cp .gpu/model.part.* /root/keep/ && cat /root/keep/model.part.* > "$ONEGEN_DEFAULT_GGUF" || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD  # the wheels, and the repository (bench/ scripts import eval, onegen, kb)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"

WORK=/tmp/gpu-out
mkdir -p "$WORK"
left() { echo $((CALL_SECONDS - SECONDS - 15)); }  # seconds left in this call, with a margin for the transfer
# cut off 20 s before the call ends, so that what it wrote (adapter, finished datasets' candidates) is packed
timeout "$(( $(left) - 20 ))" python3 bench/gpu_run.py --data "$DATA" --out "$WORK" \
    $GPU_RUN_ARGS 2>&1 | tee "$WORK/gpu_run.log" | grep -v "Loading weights"
(cd "$WORK" && ls -d stage-* >/dev/null 2>&1 && tar czf - --exclude='stage-*/ray' stage-* | split -b 15M - "$OUT/adapter.tgz.part.")
(cd "$WORK" && tar czf "$OUT/results.tgz" --exclude='stage-*' .)
LAST=$(ls -d "$WORK"/stage-*/ 2>/dev/null | sort -V | tail -1)
ls -la "$OUT"
echo "== decode, trained default, corpus sample ($(left) s left)" | tee "$OUT/decode.log"
[ "$DECODE" = 1 ] && [ -f "${LAST}adapter_config.json" ] && [ "$(left)" -gt 20 ] && timeout "$(left)" python3 bench/decode.py --model "$LAST" \
    --input onegen/samples/corpus.jsonl --texts 16 --batch-size 8 --repeats 1 2>&1 | grep -v "Loading weights" | tee -a "$OUT/decode.log"
if [ "$DECODE_7B" = 1 ] && [ "$(left)" -gt 30 ]; then
    echo "== decode, random Llama-7B shape, bf16 ($(left) s left)" | tee -a "$OUT/decode.log"
    timeout "$(left)" python3 bench/decode.py --random-llama7b --texts 16 --batch-size 8 --repeats 1 2>&1 \
        | grep -v "Loading weights" | tee -a "$OUT/decode.log"
fi
echo "== done"
