#!/usr/bin/env bash
# The GPU check of issue 18 as one command on a fresh machine with one NVIDIA GPU, from the repository root:
#
#     bash benchmarks/gpu_check.sh [options of benchmarks/gpu_check.py, e.g. --quick or --steps sim,cuda_tests]
#
# 1. Installs qtd as the README says: a fresh venv, then `pip install -e ".[test]"`. Where that cannot work
#    (no package index reachable, as on a GPU machine without network, or an index whose torch is a +cpu build
#    or sees no GPU), it makes the venv on top of the machine's own packages (its CUDA torch and Triton) and runs
#    `pip install --no-index --no-build-isolation -e ".[test]"` there instead. The JSON records which.
# 2. Runs benchmarks/gpu_check.py with what is left of the time limit. It writes
#    benchmarks/results/gpu_check.json after every step and prints a table at the end.
#
# Environment: PYTHON (python3), GPU_CHECK_VENV (.venv-gpu-check), GPU_CHECK_INSTALL (auto | readme |
# offline | none: run with $PYTHON as it is), GPU_CHECK_TOTAL_S (540: the whole run, install included),
# GPU_CHECK_README_INSTALL_S (240: how long the README's install may take), GPU_CHECK_STEPS_S (400: at most
# this much for the steps). Where OUT is set (a folder that is collected after the run), the log and the
# result files are copied into it as they change, so a run stopped at a time limit still leaves them there.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

STARTED=$(date +%s)
PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-.venv-gpu-check}
INSTALL=${GPU_CHECK_INSTALL:-auto}
TOTAL_S=${GPU_CHECK_TOTAL_S:-540}
README_S=${GPU_CHECK_README_INSTALL_S:-240}
STEPS_S=${GPU_CHECK_STEPS_S:-400}
DRY=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DRY=1; done

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    exec > >(tee -a "$OUT/gpu_check.log") 2>&1
    PIP_LOG="$OUT/gpu_check_install.log"
else
    PIP_LOG="$(mktemp -t qtd-gpu-check-install.XXXXXX)"
fi

log() { echo "[gpu_check.sh $(date +%H:%M:%S) +$(( $(date +%s) - STARTED ))s] $*"; }
die() { log "error: $*"; exit 2; }

case "$INSTALL" in auto|readme|offline|none) ;; *) die "GPU_CHECK_INSTALL=$INSTALL: use auto, readme, offline or none";; esac
for name in TOTAL_S README_S STEPS_S; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "GPU_CHECK_$name=${!name}: use a whole number of seconds"
done
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON is not a command: set PYTHON to a Python 3.10+ interpreter"

log "repository $(pwd) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'); python $("$PYTHON" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/    nvidia-smi: /'

# succeeds when interpreter $1 can run the check: it imports qtd, torch and triton, and sees CUDA (unless --dry-run)
usable() {
    "$1" - "$DRY" <<'EOF' >>"$PIP_LOG" 2>&1
import sys
import qtd, torch, triton
print("usable?", torch.__version__, "cuda", torch.cuda.is_available(), "triton", triton.__version__)
sys.exit(0 if torch.cuda.is_available() or sys.argv[1] == "1" else 1)
EOF
}

new_venv() {  # new_venv [--without-pip]
    rm -rf "$VENV"
    "$PYTHON" -m venv "$@" "$VENV" >>"$PIP_LOG" 2>&1
}

readme_install() {  # the README's commands, bounded in time and with short network timeouts
    new_venv && [ -x "$VENV/bin/pip" ] || return 1
    if [ "$DRY" = 0 ]; then  # first ask pip which torch it would take: a +cpu build cannot use the GPU
        local report="$VENV/gpu_check_resolve.json" torch_version
        timeout 120 "$VENV/bin/python" -m pip install --dry-run --ignore-installed --quiet --timeout 10 \
            --retries 1 --report "$report" -e ".[test]" >>"$PIP_LOG" 2>&1 || return 1
        torch_version=$("$VENV/bin/python" -c 'import json, sys
print(next((i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]
            if i["metadata"]["name"].lower() == "torch"), "none"))' "$report") || return 1
        case "$torch_version" in
            *+cpu*) echo "the README's install would take torch $torch_version, a build without CUDA" >>"$PIP_LOG"
                    return 1 ;;
        esac
    fi
    timeout "$README_S" "$VENV/bin/python" -m pip install --timeout 10 --retries 1 -e ".[test]" >>"$PIP_LOG" 2>&1
}

