"""Rank the videos of an index for a text query (exact search).

    python tools/search.py INDEX "a man is cooking pasta" [--topk 10]
        [--config CONFIG] [--checkpoint CKPT] [--device cpu] [--json]
        [--engine {exact,faiss}]
        [--rerank-config TIGHT_CONFIG --rerank-checkpoint CKPT --rerank-topk 50]

CONFIG and CHECKPOINT default to those the index was built with. With a
tightTransf model the loose top --rerank-topk hits are re-ordered by its
pair logits.
"""
import argparse
import json
import sys

from mmengine.config import Config

from mmclip4clip.apis import (
    init_retriever,
    load_index,
    rerank_with_tight,
    search_index,
)
from mmclip4clip.apis.index import model_fingerprint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Search a video index')
    parser.add_argument('index', help='index directory')
    parser.add_argument('query', help='text query')
    parser.add_argument('--config', help='default: the index\'s config')
    parser.add_argument('--checkpoint',
                        help='default: the index\'s checkpoint')
    parser.add_argument('--topk', type=int, default=10)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--engine', choices=('exact', 'faiss'),
                        default='exact',
                        help='faiss: approximate HNSW search (pip install -e '
                        '".[search]"), cached in the index folder')
    parser.add_argument('--rerank-config',
                        help='a tightTransf config: re-rank the top '
                        '--rerank-topk loose hits with its pair logits')
    parser.add_argument('--rerank-checkpoint', help='its checkpoint')
    parser.add_argument('--rerank-topk', type=int, default=50,
                        help='size of the loose shortlist to re-rank')
    parser.add_argument('--json', action='store_true',
                        help='print a JSON list of {path, score}')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    index = load_index(args.index)
    config = args.config or index.meta['config']
    checkpoint = args.checkpoint or index.meta['checkpoint']
    cfg = Config.fromfile(config)
    if model_fingerprint(cfg, checkpoint) != index.meta['fingerprint']:
        print(f'error: {args.index} was built with another model, checkpoint '
              'or video pipeline', file=sys.stderr)
        return 1
    model = init_retriever(cfg, checkpoint, device=args.device)
    if args.rerank_config is None:
        hits = search_index(model, cfg, index, args.query, args.topk,
                            args.engine, args.index)
    else:
        shortlist = search_index(model, cfg, index, args.query,
                                 max(args.rerank_topk, args.topk),
                                 args.engine, args.index)
        tight_cfg = Config.fromfile(args.rerank_config)
        tight = init_retriever(tight_cfg, args.rerank_checkpoint,
                               device=args.device)
        hits = rerank_with_tight(shortlist, tight, tight_cfg,
                                 index.meta['video_dir'],
                                 args.query)[:args.topk]
    if args.json:
        print(json.dumps(hits))
    else:
        for rank, hit in enumerate(hits, 1):
            tight = (f'  tight {hit["tight_score"]:.4f}'
                     if 'tight_score' in hit else '')
            print(f'{rank:3d}  {hit["score"]:.4f}{tight}  {hit["path"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
