#!/usr/bin/env bash
# The speed options of every board model (issue "Training at the speed the CPU allows"):
# fp32, channels_last, bf16 autocast, both, and channels_last under torch.compile (fp32:
# bf16 is no candidate on a CPU without BF16 instructions), at the board's
# shape (160x64, batch 32), at THREADS torch threads (1: run it beside one other one-thread
# run, as the board's runners are; 2: alone). Writes results/bench/options/<setting>_t<THREADS>.json.
#   bash tools/bench_options.sh 1
set -euo pipefail
threads=${1:?usage: tools/bench_options.sh THREADS}
out=results/bench/options
mkdir -p "$out"
models=jlml,osnet_x1_0,resnet50,pcb_p4,hacnn,mlfn
run() {  # run NAME [jlml-bench speed flags]
  local name=$1; shift
  OMP_NUM_THREADS=$threads jlml-bench speed --models "$models" --height 160 --width 64 \
    --batch 32 --threads "$threads" --warmup 1 --repeats 3 "$@" --output "$out/${name}_t${threads}.json"
}
run fp32
run channels_last --channels-last
run bf16 --amp bf16
run bf16_channels_last --amp bf16 --channels-last
run channels_last_compile --channels-last --compile
