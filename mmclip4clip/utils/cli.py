"""Small helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
from typing import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (argparse
    then names the option in its error, e.g. ``--topk -5``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f'must be an integer >= {minimum}, not {text!r}')
        return value
    return parse


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """The options tools/search.py and tools/search_server.py share: the
    model (defaults: the index's), the engine and the tight re-ranker.
    Check them with :func:`check_search_options` after parsing."""
    parser.add_argument('--config', help='default: the index\'s config')
    parser.add_argument('--checkpoint',
                        help='default: the index\'s checkpoint')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--engine', choices=('exact', 'faiss'),
                        default='exact',
                        help='faiss: approximate HNSW search (pip install -e '
                        '".[search]"), cached in the index folder')
    parser.add_argument('--ef-search', type=at_least(1),
                        help='with --engine faiss: candidates the graph '
                        'search keeps (default 128); higher finds more of '
                        'the exact top k, slower')
    parser.add_argument('--rerank-config',
                        help='a tightTransf config: re-rank the top '
                        '--rerank-topk loose hits with its pair logits')
    parser.add_argument('--rerank-checkpoint', help='its checkpoint')
    parser.add_argument('--rerank-topk', type=at_least(1), default=50,
                        help='size of the loose shortlist to re-rank')


def check_search_options(parser: argparse.ArgumentParser,
                         args: argparse.Namespace) -> None:
    """Refuse (argparse's exit 2) the combinations of
    :func:`add_search_options` that cannot work."""
    if (args.rerank_config is None) != (args.rerank_checkpoint is None):
        # A tight head without its weights would re-rank at random.
        parser.error('--rerank-config and --rerank-checkpoint go together')
    if args.ef_search is not None and args.engine != 'faiss':
        parser.error('--ef-search applies to --engine faiss only')
