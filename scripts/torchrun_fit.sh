#!/bin/bash
# Fine-tune on several GPU machines without SLURM: run this on every machine, each with its own NODE_RANK.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example.org scripts/torchrun_fit.sh configs/glue/mrpc.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0.example.org scripts/torchrun_fit.sh configs/glue/mrpc.yaml
#
# torchrun starts one process per GPU (NPROC_PER_NODE, default: all visible GPUs) and Lightning reads the
# ranks it sets (TorchElasticEnvironment). MASTER_ADDR is the NODE_RANK=0 machine, reachable from the others
# on MASTER_PORT (default 29500). Extra arguments go to `hftrain fit`. Run from the repository root.
set -euo pipefail
config=${1:?usage: scripts/torchrun_fit.sh CONFIG.yaml [hftrain flags]}
shift
nnodes=${NNODES:-1}
nproc=${NPROC_PER_NODE:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}

exec torchrun --nnodes "$nnodes" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m hftrain fit --config "$config" --config configs/trainer/ddp.yaml \
    --trainer.num_nodes "$nnodes" --trainer.devices "$nproc" "$@"
