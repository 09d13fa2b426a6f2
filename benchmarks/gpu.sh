#!/usr/bin/env bash
# The GPU check, for a machine with CUDA: the gpu-marked tests, then attack throughput (LeNet,
# ConvNet, ResNet-18 at K = 1..256), the thread executor's audit overhead and SemSim pairs/s,
# each printed as a markdown table for BENCHMARKS.md. About 6 minutes on one recent GPU.
#
#   bash benchmarks/gpu.sh                     # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh  # a seconds-long dry run of the same steps on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
device=${DEVICE:-cuda}
if [ -n "${QUICK:-}" ]; then ks=1,2; iterations=2; rounds=1; models=lenet; else
  ks=1,4,16,64,256; iterations=20; rounds=2; models=lenet,convnet,resnet18; fi

echo "## $(date -u +%Y-%m-%d) on $("$python" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
echo "### gpu-marked tests"
if [ "$device" = cuda ]; then "$python" -m pytest -q -m gpu -p no:cacheprovider; else echo "(skipped: DEVICE=$device)"; fi
echo "### attack throughput"
"$python" benchmarks/attack_throughput.py --sweep "$models" --ks "$ks" --iterations "$iterations" --device "$device"
echo "### audit overhead, thread executor"
"$python" benchmarks/audit_overhead.py --executors thread --rounds "$rounds" --iterations "$iterations" --device "$device"
echo "### SemSim pairs per second"
"$python" benchmarks/semsim_throughput.py --device "$device" --skip-eval --pairs "$([ -n "${QUICK:-}" ] && echo 16 || echo 4096)"
