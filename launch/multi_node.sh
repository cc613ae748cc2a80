#!/usr/bin/env bash
# Several machines: run this once on every machine, with the same settings (torchrun --nnodes).
#
#   launch/multi_node.sh --nnodes M --rdzv-endpoint HOST:PORT [--rdzv-id ID] [--node-rank R]
#                        [--nproc-per-node P] [--max-restarts N] CONFIG [--set key=value ...]
#
# Settings (an argument wins over its environment variable):
#   --nnodes M                NNODES          machines taking part (required)
#   --rdzv-endpoint HOST:PORT RDZV_ENDPOINT   an address every machine reaches, usually the first machine's
#                                             (required); torchrun there serves the rendezvous store
#   --rdzv-id ID              RDZV_ID         the same on every machine of one run (default qtd)
#   --node-rank R             NODE_RANK       give it (0..M-1, rank 0 on HOST) for a static rendezvous;
#                                             leave it out for c10d rendezvous (ranks assigned on arrival)
#   --nproc-per-node P        NPROC_PER_NODE  processes per machine (default topology.nodes / M); one per GPU
#   --max-restarts N          MAX_RESTARTS    restarts of the whole group after a process dies (default 0;
#                                             c10d rendezvous only)
#   PYTHON     the interpreter that has qtd and torch installed (default python3)
#   DRY_RUN=1  print the torchrun command instead of running it
# M x P must equal topology.nodes (one process per graph node). run.out_dir must be a directory every
# machine shares (checkpoints are per node, and resuming needs every node's file).
set -euo pipefail

usage() {  # usage [problem]: the header above; exit 2 after a problem, 0 for --help
  if [[ -n "${1:-}" ]]; then echo "multi_node.sh: $1" >&2; fi
  awk 'NR > 1 && /^#/ && !/^#SBATCH/ { sub(/^# ?/, ""); print; next } NR > 1 && !/^#/ { exit }' "$0" >&2
  if [[ -n "${1:-}" ]]; then exit 2; fi
  exit 0
}

nnodes=${NNODES:-}
endpoint=${RDZV_ENDPOINT:-}
rdzv_id=${RDZV_ID:-qtd}
node_rank=${NODE_RANK:-}
nproc=${NPROC_PER_NODE:-}
max_restarts=${MAX_RESTARTS:-0}
python=${PYTHON:-python3}
config=""
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage ;;
    --nnodes|--rdzv-endpoint|--rdzv-id|--node-rank|--nproc-per-node|--max-restarts|--set)
      [[ $# -ge 2 ]] || usage "$1 needs a value"
      case "$1" in
        --nnodes) nnodes=$2 ;;
        --rdzv-endpoint) endpoint=$2 ;;
        --rdzv-id) rdzv_id=$2 ;;
        --node-rank) node_rank=$2 ;;
        --nproc-per-node) nproc=$2 ;;
        --max-restarts) max_restarts=$2 ;;
        --set) overrides+=(--set "$2") ;;
      esac
      shift 2 ;;
    -*) usage "unknown option $1" ;;
    *) [[ -z "$config" ]] || usage "one CONFIG only (got $config and $1)"; config=$1; shift ;;
  esac
done
[[ -n "$config" ]] || usage "give a CONFIG file, e.g. configs/quickstart.yaml"
[[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || usage "--nnodes (or NNODES) must be the number of machines, >= 1 (got '$nnodes')"
[[ "$endpoint" =~ ^.+:[0-9]+$ ]] || usage "--rdzv-endpoint (or RDZV_ENDPOINT) must be HOST:PORT (got '$endpoint')"
[[ -z "$node_rank" || "$node_rank" =~ ^[0-9]+$ && "$node_rank" -lt "$nnodes" ]] \
  || usage "--node-rank must be 0..$((nnodes - 1)) (got '$node_rank')"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || usage "--max-restarts must be a whole number >= 0 (got '$max_restarts')"
# A static rendezvous reuses one store across restarts (torch offers no opt-out), so restarts need c10d.
[[ -z "$node_rank" || "$max_restarts" == 0 ]] \
  || usage "--max-restarts needs the c10d rendezvous: leave out --node-rank (ranks are then assigned on arrival)"

# Check the config, graph, run directory and data once per machine, before any rendezvous.
nodes=$("$python" -m qtd.cli.check "$config" ${overrides[@]+"${overrides[@]}"})
if [[ -z "$nproc" ]]; then
  if (( nodes % nnodes != 0 )); then
    echo "multi_node.sh: error: topology.nodes=$nodes does not split evenly over $nnodes machines: give" \
         "--nproc-per-node P with $nnodes x P = topology.nodes, or change topology.nodes" >&2
    exit 2
  fi
  nproc=$((nodes / nnodes))
fi
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || usage "--nproc-per-node must be a whole number >= 1 (got '$nproc')"
if (( nnodes * nproc != nodes )); then
  echo "multi_node.sh: error: topology.nodes=$nodes but $nnodes machines x $nproc processes = $((nnodes * nproc))" \
       "processes: one process per graph node (set --set topology.nodes=$((nnodes * nproc)) or change" \
       "--nproc-per-node)" >&2
  exit 2
fi

if [[ -n "$node_rank" ]]; then  # static: machine ranks given, machine 0 serves the store at HOST:PORT
  rendezvous=(--node-rank "$node_rank" --master-addr "${endpoint%:*}" --master-port "${endpoint##*:}")
else                            # c10d: the torchrun on HOST serves the store, the others join it
  rendezvous=(--rdzv-backend c10d --rdzv-endpoint "$endpoint" --rdzv-id "$rdzv_id")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per CPU node process
# A restarted group must not share torchrun's rendezvous store with the group before it: stale keys in
# it make the new processes dial the dead ones (pytorch/pytorch#135712, #167288).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# torchrun (qtd.engine.torchrun: torchrun's own launcher and arguments; a failed run ends in one line)
command=("$python" -m qtd.engine.torchrun --nnodes "$nnodes" --nproc-per-node "$nproc" "${rendezvous[@]}"
         --max-restarts "$max_restarts" -m qtd.train --config "$config" ${overrides[@]+"${overrides[@]}"})
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
