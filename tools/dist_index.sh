#!/usr/bin/env bash
# Usage: tools/dist_index.sh CONFIG CHECKPOINT VIDEO_DIR INDEX GPUS [index_videos.py args]
# Each process encodes its share of the videos; rank 0 writes the index.
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR and PORT; VIDEO_DIR and
# INDEX must then be on a filesystem every machine sees at the same path.
# Without CUDA the processes use the gloo backend on the CPU.
GPUS=$5
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$(dirname "$0")/index_videos.py" "$1" "$2" "$3" "$4" --launcher pytorch "${@:6}"
