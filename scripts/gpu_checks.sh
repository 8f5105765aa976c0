#!/usr/bin/env bash
# metarec's GPU checks as ONE prepared command, for a session that is lent a GPU machine
# (15 minutes of device time per session: run this once, then give the machine back).
#
# What it does, each step under its own time limit, everything logged under $OUT:
#   1. installs this checkout into /tmp/metarec-site (no dependencies: the machine's own torch,
#      numpy, scikit-learn, click and rich serve; nothing can be downloaded there);
#   2. tests: every learner gives the CPU's predictions on CUDA (tests/test_devices.py) and the
#      engine's CUDA parity test (tests/test_engine.py);
#      and s2Meta's fused backend against the CPU (tests/test_baselines_s2meta.py, -k cuda: losses,
#      stop probabilities and weights within 1e-4 over 3 meta-steps, eager and compiled kernels);
#   3. benchmarks/bench_mamo_speed.py on the device: one MAMO epoch, lowrank / torch.func / loop;
#   4. benchmarks/bench_s2meta_speed.py on the device: s2Meta's fused vs reference backend on the
#      first S2META_USERS users of an epoch (reference on every 8th batch), evaluation of the test users;
#   5. benchmarks/bench_methods_speed.py on the device: the Table 1 speed table's GPU column.
#
# The device machine gets the working tree only (../shared does not travel). Before the call,
# here, make a temporary git-ignored copy of ML-1M for the trip (it is never committed):
#
#   mkdir -p .gpu-data && cp -r ../shared/data/ml-1m .gpu-data/
#
# then call the device tool's run with
#   command: "bash scripts/gpu_checks.sh"   carry: [".gpu-data"]   timeout_s: 560
# and commit the JSON files it returns (files_at/...) under benchmarks/results/.
# Without .gpu-data the benchmarks run on synthetic data. For a rehearsal on a CPU machine:
#   DEVICE=cpu PYTHON=.venv/bin/python SKIP_INSTALL=1 OUT=/tmp/gpu-rehearsal MAMO_LOOP_USERS=64 \
#     TRAIN_USERS=64 EVAL_USERS=64 S2META_USERS=32 S2META_LIMIT=600 bash scripts/gpu_checks.sh
# ONLY="tests s2meta_speed" (step names, space-separated) runs those steps only.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/gpu-checks}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
DATA_DIR="${DATA_DIR:-.gpu-data}"
MAMO_LOOP_USERS="${MAMO_LOOP_USERS:-320}"   # the per-user loop is timed on these users, then extrapolated
TRAIN_USERS="${TRAIN_USERS:-640}"           # users of each method's timed epoch, extrapolated to all
EVAL_USERS="${EVAL_USERS:-}"                # test users predicted (empty: all)
S2META_USERS="${S2META_USERS:-240}"         # users of s2Meta's timed (partial) epoch, fused vs reference
S2META_LIMIT="${S2META_LIMIT:-180}"         # seconds for that step (first calls compile the fused kernels)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
        echo "== $name: skipped (ONLY=$ONLY)"
        return
    fi
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

data_args=()
if [ -f "$DATA_DIR/ml-1m/ratings.dat" ]; then
    data_args=(--data-dir "$DATA_DIR")
else
    echo "no $DATA_DIR/ml-1m/ratings.dat: the benchmarks run on synthetic data"
fi
eval_args=()
[ -n "$EVAL_USERS" ] && eval_args=(--eval-users "$EVAL_USERS")

{ command -v nvidia-smi >/dev/null && nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
    >"$OUT/machine.log" 2>&1
cat "$OUT/machine.log"

if [ -z "${SKIP_INSTALL:-}" ]; then
    step install 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/metarec-site .
    export PYTHONPATH=/tmp/metarec-site${PYTHONPATH:+:$PYTHONPATH}
fi
step tests 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_engine.py \
    tests/test_baselines_s2meta.py -k "cuda or same_seed"
step mamo_speed 120 "$PY" benchmarks/bench_mamo_speed.py --device "$DEVICE" "${data_args[@]}" \
    --loop-users "$MAMO_LOOP_USERS" --out "$OUT/mamo_speed_$DEVICE.json"
s2meta_eval_args=()
[ -n "$EVAL_USERS" ] && s2meta_eval_args=(--eval-users "$EVAL_USERS")
step s2meta_speed "$S2META_LIMIT" "$PY" benchmarks/bench_s2meta_speed.py --device "$DEVICE" "${data_args[@]}" \
    --max-users "$S2META_USERS" --reference-every 8 --reference-eval-users 32 "${s2meta_eval_args[@]}" \
    --out "$OUT/s2meta_speed_$DEVICE.json"
# s2Meta last: the record is rewritten after every method, so a time-out loses only what it cut
methods=mamo,melu,metacs-dnn,rum-item,rum-feature,global-mean,baseline-predictor,profile-mlp,profile-mlp-finetune,s2meta
step methods_speed 150 "$PY" benchmarks/bench_methods_speed.py --device "$DEVICE" "${data_args[@]}" --methods "$methods" \
    --train-users "$TRAIN_USERS" "${eval_args[@]}" --out "$OUT/methods_speed_$DEVICE.json"
echo "gpu checks: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEP FAILED) (logs and JSON in $OUT)"
exit $status
