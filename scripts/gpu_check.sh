#!/usr/bin/env bash
# The GPU checks of issue 12 in one short run, for a lent GPU machine whose python3 already has a
# CUDA build of torch (and numpy, scipy, matplotlib, jaxtyping, pyyaml, tqdm, pytest) but nothing
# can be downloaded:
#   1. the CUDA tests (tests/test_cuda.py);
#   2. tms_5-2 and resid_mlp2 steps/s with `compile: on` and then `off`, 300 steps each.
#
# Prepare here, where packages can be downloaded:   make gpu-wheels    (fills .whl/)
# Then on the GPU machine, from the repository root, with .whl/ carried along:
#   OUT=<folder for the logs> bash scripts/gpu_check.sh
# (with the `device` tool: run(command="bash scripts/gpu_check.sh", carry=[".whl"]); $OUT is set).
#
# What it prints and leaves in $OUT: cuda_tests.log, bench_compile_on.json / .log,
# bench_compile_off.json / .log. About 6–8 minutes on an H200, most of it compilation.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
STEPS=${STEPS:-300}
EXPERIMENTS=${EXPERIMENTS:-tms_5-2,resid_mlp2}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# The project's own dependencies the GPU image lacks (make gpu-wheels lists them), without
# touching its torch.
python3 -m pip install --quiet --no-index --no-deps --find-links .whl .whl/*.whl || exit 2
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

status=0
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" || status=1
for mode in on off; do
    python3 scripts/benchmark.py --device cuda --compile "$mode" --experiments "$EXPERIMENTS" \
        --steps "$STEPS" --json "$OUT/bench_compile_$mode.json" 2>&1 | tee "$OUT/bench_compile_$mode.log" || status=1
done
exit $status