offline_install() {  # the same venv, seeing the machine's packages through a .pth file; nothing downloaded
    new_venv --without-pip || return 1  # its own pip and setuptools would shadow the machine's
    local purelib
    purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    # "import" lines of a .pth file run at start-up: addsitedir also runs the machine's own .pth files
    "$PYTHON" -c 'import site; print("\n".join(f"import site; site.addsitedir({p!r})"
                  for p in site.getsitepackages() + [site.getusersitepackages()]))' \
        > "$purelib/_gpu_check_machine_packages.pth" || return 1
    "$VENV/bin/python" -m pip install --no-index --no-build-isolation -e ".[test]" >>"$PIP_LOG" 2>&1 && return 0
    log "the machine lacks some of qtd's requirements (see the install log); installing qtd without them"
    "$VENV/bin/python" -m pip install --no-index --no-build-isolation --no-deps -e . >>"$PIP_LOG" 2>&1 || return 1
    NOTE="$NOTE; requirements NOT all present"
}

NOTE=""
WHY="GPU_CHECK_INSTALL=offline"
RUN_PYTHON="$VENV/bin/python"
case "$INSTALL" in
    none)
        RUN_PYTHON="$PYTHON"; NOTE="none: $PYTHON as it was" ;;
    readme|auto)
        log "install: fresh venv $VENV, pip install -e \".[test]\" (as the README says; at most ${README_S} s)"
        if readme_install && usable "$RUN_PYTHON"; then
            NOTE="readme: fresh venv, pip install -e .[test]"
        elif [ "$INSTALL" = readme ]; then
            tail -n 15 "$PIP_LOG"; die "the README's install failed or its torch sees no GPU (log: $PIP_LOG)"
        else
            log "install: the README's install failed or its torch sees no GPU: $(grep -v '^\s*$' "$PIP_LOG" | tail -n 1 | cut -c1-200)"
            INSTALL=offline; WHY="the README's install failed or its torch saw no GPU" 
        fi ;;
esac
if [ "$INSTALL" = offline ]; then
    log "install: fresh venv $VENV over $PYTHON's packages, pip install --no-index --no-build-isolation -e \".[test]\""
    offline_install || { tail -n 15 "$PIP_LOG"; die "installing qtd failed (log: $PIP_LOG)"; }
    NOTE="offline ($WHY): fresh venv over $PYTHON's own packages, pip install --no-index --no-build-isolation -e .[test]${NOTE}"
fi
usable "$RUN_PYTHON" || { tail -n 5 "$PIP_LOG"; die "$RUN_PYTHON cannot import qtd, torch and triton, or sees no GPU (log: $PIP_LOG)"; }
log "install: done ($NOTE): $(tail -n 1 "$PIP_LOG")"

ELAPSED=$(( $(date +%s) - STARTED ))
BUDGET=$(( TOTAL_S - ELAPSED - 30 ))  # 30 s for writing the results and the table
[ "$BUDGET" -gt "$STEPS_S" ] && BUDGET=$STEPS_S
[ "$BUDGET" -lt 60 ] && BUDGET=60
log "checks: at most ${BUDGET} s"
PYTHONUNBUFFERED=1 "$RUN_PYTHON" benchmarks/gpu_check.py --budget-s "$BUDGET" --install-note "$NOTE ($(( $(date +%s) - STARTED )) s)" "$@"
CODE=$?
log "done: exit code $CODE ($([ $CODE -eq 0 ] && echo 'all passed' || echo 'NOT all passed'))"
exit $CODE
