#!/usr/bin/env bash
# fusedopt on a CUDA machine: install, GPU test suites, memory checks and benchmarks, in stages
# sized for a time-limited session (each invocation stays under GPU_CHECK_SECONDS, default 570).
#
# Usage: benchmarks/gpu_check.sh STAGE[,STAGE...] [OUT_DIR] [extra fusedopt-bench arguments]
#
#   install       OUT_DIR/env.txt (GPU, driver, torch, Triton, CUDA, nvcc); install fusedopt from
#                 dist/fusedopt-*.whl if there is one (unchanged, --no-deps), else build it here
#                 with the CUDA extension; fail unless the cuda backend is available.
#   tests         tests-cuda, then tests-triton
#   tests-cuda    pytest tests/test_cuda_backend.py tests/test_lowbit_kernels.py tests/test_features.py
#                 tests/test_step_sequences.py -> pytest-cuda.log
#   tests-triton  pytest tests/test_triton_backend.py tests/test_triton_lowbit.py tests/test_lowbit_calls.py,
#                 compiled Triton kernels (test_lowbit_calls.py: cpu, triton and cuda) -> pytest-triton.log
#   memcheck      benchmarks/memcheck_step.py under compute-sanitizer memcheck -> memcheck.log,
#                 and with --sync-debug (no sanitizer) -> memcheck-sync-debug.log
#   bench         fusedopt-bench --device cuda, default set, mode fp32     -> <gpu>-<date>-fp32.*
#   bench2        the same, mode bf16                                      -> <gpu>-<date>-bf16.*
#                 then bf16-master if at least 150 s are left              -> <gpu>-<date>-bf16-master.*
#   bench3        the same, mode bf16-master alone
#   all           install,tests,memcheck (not the benchmarks)
#
# Every step runs under `timeout`; a failing step does not stop the others. Each step's exit
# status is printed in a table at the end and appended to OUT_DIR/status.tsv (124: timed out or
# not run for lack of time). Full logs are in OUT_DIR; the console gets summaries only.
set -uo pipefail

