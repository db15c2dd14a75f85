#!/usr/bin/env bash
# Build Prismatic 2.x (CPU, with plane-wave HRTEM) into a virtualenv: `make prismatic`.
#   scripts/install_prismatic.sh VENV [--optional]
# Idempotent: does nothing once VENV/prismatic-build.json exists and pyprismatic imports with HRTEM output.
# Debian packages (cmake, g++, libfftw3-dev, libhdf5-dev, libboost-dev) are installed with apt-get when running
# as root; otherwise the missing ones are named. Source: $PRISMATIC_SRC (default ../shared/prismatic-src, a
# snapshot of upstream commit 9f205d0d) when present, else a clone of $PRISMATIC_REPO at $PRISMATIC_COMMIT.
# --optional (used by `make test`): a failure is recorded once in VENV/.prismatic-failed with its reason, printed,
# and not retried by later `make test` runs (the Prismatic tests then skip with that reason); `make prismatic`
# always retries.
set -uo pipefail
VENV=${1:-.venv}
MODE=${2:-}
PY="$VENV/bin/python"
SRC=${PRISMATIC_SRC:-../shared/prismatic-src}
REPO=${PRISMATIC_REPO:-https://github.com/prism-em/prismatic.git}
COMMIT=${PRISMATIC_COMMIT:-9f205d0d}
FAILED="$VENV/.prismatic-failed"
INFO="$VENV/prismatic-build.json"
PKGS="cmake g++ libfftw3-dev libhdf5-dev libboost-dev"

fail() {
    echo "$1" > "$FAILED"
    echo "prismatic: not built: $1" >&2
    if [ "$MODE" = "--optional" ]; then
        echo "prismatic: the Prismatic cross-check tests will be skipped (retry with: make prismatic)" >&2
        exit 0
    fi
    exit 1
}

usable() { "$PY" -c "import pyprismatic; assert 'saveComplexOutputWave' in pyprismatic.Metadata.fields" 2>/dev/null; }

if [ -f "$INFO" ] && usable; then
    rm -f "$FAILED"
    echo "prismatic: pyprismatic with HRTEM already built in $VENV"
    exit 0
fi
if [ "$MODE" = "--optional" ] && [ -f "$FAILED" ]; then
    echo "prismatic: skipped, an earlier build failed: $(cat "$FAILED") (retry with: make prismatic)" >&2
    exit 0
fi

# System packages
if command -v dpkg-query >/dev/null 2>&1; then
    missing=""
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
            echo "prismatic: apt-get install$missing"
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 \
                || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; } \
                || fail "apt-get could not install$missing"
        else
            fail "missing Debian packages:$missing (install them: sudo apt-get install$missing)"
        fi
    fi
fi

# Source
WORK=$(mktemp -d "${TMPDIR:-/tmp}/prismatic-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -f "$SRC/setup.py" ]; then
    cp -r "$SRC" "$WORK/src"  # the shared snapshot is read-only; the build writes next to its sources
    ORIGIN="snapshot $SRC of prism-em/prismatic"
else
    command -v git >/dev/null 2>&1 || fail "no source at $SRC and no git to clone $REPO"
    { git clone -q "$REPO" "$WORK/src" && git -C "$WORK/src" checkout -q "$COMMIT"; } >/dev/null 2>&1 \
        || fail "no source at $SRC and cloning $REPO at $COMMIT failed (network?)"
    ORIGIN="$REPO"
fi

# Build (numpy, h5py and scipy must be in the venv: --no-build-isolation builds against them)
"$PY" -m pip install -q numpy h5py scipy >/dev/null 2>&1 || fail "pip could not install numpy, h5py, scipy into $VENV"
echo "prismatic: building pyprismatic from $ORIGIN (about 1-2 minutes on 2 cores)"
CORES=$(nproc 2>/dev/null || echo 2)
if ! CMAKE_BUILD_PARALLEL_LEVEL=$CORES "$PY" -m pip install --no-build-isolation --force-reinstall --no-deps \
        "$WORK/src" > "$WORK/build.log" 2>&1; then
    reason=$(grep -iE "error|not found|could not" "$WORK/build.log" | head -n 2 | tr '\n' ' ' | cut -c1-300)
    fail "the pyprismatic build failed: ${reason:-see pip install --no-build-isolation $SRC}"
fi
usable || fail "pyprismatic was built but has no HRTEM exit-wave output (not Prismatic 2.x?)"
PYVER=$("$PY" -c "from importlib.metadata import version; print(version('PyPrismatic'))")
printf '{"prismatic_version": "2.0", "commit": "%s", "source": "%s", "pyprismatic_version": "%s"}\n' \
    "$COMMIT" "$ORIGIN" "$PYVER" > "$INFO"
rm -f "$FAILED"
echo "prismatic: built pyprismatic $PYVER (Prismatic 2.0 @ $COMMIT) into $VENV"
