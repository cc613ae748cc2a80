#!/usr/bin/env bash
# One machine, one process per graph node (torchrun --standalone). The same run as `qtd launch`.
#
#   launch/single_box.sh [--nproc-per-node N] [--max-restarts N] CONFIG [--set key=value ...]
#
# Settings (an argument wins over its environment variable):
#   --nproc-per-node N   NPROC_PER_NODE   processes to start (default: topology.nodes of the config)
#   --max-restarts N     MAX_RESTARTS     torchrun restarts after a node process dies (default 0); the
#                                         restarted run resumes from the newest complete checkpoint
#   PYTHON     the interpreter that has qtd and torch installed (default python3)
#   DRY_RUN=1  print the torchrun command instead of running it
set -euo pipefail

usage() {  # usage [problem]: the header above; exit 2 after a problem, 0 for --help
  if [[ -n "${1:-}" ]]; then echo "single_box.sh: $1" >&2; fi
  awk 'NR > 1 && /^#/ && !/^#SBATCH/ { sub(/^# ?/, ""); print; next } NR > 1 && !/^#/ { exit }' "$0" >&2
  if [[ -n "${1:-}" ]]; then exit 2; fi
  exit 0
}

nproc=${NPROC_PER_NODE:-}
max_restarts=${MAX_RESTARTS:-0}
python=${PYTHON:-python3}
config=""
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage ;;
    --nproc-per-node) [[ $# -ge 2 ]] || usage "$1 needs a value"; nproc=$2; shift 2 ;;
    --max-restarts) [[ $# -ge 2 ]] || usage "$1 needs a value"; max_restarts=$2; shift 2 ;;
    --set) [[ $# -ge 2 ]] || usage "--set needs KEY=VALUE"; overrides+=(--set "$2"); shift 2 ;;
    -*) usage "unknown option $1" ;;
    *) [[ -z "$config" ]] || usage "one CONFIG only (got $config and $1)"; config=$1; shift ;;
  esac
done
[[ -n "$config" ]] || usage "give a CONFIG file, e.g. configs/quickstart.yaml"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || usage "--max-restarts must be a whole number >= 0 (got '$max_restarts')"

# Check the config, graph, run directory and data once, here, instead of failing in every node process.
nodes=$("$python" -m qtd.cli.check "$config" ${overrides[@]+"${overrides[@]}"})
nproc=${nproc:-$nodes}
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || usage "--nproc-per-node must be a whole number >= 1 (got '$nproc')"
if [[ "$nproc" -ne "$nodes" ]]; then
  echo "single_box.sh: error: topology.nodes=$nodes but $nproc processes were asked for: one process per" \
       "graph node (drop --nproc-per-node or add --set topology.nodes=$nproc)" >&2
  exit 2
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per node process
# A restarted group must not share torchrun's rendezvous store with the group before it: stale keys in
# it make the new processes dial the dead ones (pytorch/pytorch#135712, #167288).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# torchrun (qtd.engine.torchrun: torchrun's own launcher and arguments; a failed run ends in one line)
command=("$python" -m qtd.engine.torchrun --standalone --nproc-per-node "$nproc"
         --max-restarts "$max_restarts" -m qtd.train --config "$config" ${overrides[@]+"${overrides[@]}"})
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
