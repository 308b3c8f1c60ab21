#!/usr/bin/env bash
# The GPU evidence of docs/gpu.md, on a machine with an NVIDIA GPU, torch and transformers (it ran on the lent
# H200): the GPU tests, three GPT-2 ladders (uncapped, an emulated 40 GiB GPU, a GPU-leaking trainer) with their
# reports, and preflight refusing two slots on one GPU. Writes $OUT/gpu-evidence.txt (everything it printed)
# and $OUT/evidence.tar.gz (the reports and the run folders).
#   OUT=/tmp/gpu-evidence bench/gpu_evidence.sh
set -u
OUT=${OUT:-/tmp/gpu-evidence}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" reports/gpu
{
  echo "== $(date -u +%FT%TZ) on: $(nvidia-smi -L)"
  echo "== $PY -m pytest -q -m 'gpu or process' tests/test_gpu.py"
  $PY -m pytest -q -p no:cacheprovider -m "gpu or process" tests/test_gpu.py
  for spec in ladders/gpu/gpt2_h200.yaml ladders/gpu/gpt2_h200_cap40.yaml ladders/gpu/gpt2_leak_h200.yaml; do
    echo "== hlrp-ladder run $spec"
    $PY -m hlrp_ladder run "$spec"
    echo "== exit $?"
    $PY -m hlrp_ladder report --spec "$spec" --out reports/gpu
  done
  echo "== hlrp-ladder preflight ladders/gpu/two_slots_one_gpu.yaml"
  $PY -m hlrp_ladder preflight ladders/gpu/two_slots_one_gpu.yaml
  echo "== exit $?"
} 2>&1 | tee "$OUT/gpu-evidence.txt"
tar czf "$OUT/evidence.tar.gz" reports/gpu runs/gpt2_* 2>/dev/null
