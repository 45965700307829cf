"""Rank the videos of an index for a text query (exact search).

    python tools/search.py INDEX "a man is cooking pasta" [--topk 10]
        [--config CONFIG] [--checkpoint CKPT] [--device cpu] [--json]
        [--engine {exact,faiss} [--ef-search 128]]
        [--rerank-config TIGHT_CONFIG --rerank-checkpoint CKPT --rerank-topk 50]

CONFIG and CHECKPOINT default to those the index was built with. With a
tightTransf model the loose top --rerank-topk hits are re-ordered by its
pair logits. Only the results go to stdout (with --json, one JSON
document); logs, warnings and errors go to stderr, and a malformed index,
query or option ends with a one-line error and exit status 1 (2 for an
option argparse refuses).
"""
import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator

from mmengine.config import Config
from mmengine.logging import MMLogger

from mmclip4clip.apis import (
    init_retriever,
    load_index,
    rerank_with_tight,
    search_index,
)
from mmclip4clip.apis.index import model_fingerprint
from mmclip4clip.utils.cli import (
    add_search_options,
    at_least,
    check_search_options,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Search a video index')
    parser.add_argument('index', help='index directory')
    parser.add_argument('query', help='text query')
    parser.add_argument('--topk', type=at_least(1), default=10)
    add_search_options(parser)
    parser.add_argument('--json', action='store_true',
                        help='print a JSON list of {path, score}')
    args = parser.parse_args()
    check_search_options(parser, args)
    return args


@contextlib.contextmanager
def logs_to_stderr() -> Iterator[None]:
    """Send what the libraries print while loading and searching to stderr,
    so that stdout carries only the results.

    mmengine's logger writes to stdout (e.g. load_checkpoint's 'Loads
    checkpoint by ... backend'); its stream handlers are pointed at stderr
    for the rest of the run, and plain print() calls inside the block go to
    stderr too (a logger created inside the block binds to it as well).
    """
    for handler in MMLogger.get_current_instance().handlers:
        if (isinstance(handler, logging.StreamHandler)
                and handler.stream is sys.stdout):
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        yield


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f'warning: {message}\n'


def search(args: argparse.Namespace) -> list[dict]:
    """The ranked hits for ``args``; raises ValueError / OSError on a
    malformed index, query, config or checkpoint."""
    index = load_index(args.index)
    config = args.config or index.meta['config']
    checkpoint = args.checkpoint or index.meta['checkpoint']
    cfg = Config.fromfile(config)
    if model_fingerprint(cfg, checkpoint) != index.meta['fingerprint']:
        raise ValueError(f'{args.index} was built with another model, '
                         'checkpoint or video pipeline')
    model = init_retriever(cfg, checkpoint, device=args.device)
    if args.rerank_config is None:
        return search_index(model, cfg, index, args.query, args.topk,
                            args.engine, args.index, args.ef_search)
    shortlist = search_index(model, cfg, index, args.query,
                             max(args.rerank_topk, args.topk), args.engine,
                             args.index, args.ef_search)
    tight_cfg = Config.fromfile(args.rerank_config)
    tight = init_retriever(tight_cfg, args.rerank_checkpoint,
                           device=args.device)
    return rerank_with_tight(shortlist, tight, tight_cfg,
                             index.meta['video_dir'], args.query)[:args.topk]


def format_hits(hits: list[dict], as_json: bool) -> str:
    if as_json:
        # allow_nan=False: a NaN would make the output invalid JSON.
        return json.dumps(hits, allow_nan=False)
    lines = []
    for rank, hit in enumerate(hits, 1):
        tight = ''
        if 'tight_score' in hit:
            tight = ('  tight unreadable' if hit['tight_score'] is None else
                     f'  tight {hit["tight_score"]:.4f}')
        lines.append(f'{rank:3d}  {hit["score"]:.4f}{tight}  {hit["path"]}')
    return '\n'.join(lines)


def main() -> int:
    args = parse_args()
    warnings.formatwarning = one_line_warning
    try:
        with logs_to_stderr():
            output = format_hits(search(args), args.json)
    except (ValueError, OSError, ImportError) as err:
        print('error: ' + ' '.join(str(err).splitlines()), file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


if __name__ == '__main__':
    sys.exit(main())
