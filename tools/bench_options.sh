#!/usr/bin/env bash
# The speed options of every board model (issue "Training at the speed the CPU allows"):
# fp32, channels_last, bf16 autocast, both, and channels_last under torch.compile (fp32:
# bf16 is no candidate on a CPU without BF16 instructions), at the board's shape (160x64,
# batch 32), at THREADS torch threads (1: run it beside one other one-thread run, as the
# board's runners are; 2: alone). Writes results/bench/options/<setting>_t<THREADS>.json.
# The bf16 settings get one timing each, and only on a CPU with BF16 instructions; the
# compiled one gets two after a warm-up that pays the compilation.
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
# Without BF16 instructions, bf16 autocast is emulated: one timing of the six models took
# over 37 minutes on an AVX2-only EPYC (BENCHMARKS.md), so it is measured only where the
# CPU has them (or on a GPU, through jlml-bench gpu).
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
  run bf16 1 --amp bf16
  run bf16_channels_last 1 --amp bf16 --channels-last
else
  echo "bench_options: no BF16 instructions on this CPU; bf16 settings not timed"
fi
