#!/usr/bin/env bash
# Pack into .gpu-bench/ (ignored) what bench/serving.py needs on a GPU host that has PyTorch but no Redis and no
# network: redis-server and its libraries unpacked from Debian's packages, and the redis, hiredis and mmh3 wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-bench
rm -rf "$out" && mkdir -p "$out/debs" "$out/root" "$out/wheels"
(cd "$out/debs" && apt-get download -q redis-tools libjemalloc2 liblua5.1-0 liblzf1 libssl3 libsystemd0 libatomic1 \
    libcap2 libgcrypt20 liblz4-1 libzstd1 liblzma5 libgpg-error0 2>/dev/null)
for deb in "$out"/debs/*.deb; do dpkg -x "$deb" "$out/root"; done
rm -rf "$out/debs"
for py in 3.10 3.11 3.12 3.13; do
    .venv/bin/pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$py" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$out/wheels" redis==7.4.1 hiredis==3.5.0 mmh3==5.3.1
done
du -sh "$out"
