#!/usr/bin/env bash
# Prepare .gpu/ : everything the offline GPU machine (Python 3.12, no network, no
# package index) needs to build llama-cpp-python and run llmrun.
#
#   .gpu/llama_cpp_python-<ver>.tar.xz  slimmed llama-cpp-python sdist (build it there)
#   .gpu/whl/*.whl                      runtime wheels for cp312 manylinux x86_64, minus
#                                       what the GPU machine already has installed
#   .gpu/whl.lock                       name==version of every wheel in .gpu/whl
#   .gpu/device-needs.txt               what the kept wheels require of the packages
#                                       we dropped (must be met by the device's own copies)
#   .gpu/check_device.py                checks device-needs.txt on the device
#
# Run from the repo root:  bash bench/gpu_prepare.sh
# Idempotent: .gpu/ is rebuilt from scratch each run (downloads are cached by pip);
# the tarball is packed deterministically.
#
# On the device:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#       --target /tmp/site .gpu/whl/*.whl
#   mkdir -p /tmp/src && tar -xJf .gpu/llama_cpp_python-0.3.36.tar.xz -C /tmp/src
#   CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" python3 -m pip install \
#       --no-deps --no-build-isolation --no-index --target /tmp/llama \
#       /tmp/src/llama_cpp_python-0.3.36
#   export PYTHONPATH=/tmp/llama:/tmp/site:$PWD/src
#   python3 .gpu/check_device.py
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f pyproject.toml ] && grep -q '^name = "llmrun"' pyproject.toml \
    || { echo "gpu_prepare: run me from the llmrun repo" >&2; exit 1; }

LLAMA_VER=0.3.36
OUT=.gpu
PY=${PYTHON:-python3}
PIP=("$PY" -m pip)
CACHE=${GPU_PREPARE_CACHE:-${TMPDIR:-/tmp}/llmrun-gpu-prepare}
MAX_MB=40

# What the GPU machine already has (normalized names). typer and click are NOT
# here on purpose: llmrun needs typer>=0.29,<0.30 and the device's version is unknown.
DEVICE_HAS=(
    numpy torch jinja2 markupsafe pyyaml psutil rich pygments
    markdown-it-py mdurl filelock fsspec packaging tqdm requests urllib3 certifi idna
    charset-normalizer httpx httpcore h11 anyio huggingface-hub hf-xet pillow
    shellingham uvloop scikit-build-core cmake ninja pathspec setuptools wheel pip
)
# Versions known on the device: resolve against them so the closure fits them.
DEVICE_NUMPY=2.5.2
DEVICE_HF_HUB=1.33.0

# Extra requirements (space separated), e.g. GPU_EXTRA_REQS="pytest>=8 pytest-timeout>=2.3"
EXTRA_REQS=${GPU_EXTRA_REQS:-}

mkdir -p "$CACHE" "$OUT"

###############################################################################
# 1. slimmed llama-cpp-python sdist
###############################################################################
SDIST="$CACHE/llama_cpp_python-$LLAMA_VER.tar.gz"
if [ ! -s "$SDIST" ]; then
    echo ">> downloading llama-cpp-python==$LLAMA_VER sdist"
    rm -rf "$CACHE/sdist" && mkdir -p "$CACHE/sdist"
    "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$CACHE/sdist" \
        "llama-cpp-python==$LLAMA_VER" 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
    mv "$CACHE/sdist/llama_cpp_python-$LLAMA_VER.tar.gz" "$SDIST"
fi

echo ">> slimming the sdist"
SLIM="$CACHE/slim"
NAME="llama_cpp_python-$LLAMA_VER"
rm -rf "$SLIM" && mkdir -p "$SLIM"
tar -xzf "$SDIST" -C "$SLIM"
L="$SLIM/$NAME/vendor/llama.cpp"
[ -f "$L/CMakeLists.txt" ] && [ -f "$L/tools/mtmd/CMakeLists.txt" ] \
    || { echo "gpu_prepare: unexpected sdist layout" >&2; exit 1; }
# Safe to drop: llama.cpp is add_subdirectory'd (LLAMA_STANDALONE=OFF), so
# LLAMA_BUILD_TESTS/EXAMPLES/TOOLS/SERVER default OFF and tests/, examples/, tools/*
# are never added; llama-cpp-python add_subdirectory's only tools/mtmd (kept: libmtmd).
# tools/ui is the server web UI. models/ and docs/ are data/docs only.
rm -rf "$L/models" "$L/docs" "$L/tests" "$L/examples" "$L/tools/ui"
# .git folders (the sdist ships the whole repo .git, ~39 MB) and the submodule's
# "gitdir:" pointer file into it, which would dangle. common/ only warns without them.
find "$SLIM/$NAME" -name .git -prune -exec rm -rf {} +

TARBALL="$OUT/$NAME.tar.xz"
rm -f "$TARBALL"
tar --sort=name --mtime='2020-01-01 00:00Z' --owner=0 --group=0 --numeric-owner \
    -C "$SLIM" -cf - "$NAME" | xz -9 -T1 -c > "$TARBALL"

