#!/usr/bin/env bash
# The GPU-only checks and benchmarks, in one call of a lent CUDA machine (the image's python3 has torch, triton,
# transformers, peft). Each stage runs under its own time limit and logs to $OUT (or /tmp/gpu_checks); a stage
# that fails does not stop the next.
#
#   bash scripts/gpu_checks.sh tests                # kernel correctness matrix (about 9 minutes: a call of its own)
#   bash scripts/gpu_checks.sh gemv                 # the GEMV's rows of the int4 matrix (M = 1), a few others (about 2 minutes)
#   bash scripts/gpu_checks.sh bench e2e            # kernels_bench.py (carry .whl), kernels_e2e.py
#   bash scripts/gpu_checks.sh qlora gpu-tests      # QLoRA full profile (carry .carry, data/sentiment), other GPU tests
#   bash scripts/gpu_checks.sh decoder              # decoder bf16/fp16 parity tests, then decode_bench.py (about 8 minutes)
#   bash scripts/gpu_checks.sh decode-8b            # decode_bench.py on the Llama-8B shape, batch 1 (about 4 minutes)
#   bash scripts/gpu_checks.sh ncu                  # Nsight Compute on the int4 / NF4 GEMV (scripts/ncu_gemv.py), CSV in $OUT
#   bash scripts/gpu_checks.sh unpack               # join the SmolLM2 GGUF's pieces (scripts/carry_data.py) into data/smollm2
#   bash scripts/gpu_checks.sh reward sft           # review_reward.py, then sft_reviews.py, full profiles (data: minilm, reviews, smollm2)
#   bash scripts/gpu_checks.sh dpo                  # dpo_sentiment.py full profile, from sft's full run (the same warm machine)
#
# bitsandbytes / torchao wheels in .whl/ are installed to /tmp/site first, if present (see the README).
set -u
LOG=${OUT:-/tmp/gpu_checks}; mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
# what scripts/carry_data.py packed, carried by this call: into data/, where the next calls of a warm machine find it
mkdir -p data/.pieces
for name in minilm reviews; do [ -d .carry/$name ] && rm -rf data/$name && mv .carry/$name data/$name; done
for piece in .carry/smollm2.*; do [ -e "$piece" ] && mv "$piece" data/.pieces/; done
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$LOG/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOG/device.txt"

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - start)) s" | tee -a "$LOG/summary.txt"
  tail -n 25 "$LOG/$name.log"
}

for what in "$@"; do
  case $what in
    tests)  # 14 pytest workers share the GPU: compiling and autotuning, not the GPU, bound this matrix
      stage int4-first 40 python3 -m pytest -x --tb=long -p no:cacheprovider -m gpu "tests/test_kernels_int4.py::test_w4a16_other_formats_on_cuda"
      stage int8-tests 480 python3 -m pytest -q -n 4 -p no:cacheprovider -m gpu tests/test_kernels_int8.py &
      stage int4-tests 480 python3 -m pytest -q -n 10 --maxfail=10 -p no:cacheprovider -m gpu tests/test_kernels_int4.py &
      wait ;;
    gemv)  # M = 1 at every matrix shape, M = 16 and 512 at 4096², the other formats at 3072 -> 768
      stage gemv-tests 200 python3 -m pytest -q -n 8 -p no:cacheprovider -m gpu tests/test_kernels_int4.py \
        -k "(real_sizes and (-1- or 4096-4096-16- or 4096-4096-512-)) or other_formats" ;;
    bench)
      stage kernels-bench 160 python3 experiments/kernels_bench.py
      cp experiments/results/kernels_bench.* "$LOG"/ 2>/dev/null ;;
    e2e)
      stage kernels-e2e 80 python3 experiments/kernels_e2e.py
      cp experiments/results/kernels_e2e.* "$LOG"/ 2>/dev/null ;;
    qlora)
      stage qlora 420 python3 experiments/qlora.py --profile full --variants lora qlora qlora_no_dq --workers 9
      cp experiments/results/qlora.* "$LOG"/ 2>/dev/null
      find runs -name metrics.json | tar czf "$LOG/qlora_runs.tgz" -T - ;;  # every finished run, even after a timeout
    decoder)  # the bench's default profile (smollm2, llama-1b, batch 1, every mode) is one committed report
      stage decoder-tests 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decoder_gpu.py
      stage decode-bench 450 python3 experiments/decode_bench.py --write-reference
      cp experiments/results/decode_bench_nvidia_h200.* "$LOG"/ 2>/dev/null ;;
    decode-8b)  # the 8B shape, our compiled modes only (the 8B goals set them against each other and the copy rate)
      stage decode-8b 420 python3 experiments/decode_bench.py --configs llama-8b --budget-s 150 --write-reference \
        --modes "ours compiled" "ours int4 compiled" "ours nf4 compiled"
      cp experiments/results/decode_bench_*llama_8b* "$LOG"/ 2>/dev/null ;;
    ncu)  # speed of light, warp stalls, occupancy of each GEMV: DRAM-bound or issue-bound?
      stage ncu-gemv 120 ncu --nvtx --nvtx-include "profile/" --clock-control none --csv --section SpeedOfLight \
        --section WarpStateStats --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis python3 scripts/ncu_gemv.py
      cp "$LOG/ncu-gemv.log" "$LOG/ncu_gemv.csv" ;;
    unpack)
      if [ ! -f data/smollm2/.fetched ]; then
        mkdir -p data/smollm2 && name=$(awk '{print $2}' data/.pieces/smollm2.name)
        ls data/.pieces/smollm2.[0-9]* | sort -t. -k2 -n | xargs cat > "data/smollm2/$name"
        (cd data/smollm2 && sha256sum -c ../.pieces/smollm2.name) && cp data/.pieces/smollm2.fetched data/smollm2/.fetched \
          || { rm -rf data/smollm2; echo "smollm2: pieces missing or damaged"; }
      fi
      ls -la data/*/ | tee "$LOG/data.txt" ;;
    reward)
      stage review-reward 300 python3 experiments/review_reward.py --profile full
      cp runs/review_sentiment_full/metrics.json "$LOG/review_sentiment_full.json" 2>/dev/null ;;
    sft)
      stage sft-full 540 python3 experiments/sft_reviews.py --profile full
      cp experiments/results/sft_reviews.* "$LOG"/ 2>/dev/null ;;
    dpo)
      stage dpo-full 560 python3 experiments/dpo_sentiment.py --profile full
      cp experiments/results/dpo_sentiment* "$LOG"/ 2>/dev/null ;;
    gpu-tests)
      stage other-gpu-tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu --ignore=tests/test_kernels_int8.py \
        --ignore=tests/test_kernels_int4.py --ignore=tests/test_decoder_gpu.py tests ;;
    *) echo "unknown stage $what"; exit 2 ;;
  esac
done
cat "$LOG/summary.txt"
