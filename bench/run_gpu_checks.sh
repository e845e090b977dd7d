#!/usr/bin/env bash
# On a machine with a CUDA GPU: the pipeline tests with their models on the GPU, then bench/bench_gpu.py.
#
#   bash bench/run_gpu_checks.sh [OUTDIR]
#
# The tests run with DIFFTUMOR_TEST_DEVICE=cuda (tests/conftest.py): the pipeline, sampler, conversion-parity and
# released-size float64 tests move their models to the GPU; inputs and references stay on the CPU. Logs go to OUTDIR.
set -uo pipefail
out="${1:-gpu-checks}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/machine.txt"
DIFFTUMOR_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider \
    tests/pipelines tests/models/test_released_size_fp64.py tests/models/test_transposed_conv.py \
    tests/schedulers/test_samplers_on_real_ct.py \
    "tests/conversion/test_conversion.py::test_convert_command_writes_a_pipeline_that_reproduces_the_original" \
    2>&1 | tee "$out/pytest_cuda.log" | tail -25
tests=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-300}" python3 bench/bench_gpu.py --batches 1 8 32 --repeats "${REPEATS:-5}" \
    --profile "${PROFILE:-8}" 2>&1 | tee "$out/bench_gpu.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $(( tests != 0 ? tests : bench ))
