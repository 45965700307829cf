"""Draw the top-k videos of text queries from a ``tools/test.py --dump`` pickle.

    python tools/visualize_retrieval.py result.pkl OUT [--video-root DIR]
        [--queries N | --query-ids I J ...] [--topk 5] [--seed 0] [--frames 4]
        [--allow-missing]

Writes ``OUT/query_{id}.png`` per query and ``OUT/overview.png``. The videos
are the dump's ``video_paths``; a missing or unreadable one is an error
naming it, and nothing is written.
"""
import argparse
import sys

from mmclip4clip.visualization import (
    load_dump,
    select_queries,
    visualize_retrieval,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Visualise retrieval results')
    parser.add_argument('dump', help='pickle written by tools/test.py --dump')
    parser.add_argument('out_dir', help='folder for the PNG files')
    parser.add_argument(
        '--video-root',
        help='folder the relative video_paths of the dump are under, when '
        'not the current one (the folder tools/test.py ran in); for a dump '
        'without video_paths, the data prefix its video_ids are paths under')
    which = parser.add_mutually_exclusive_group()
    which.add_argument('--queries', type=int, default=8,
                       help='number of random text queries (default 8)')
    which.add_argument('--query-ids', type=int, nargs='+',
                       help='caption rows to draw')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random query choice')
    parser.add_argument('--frames', type=int, default=4,
                        help='frames per video strip')
    parser.add_argument(
        '--allow-missing', action='store_true',
        help='draw a missing or unreadable video as a grey placeholder, with '
        'a warning naming it, instead of stopping')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        dump = load_dump(args.dump)
        queries = select_queries(len(dump['captions']), args.queries,
                                 args.query_ids, args.seed)
        paths = visualize_retrieval(dump, args.out_dir, queries,
                                    args.video_root, args.topk, args.frames,
                                    args.allow_missing)
    except (OSError, ValueError, RuntimeError) as err:
        sys.exit(f'visualize_retrieval: {args.dump}: {err}')
    print(f'wrote {len(paths)} images to {args.out_dir}')


if __name__ == '__main__':
    main()
