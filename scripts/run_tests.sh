#!/usr/bin/env bash
# What `make test` (and so CI) runs once .venv exists, ordered to keep both cores busy:
#
#   1. the learn2learn env (.venv-l2l, `make l2l`) builds in the background -- several minutes of
#      mostly unpacking wheels -- while
#   2. the main suite runs in TEST_JOBS pytest-xdist workers (without the Ray tests and the
#      learn2learn parity file, which needs that env);
#   3. then the parity file with METAREC_L2L_PYTHON set, and the Ray tests in one plain process
#      (they share one local Ray cluster and their fault checks wait on it).
#
# Every phase runs even if an earlier one failed; the exit status is non-zero if any did.
# Usage (from the Makefile): scripts/run_tests.sh BIN_DIR L2L_VENV "XDIST_ARGS" RAY_TEST...
# $TEST_ARGS (e.g. `make test TEST_ARGS="-x -k serving"`) goes to every pytest call.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=$1 L2L_VENV=$2 XDIST_ARGS=$3
shift 3
RAY_TESTS=("$@")
eval "extra=(${TEST_ARGS:-})"  # shell words: TEST_ARGS='-k "serving or tune"' works
PARITY=tests/test_learn2learn_parity.py
mkdir -p build
L2L_LOG=build/l2l-build.log

start=$SECONDS
${MAKE:-make} --no-print-directory l2l L2L_VENV="$L2L_VENV" >"$L2L_LOG" 2>&1 &
l2l_pid=$!

ignore=(--ignore="$PARITY")
for t in "${RAY_TESTS[@]}"; do ignore+=(--ignore="$t"); done
failed=()
# pytest's exit status 5 is "no tests collected": only with a TEST_ARGS filter, not a failure.
phase() { local name=$1; shift; "$@"; local rc=$?; ((rc == 0 || rc == 5)) || failed+=("$name"); }
# shellcheck disable=SC2086  # XDIST_ARGS is "-n 2" or empty
phase "main suite" "$BIN/python" -m pytest -q $XDIST_ARGS --durations=25 "${ignore[@]}" "${extra[@]}"

if wait "$l2l_pid"; then
    echo "learn2learn env ready ($L2L_VENV; build log $L2L_LOG), $((SECONDS - start)) s after the suite started"
    METAREC_L2L_PYTHON="$(cd "$L2L_VENV" && pwd)/bin/python" \
        phase "learn2learn parity" "$BIN/python" -m pytest -q "$PARITY" "${extra[@]}"
else
    echo "building the learn2learn env failed; the end of $L2L_LOG:" >&2
    tail -n 30 "$L2L_LOG" >&2
    failed+=("learn2learn env build")
fi

phase "Ray tests" "$BIN/python" -m pytest -q --durations=10 "${RAY_TESTS[@]}" "${extra[@]}"

if ((${#failed[@]})); then
    echo "FAILED: $(IFS=,; echo "${failed[*]}" | sed 's/,/, /g') ($((SECONDS - start)) s)" >&2
    exit 1
fi
echo "all test phases passed in $((SECONDS - start)) s"
