#!/usr/bin/env bash
# The speed options of every board model (issue "Training at the speed the CPU allows"):
# fp32, channels_last, bf16 autocast, both, and channels_last under torch.compile (fp32:
# bf16 is no candidate on a CPU without BF16 instructions), at the board's shape (160x64,
# batch 32), at THREADS torch threads (1: run it beside one other one-thread run, as the
# board's runners are; 2: alone). Writes results/bench/options/<setting>_t<THREADS>.json.
# The bf16 settings get one timing each: on an AVX2-only CPU they run ~8x slower, and one
# timing says so; the compiled one gets two after a warm-up that pays the compilation.
#   bash tools/bench_options.sh 1
set -euo pipefail
threads=${1:?usage: tools/bench_options.sh THREADS}
out=results/bench/options
mkdir -p "$out"
models=jlml,osnet_x1_0,resnet50,pcb_p4,hacnn,mlfn
run() {  # run NAME REPEATS [jlml-bench speed flags]
  local name=$1 repeats=$2; shift 2
  OMP_NUM_THREADS=$threads jlml-bench speed --models "$models" --height 160 --width 64 \
    --batch 32 --threads "$threads" --warmup 1 --repeats "$repeats" --iters 2 "$@" \
    --output "$out/${name}_t${threads}.json"
}
run fp32 3
run channels_last 3 --channels-last
run channels_last_compile 2 --channels-last --compile
run bf16 1 --amp bf16
run bf16_channels_last 1 --amp bf16 --channels-last
