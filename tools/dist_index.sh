#!/usr/bin/env bash
# Usage: tools/dist_index.sh CONFIG [CHECKPOINT] VIDEO_DIR INDEX GPUS [index_videos.py options]
# Each process encodes its share of the videos; rank 0 writes the index.
# Without CHECKPOINT the config's own weights are used (index_videos.py).
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR and PORT; VIDEO_DIR and
# INDEX must then be on a filesystem every machine sees at the same path.
# Without CUDA the processes use the gloo backend on the CPU.
POSITIONAL=()
while [ $# -gt 0 ] && [[ "$1" != -* ]]; do
    POSITIONAL+=("$1")
    shift
done
if [ ${#POSITIONAL[@]} -ne 4 ] && [ ${#POSITIONAL[@]} -ne 5 ]; then
    echo "usage: $0 CONFIG [CHECKPOINT] VIDEO_DIR INDEX GPUS [options]" \
         "(got ${#POSITIONAL[@]} arguments before the options)" >&2
    exit 2
fi
GPUS=${POSITIONAL[-1]}
if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: GPUS must be a positive number of processes, not '$GPUS'" >&2
    exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$(dirname "$0")/index_videos.py" "${POSITIONAL[@]:0:${#POSITIONAL[@]}-1}" \
    --launcher pytorch "$@"