usage() { sed -n '4,24p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -lt 1 ]]; then usage; exit 2; fi
if [[ $1 == -h || $1 == --help ]]; then usage; exit 0; fi
STAGES=$1
OUT=${2:-gpu-out}
shift $(( $# >= 2 ? 2 : 1 ))
EXTRA_BENCH=("$@")
IFS=, read -r -a REQUESTED <<<"$STAGES"
for stage in "${REQUESTED[@]}"; do
    case $stage in
        install|tests|tests-cuda|tests-triton|memcheck|bench|bench2|bench3|all) ;;
        *) echo "gpu_check: unknown stage '$stage'"; usage; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
BUDGET=${GPU_CHECK_SECONDS:-570}
START=$(date +%s)
DEADLINE=$(( START + BUDGET ))
PY=${PYTHON:-python}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# The checks are of the installed package and of the test suites' own Triton mode choices.
unset PYTHONPATH TRITON_INTERPRET

# Every Python command must import the *installed* fusedopt. `python -m X` and `python -c` put
# the current directory first on sys.path, and from the repository root that is ./fusedopt:
# the source tree, whose compiled extensions are not built in place, so the cpu and cuda
# backends would silently be missing and their tests skip. So every step runs from / with
# absolute paths (which also covers subprocesses the tests start with sys.executable), and with
# -P where the Python has it (3.11+: no current directory or script directory prepended).
# pytest then finds its configuration and rootdir from the absolute test paths (pyproject.toml)
# and puts only tests/ on sys.path (for conftest.py and parity.py).
if "$PY" -P -c '' 2>/dev/null; then PYI=("$PY" -P); else PYI=("$PY"); fi

R_NAME=(); R_RC=(); R_SEC=(); R_NOTE=()

record() {  # record NAME RC SECONDS NOTE
    R_NAME+=("$1"); R_RC+=("$2"); R_SEC+=("$3"); R_NOTE+=("${4:-}")
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$1" "$2" "$3" "${4:-}" >> "$OUT/status.tsv"
}

print_table() {
    echo
    echo "== gpu_check $STAGES: exit status per step ($(( $(date +%s) - START )) s; logs and status.tsv in $OUT)"
    local i
    for i in "${!R_NAME[@]}"; do
        printf '  %-22s %4s %5ss  %s\n' "${R_NAME[$i]}" "${R_RC[$i]}" "${R_SEC[$i]}" "${R_NOTE[$i]:0:150}"
    done
    [[ ${#R_NAME[@]} -gt 0 ]] || echo "  (no step ran)"
}
trap print_table EXIT

# run_step NAME CAP LOG CMD...: CMD (an executable, not a function) from /, output in OUT/LOG,
# under `timeout` of CAP seconds or what is left of this invocation's budget, whichever is less;
# not run if that is under MIN_SECONDS (default 30). SIGINT first, so that pytest still writes its
# summary. Sets STEP_RC; finish_step records it.
run_step() {
    local name=$1 cap=$2 log=$3; shift 3
    local left=$(( DEADLINE - $(date +%s) - 5 ))
    local t=$(( cap < left ? cap : left ))
    STEP_RAN=0 STEP_SEC=0 STEP_NOTE="not run: out of time (GPU_CHECK_SECONDS=$BUDGET); run this stage again"
    if (( t < ${MIN_SECONDS:-30} )); then STEP_RC=124; return 124; fi
    STEP_RAN=1
    echo "--- $name: timeout ${t}s, log $OUT/$log"
    local t0; t0=$(date +%s)
    (cd / && timeout -s INT -k 30 "$t" "$@") > "$OUT/$log" 2>&1
    STEP_RC=$?
    STEP_SEC=$(( $(date +%s) - t0 ))
    STEP_NOTE=""
    if [[ $STEP_RC -eq 124 || $STEP_RC -eq 137 ]]; then STEP_NOTE="timed out after ${t}s; "; fi
    return "$STEP_RC"
}

finish_step() {  # finish_step NAME NOTE: record the last run_step; fails if it did not run
    if [[ $STEP_RAN -eq 1 ]]; then record "$1" "$STEP_RC" "$STEP_SEC" "$STEP_NOTE$2"; return 0; fi
    record "$1" "$STEP_RC" 0 "$STEP_NOTE"
    return 1
}

have_cuda() {
    (cd / && "${PYI[@]}" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)') >/dev/null 2>&1
}

installed_with_cuda() {
    (cd / && "${PYI[@]}" -c 'import sys, fusedopt
sys.exit(0 if "cuda" in fusedopt.available_backends("cuda") else 1)') >/dev/null 2>&1
}

# A stage that needs the GPU: a CUDA device, and fusedopt installed with its cuda backend (a
# fresh machine is installed first, so that any stage can run on its own).
GPU_READY=0 INSTALL_TRIED=0
need_gpu() {
    [[ $GPU_READY -eq 1 ]] && return 0
    if ! have_cuda; then
        record "$1" 1 0 "not run: no CUDA device (torch.cuda.is_available() is False)"
        return 1
    fi
    if [[ $INSTALL_TRIED -eq 0 ]] && ! installed_with_cuda; then
        echo "--- fusedopt with the cuda backend is not installed here: running the install stage first"
        stage_install
    fi
    installed_with_cuda && GPU_READY=1
    return 0
}

# -- install ------------------------------------------------------------------------------------
stage_install() {
    INSTALL_TRIED=1
    local t0; t0=$(date +%s)
    {
        echo "== date: $(date -u '+%F %T UTC')"
        echo "== commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
        git -C "$REPO" status --short 2>/dev/null | head -20
        echo "== nvidia-smi"; nvidia-smi 2>&1
        echo "== python"
        (cd / && "${PYI[@]}" - <<'PYEOF'
import platform, sys
print("python", sys.version.split()[0], "on", platform.platform())
import torch
print("torch", torch.__version__, "built for CUDA", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", type(e).__name__, e)
for mod in ("matplotlib", "tqdm", "pytest"):
    try:
        print(mod, __import__(mod).__version__)
    except Exception as e:
        print(mod, "not importable:", type(e).__name__)
print("cuda available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"device {i}: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
          f"{p.multi_processor_count} SMs")
PYEOF
        ) 2>&1
        echo "== nvcc"; nvcc --version 2>&1 | tail -n 2
        echo "== compute-sanitizer"; compute-sanitizer --version 2>&1 | head -n 3
        echo "== cpu: $(nproc) cores"
    } > "$OUT/env.txt" 2>&1
    record install/env 0 $(( $(date +%s) - t0 )) "$(grep -E '^(torch|triton|device 0)' "$OUT/env.txt" | tr '\n' ';' | cut -c1-150)"

    local wheel
    wheel=$(ls -t "$REPO"/dist/fusedopt-*.whl 2>/dev/null | head -n 1)
    if [[ -n $wheel ]]; then
        # The wheel built elsewhere must install and work here unchanged.
        (cd / && "$PY" -c 'import sys, zipfile; print("wheel", sys.argv[1], "libraries:",
            [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if ".so" in n])' "$wheel") >> "$OUT/env.txt" 2>&1
        run_step install/pip 300 install.log "$PY" -m pip install --no-index --no-deps --force-reinstall "$wheel"
        finish_step install/pip "wheel $(basename "$wheel")"
    else
        run_step install/pip 540 install.log env FUSEDOPT_BUILD_CUDA=1 MAX_JOBS="$(nproc)" \
            "$PY" -m pip install --no-index --no-build-isolation --no-deps -v "$REPO"
        finish_step install/pip "built here from source (no dist/fusedopt-*.whl)"
    fi
    [[ $STEP_RAN -eq 1 && $STEP_RC -ne 0 ]] && tail -n 25 "$OUT/install.log"

    # The installed Python files must be this tree's (a stale wheel would test other code).
    run_step install/check 120 install-check.log "${PYI[@]}" -c '
import filecmp, pathlib, sys, fusedopt
from fusedopt import _ext
print("fusedopt", fusedopt.__version__, "from", fusedopt.__file__)
print("cpu_status", _ext.cpu_status())
print("cuda_status", _ext.cuda_status())
b = fusedopt.available_backends("cuda")
print("backends on cuda:", ", ".join(b))
src, inst = pathlib.Path(sys.argv[1]) / "fusedopt", pathlib.Path(fusedopt.__file__).parent
differ = [str(f.relative_to(src)) for f in sorted(src.rglob("*.py"))
          if not (inst / f.relative_to(src)).is_file() or not filecmp.cmp(f, inst / f.relative_to(src), shallow=False)]
if differ:
    print(f"installed Python files differ from the source tree ({len(differ)}):", ", ".join(differ[:8]))
sys.exit(0 if "cuda" in b and not differ else 1)' "$REPO"
    finish_step install/check "$(grep -E '^(backends on cuda|installed Python files differ)' "$OUT/install-check.log" 2>/dev/null | tr '\n' ';')" &&
        sed 's/^/    /' "$OUT/install-check.log"
}

# -- tests --------------------------------------------------------------------------------------
pytest_step() {  # pytest_step NAME CAP LOG ENV... -- TESTFILES...
    local name=$1 cap=$2 log=$3; shift 3
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
    local files=(); local f
    for f in "$@"; do files+=("$REPO/tests/$f"); done
    # faulthandler_timeout: a test running over 120 s dumps its stack into the log (a hang).
    run_step "$name" "$cap" "$log" env "${envs[@]}" "${PYI[@]}" -m pytest -q -p no:cacheprovider -rfEs \
        -o faulthandler_timeout=120 --durations=10 "${files[@]}"
    finish_step "$name" "$(grep -v '^\s*$' "$OUT/$log" 2>/dev/null | tail -n 1)" || return
    grep -E '^(FAILED|ERROR) ' "$OUT/$log" | head -n 15 | cut -c1-300
}

check_imports_installed() {
    local where
    where=$(cd / && "${PYI[@]}" -c 'import fusedopt, os; print(os.path.dirname(fusedopt.__file__))' 2>&1)
    if [[ $where == "$REPO/fusedopt" ]]; then
        record tests/import 1 0 "pytest would import the source tree $where, not the installed package"
        return 1
    fi
    echo "--- tests import fusedopt from $where"
}

stage_tests_cuda() {
    need_gpu tests/cuda || return
    check_imports_installed || return
    # conftest.py sets TRITON_INTERPRET=1 (by setdefault) for these modules.
    pytest_step tests/cuda 300 pytest-cuda.log -- test_cuda_backend.py test_lowbit_kernels.py test_features.py \
        test_step_sequences.py
}

stage_tests_triton() {
    need_gpu tests/triton || return
    check_imports_installed || return
    # The compiled kernels on the GPU: TRITON_INTERPRET=0 overrides conftest.py's setdefault.
    # test_lowbit_calls.py runs here, not in tests-cuda: its triton cases compiled, its cuda ones too.
    pytest_step tests/triton 540 pytest-triton.log TRITON_INTERPRET=0 -- test_triton_backend.py test_triton_lowbit.py \
        test_lowbit_calls.py
}

# -- memcheck -----------------------------------------------------------------------------------
stage_memcheck() {
    need_gpu memcheck || return
    local script="$REPO/benchmarks/memcheck_step.py" sanitizer
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
    if [[ -z $sanitizer ]]; then
        record memcheck/sanitizer 127 0 "compute-sanitizer not found"
    else
        # No caching allocator and a padding after every allocation: every tensor is its own
        # allocation, so an access past a tensor's end is reported instead of landing inside a
        # pooled block or the next tensor.
        local opts=(--tool memcheck --error-exitcode 1) extra=(--padding 4096 --print-limit 20)
        run_step memcheck/sanitizer 300 memcheck.log env TRITON_INTERPRET=0 PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
            "$sanitizer" "${opts[@]}" "${extra[@]}" "${PYI[@]}" "$script"
        if [[ $STEP_RAN -eq 1 && $STEP_RC -ne 0 ]] && ! grep -q '^memcheck_step:' "$OUT/memcheck.log" &&
                grep -qi 'option' "$OUT/memcheck.log"; then  # an older sanitizer without these options
            echo "--- compute-sanitizer refused ${extra[*]}: again without them"
            run_step memcheck/sanitizer 300 memcheck.log env TRITON_INTERPRET=0 PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
                "$sanitizer" "${opts[@]}" "${PYI[@]}" "$script"
        fi
        finish_step memcheck/sanitizer "$(grep -E '^memcheck_step: ([0-9]|no CUDA)' "$OUT/memcheck.log" 2>/dev/null | tail -n 1); $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" 2>/dev/null | tail -n 1 | sed 's/^=* *//')" &&
            grep -E '^(FAILED|=+ (Invalid|Program hit|Out-of-range|Misaligned))' "$OUT/memcheck.log" | head -n 10 | cut -c1-300
    fi
    run_step memcheck/sync-debug 180 memcheck-sync-debug.log env TRITON_INTERPRET=0 "${PYI[@]}" "$script" --sync-debug
    finish_step memcheck/sync-debug "$(grep -v '^\s*$' "$OUT/memcheck-sync-debug.log" 2>/dev/null | tail -n 1)" || return
    grep -E '^FAILED' "$OUT/memcheck-sync-debug.log" | head -n 10 | cut -c1-300
}

# -- benchmarks ---------------------------------------------------------------------------------
gpu_slug() {  # "NVIDIA H100 80GB HBM3" -> h100
    local name
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    name=$(sed -E 's/^NVIDIA //; s/[ -].*//' <<<"$name" | tr '[:upper:]' '[:lower:]')
    echo "${name:-cuda}"
}

bench_step() {  # bench_step NAME MODE MIN_SECONDS
    need_gpu "$1" || return
    local stem args=()
    stem="$(gpu_slug)-$(date -u +%F)-$2"
    args=(--device cuda --modes "$2" --out "$OUT" --name "$stem" --no-progress)
    (cd / && "${PYI[@]}" -c 'import matplotlib') >/dev/null 2>&1 || args+=(--no-png)
    # The default CUDA set (gpt2-1b, 1000x64K, 10000x1K), all algorithms, one mode per run. The
    # bench writes its files only when it finishes, so a run cut by the timeout leaves nothing:
    # one run per mode keeps each well inside a command, and one is not started without
    # MIN_SECONDS left.
    MIN_SECONDS=$3 run_step "$1" 560 "$stem.log" "${PYI[@]}" -m fusedopt.bench "${args[@]}" "${EXTRA_BENCH[@]}"
    finish_step "$1" "$(grep -E '^wrote ' "$OUT/$stem.log" 2>/dev/null | tail -n 1)" || return
    grep -E '^(fusedopt-bench on|copy bandwidth|[0-9]+ rows not run)' "$OUT/$stem.log"
    [[ -f $OUT/$stem.csv ]] && (cd / && "$PY" -c '
import csv, sys
bad = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "error"]
print(f"{len(bad)} rows failed" + (":" if bad else ""))
for r in bad[:15]:
    print("  ", r["workload"], r["mode"], r["algorithm"], r["implementation"], r["note"][:160])' "$OUT/$stem.csv")
    [[ $STEP_RC -eq 0 ]] || tail -n 15 "$OUT/$stem.log"
}

# -- main ---------------------------------------------------------------------------------------
echo "gpu_check: stages $STAGES, output $OUT, budget ${BUDGET}s, repository $REPO"
for stage in "${REQUESTED[@]}"; do
    case $stage in
        all) STEPS=(install tests-cuda tests-triton memcheck) ;;
        tests) STEPS=(tests-cuda tests-triton) ;;
        *) STEPS=("$stage") ;;
    esac
    for s in "${STEPS[@]}"; do
        case $s in
            install) stage_install ;;
            tests-cuda) stage_tests_cuda ;;
            tests-triton) stage_tests_triton ;;
            memcheck) stage_memcheck ;;
            bench) bench_step bench fp32 300 ;;
            bench2) bench_step bench2 bf16 300; bench_step bench3 bf16-master 150 ;;
            bench3) bench_step bench3 bf16-master 150 ;;
        esac
    done
done

worst=0
for rc in "${R_RC[@]}"; do (( rc != 0 )) && worst=1; done
exit "$worst"