# Configure-only check of the slimmed tree (CPU), mirroring what scikit-build-core
# passes (SKBUILD_*; llama-cpp-python's pyproject sets no cmake.args/defines).
if [ "${GPU_PREPARE_SKIP_CMAKE:-0}" != 1 ] && command -v cmake >/dev/null \
        && command -v c++ >/dev/null; then
    echo ">> cmake configure check of the slimmed tree (GGML_CUDA=off)"
    B="$CACHE/cmake-check"
    rm -rf "$B"
    GEN=()
    command -v ninja >/dev/null && GEN=(-G Ninja)
    if ! cmake -S "$SLIM/$NAME" -B "$B" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
            -DSKBUILD=2 -DSKBUILD_PROJECT_NAME=llama_cpp_python \
            -DSKBUILD_PROJECT_VERSION="$LLAMA_VER" -DSKBUILD_PLATLIB_DIR="$B/platlib" \
            -DGGML_CUDA=off -DGGML_NATIVE=off > "$B.log" 2>&1; then
        tail -40 "$B.log" >&2
        echo "gpu_prepare: cmake configure of the slimmed sdist FAILED" >&2
        exit 1
    fi
    grep -q 'llama_cpp/lib/libmtmd.so' "$B/cmake_install.cmake" \
        || { echo "gpu_prepare: no install rule for libmtmd" >&2; exit 1; }
    echo "   configure ok; libllama/libggml*/libmtmd install rules present"
else
    echo ">> (skipping cmake configure check)"
fi
rm -rf "$SLIM"

###############################################################################
# 2. wheels
###############################################################################
# llmrun's runtime deps, read from pyproject.toml, minus llama-cpp-python ...
mapfile -t LLMRUN_REQS < <("$PY" - <<'EOF'
import re, sys
try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for d in deps:
    if re.match(r"llama[-_.]cpp[-_.]python\b", d, re.I):
        continue
    print(d)
EOF
)
[ "${#LLMRUN_REQS[@]}" -gt 5 ] || { echo "gpu_prepare: could not read pyproject deps" >&2; exit 1; }
# ... plus llama-cpp-python's own runtime deps, openai (client test; <3: see below)
# and gguf.
REQS=("${LLMRUN_REQS[@]}"
      "typing-extensions>=4.5.0" "numpy>=1.20.0" "diskcache>=5.6.1" "jinja2>=2.11.3"
      "openai>=1.40" "gguf>=0.17")
# shellcheck disable=SC2206
[ -n "$EXTRA_REQS" ] && REQS+=($EXTRA_REQS)

PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

CLOSURE="$CACHE/closure"
CONSTRAINTS="$CACHE/constraints.txt"
# Resolve against the device's own numpy and huggingface_hub, so that what we ship
# fits what is there.  openai>=3 needs httpx2; huggingface_hub 1.x (the device's)
# uses httpx, and llmrun/hub.py imports httpx2 FIRST when it is importable, so
# shipping httpx2 next to hf_hub 1.33 would make hub.py use the wrong HTTP library.
# Hence openai<3 (2.x uses httpx) whenever we rely on the device's hf_hub.
resolve() {  # $1: yes|no  (pin huggingface_hub to the device's version)
    {
        echo "numpy==$DEVICE_NUMPY"
        if [ "$1" = yes ]; then
            echo "huggingface-hub==$DEVICE_HF_HUB"
            echo "openai<3"
        fi
    } > "$CONSTRAINTS"
    rm -rf "$CLOSURE" && mkdir -p "$CLOSURE"
    "${PIP[@]}" download -q "${PLAT[@]}" -c "$CONSTRAINTS" -d "$CLOSURE" "${REQS[@]}" \
        2> >(grep -v "^WARNING: Location .* is ignored" >&2)
}
echo ">> resolving the wheel closure for cp312 manylinux x86_64"
HF_PINNED=yes
if ! resolve yes; then
    echo "   huggingface_hub==$DEVICE_HF_HUB does not fit; keeping our own" >&2
    HF_PINNED=no
    resolve no
fi

echo ">> selecting wheels"
rm -rf "$OUT/whl" && mkdir -p "$OUT/whl"
DROP=("${DEVICE_HAS[@]}")
if [ "$HF_PINNED" = no ]; then   # we ship our own huggingface_hub: keep it
    DROP=("${DROP[@]/huggingface-hub/}")
fi
printf '%s\n' "${REQS[@]}" > "$CACHE/reqs.txt"
rm -rf "$CACHE/standins" && mkdir -p "$CACHE/standins"
"$PY" - "$CLOSURE" "$OUT" "$CACHE/reqs.txt" "$CACHE/standins" "${DROP[@]}" <<'EOF'
import email.parser, re, shutil, sys, zipfile
from pathlib import Path
closure, out, top, standins = (Path(a) for a in sys.argv[1:5])
drop = {re.sub(r"[-_.]+", "-", d).lower() for d in sys.argv[5:] if d}
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
def meta(whl):
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())

