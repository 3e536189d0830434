#!/usr/bin/env bash
# Run on the GPU host, from the repository root, after scripts/prepare-gpu-bench.sh filled .gpu-bench/ here.
# Unpacks the wheels that fit this Python (no pip, no network), then runs the fetch + score benchmark.
set -euo pipefail
root=.gpu-bench
python3 - "$root" <<'PY'
import glob, sys, sysconfig, zipfile
root = sys.argv[1]
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
for wheel in glob.glob(f"{root}/wheels/*.whl"):
    name = wheel.rsplit("/", 1)[1]
    if f"-{tag}-" in name or name.endswith("-none-any.whl") or "-abi3-" in name:
        zipfile.ZipFile(wheel).extractall(f"{root}/site")
PY
libs="$PWD/$root/root/usr/lib/x86_64-linux-gnu:$PWD/$root/root/lib/x86_64-linux-gnu"
PYTHONPATH="$PWD/$root/site:$PWD" python3 -m bench.serving --redis-server "$root/root/usr/bin/redis-check-rdb" \
    --redis-libs "$libs" --out "${OUT:-/tmp}/gpu_bench.json" "$@"
