"""Generate the built-in synthetic text-video retrieval dataset.

Usage (from the repository root)::

    python tools/data/make_synthetic_dataset.py --out data/synthetic

Does nothing if a complete dataset with the same parameters (and format
version) is already there. The same parameters give the same files, byte for
byte, on any machine with the same PyAV build.
"""
import argparse
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.synthetic import (  # noqa: E402
    ensure_synthetic_dataset,
    load_meta,
)


def format_summary(meta: dict) -> str:
    """Human-readable counts, one line per split plus the vocabulary."""
    lines = [
        f'{split}: {counts["videos"]} videos, {counts["captions"]} captions'
        for split, counts in meta['splits'].items()
    ]
    lines.append(f'tokenizer: {meta["vocabulary"]["tokens"]} tokens')
    return '\n'.join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate the synthetic coloured-shapes video dataset '
        '(videos, annotations, tokenizer).')
    parser.add_argument('--out', default='data/synthetic',
                        help='dataset folder (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train-per-combo', type=int, default=3,
                        help='train clips per (colour, shape, motion)')
    parser.add_argument('--test-per-combo', type=int, default=1,
                        help='test clips per (colour, shape, motion)')
    parser.add_argument('--captions-per-video', type=int, default=2)
    parser.add_argument('--size', type=int, default=64,
                        help='frame height and width in pixels (even)')
    parser.add_argument('--fps', type=int, default=10)
    parser.add_argument('--seconds', type=int, default=4,
                        help='clip length in seconds')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the dataset is complete')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out_dir = ensure_synthetic_dataset(
        args.out,
        seed=args.seed,
        train_per_combo=args.train_per_combo,
        test_per_combo=args.test_per_combo,
        captions_per_video=args.captions_per_video,
        size=args.size,
        fps=args.fps,
        seconds=args.seconds,
        force=args.force)
    print(f'Synthetic dataset in {out_dir}')
    print(format_summary(load_meta(out_dir)))


if __name__ == '__main__':
    main()