seen, kept, dropped = {}, [], {}
bad = [p.name for p in closure.iterdir() if not p.name.endswith(".whl")]
if bad:
    sys.exit(f"gpu_prepare: non-wheel files in the closure: {bad}")
for whl in sorted(closure.glob("*.whl")):
    m = meta(whl)
    n, v = norm(m["Name"]), m["Version"]
    if n in seen:
        sys.exit(f"gpu_prepare: two versions of {n}: {seen[n]} and {v}")
    seen[n] = v
    if n in drop:
        dropped[n] = v
        shutil.copy2(whl, standins / whl.name)   # stand-in for the device's copy
        continue
    shutil.copy2(whl, out / "whl" / whl.name)
    kept.append((n, v, m))

env = {"python_version": "3.12", "python_full_version": "3.12.3",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
       "platform_machine": "x86_64", "extra": ""}
needs = [f"{norm(Requirement(r).name)}{Requirement(r).specifier}    # top-level requirement"
         for r in top.read_text().splitlines() if norm(Requirement(r).name) in drop]
for n, v, m in kept:
    for r in m.get_all("Requires-Dist") or []:
        req = Requirement(r)
        if req.marker and not req.marker.evaluate(env):
            continue
        if norm(req.name) in drop:
            needs.append(f"{norm(req.name)}{req.specifier or ''}    # {n} {v}")
(out / "whl.lock").write_text("".join(f"{n}=={v}\n" for n, v, _ in sorted(kept)))
(out / "device-needs.txt").write_text(
    "# what the shipped wheels require of packages left to the device's own install\n"
    + "".join(sorted(f"{x}\n" for x in set(needs))))
print(f"   kept {len(kept)} wheels; dropped (device has): "
      + ", ".join(f"{n} {v}" for n, v in sorted(dropped.items())))
EOF

# Everything kept must install together offline, each package once ...
# (--ignore-requires-python: this interpreter may not be 3.12; the download above
# already applied Requires-Python against 3.12.)
"${PIP[@]}" install -q --dry-run --ignore-installed --ignore-requires-python --no-index --no-deps \
    "${PLAT[@]}" --target "$CACHE/dryrun" "$OUT"/whl/*.whl \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
# ... and the full requirement set must resolve offline from .gpu/whl plus the
# dropped packages (stand-ins for the device's copies), using every shipped wheel.
"${PIP[@]}" install -q --dry-run --ignore-installed --ignore-requires-python --no-index \
    "${PLAT[@]}" \
    --target "$CACHE/dryrun" --find-links "$OUT/whl" --find-links "$CACHE/standins" \
    --report "$CACHE/report.json" -r "$CACHE/reqs.txt" \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
"$PY" - "$CACHE/report.json" "$OUT/whl.lock" <<'EOF'
import json, re, sys
got = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
       for i in json.load(open(sys.argv[1]))["install"]}
lock = dict(l.split("==") for l in open(sys.argv[2]).read().split())
missing = {n: v for n, v in lock.items() if got.get(n) != v}
if missing:
    sys.exit(f"gpu_prepare: offline resolution did not use {missing}")
print(f"   offline resolution ok: {len(got)} packages, all {len(lock)} shipped wheels used")
EOF
rm -rf "$CACHE/dryrun"

# A 1-second check to run first on the device (device Python, PYTHONPATH as used):
#   PYTHONPATH=/tmp/site python3 .gpu/check_device.py
cat > "$OUT/check_device.py" <<'EOF'
"""Do the device's own packages meet what .gpu/whl needs?  Exit 1 if not."""
import importlib.metadata as md, importlib.util, pathlib, sys
from packaging.requirements import Requirement
bad = 0
for line in (pathlib.Path(__file__).parent / "device-needs.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        v = md.version(req.name)
    except md.PackageNotFoundError:
        v = None
    if v is None or not req.specifier.contains(v, prereleases=True):
        print(f"MISSING/OLD: {req} (device has {v})"); bad = 1
try:
    hf = md.version("huggingface_hub")
    if int(hf.split(".")[0]) < 2 and importlib.util.find_spec("httpx2"):
        print(f"WARNING: httpx2 is importable but huggingface_hub is {hf} (httpx):"
              " llmrun/hub.py will pick httpx2 and mismatch the Hub session"); bad = 1
except md.PackageNotFoundError:
    pass
print("device packages OK" if not bad else "device packages NOT OK")
sys.exit(bad)
EOF

###############################################################################
# 3. report
###############################################################################
echo ">> $OUT/whl:"
ls -1 "$OUT/whl" | sed 's/^/   /'
echo ">> $TARBALL: $(du -h "$TARBALL" | cut -f1)"
BYTES=$(du -sb "$OUT" | cut -f1)
echo ">> total $OUT: $(du -sh "$OUT" | cut -f1) ($BYTES bytes)"
if [ "$BYTES" -ge $((MAX_MB * 1000 * 1000)) ]; then
    echo "gpu_prepare: $OUT is over ${MAX_MB} MB" >&2
    exit 1
fi
