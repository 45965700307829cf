"""Write ActivityNet Captions' paragraph annotation files: train, val_1.

Usage (from the repository root)::

    python tools/data/prepare_activitynet.py --root data/activitynet/captions \
        --out data/activitynet/annotations \
        --video-dir data/activitynet/videos

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import argparse
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.prepare import prepare_activitynet  # noqa: E402
from mmclip4clip.datasets.prepare.common import run_cli  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='ActivityNet Captions annotation files '
        '(activitynet_{train,val_1}.json, one paragraph per video).')
    parser.add_argument(
        '--root', required=True,
        help='folder with train.json and val_1.json')
    parser.add_argument(
        '--out', default='data/activitynet/annotations',
        help='folder for the annotation files (default: %(default)s)')
    parser.add_argument(
        '--video-dir',
        help='the video folder (optional): each record then points at the '
        'file found there (any sub-folder, any extension) and records whose '
        'video is missing are left out with a warning')
    parser.add_argument(
        '--sentence-level', action='store_true',
        help='also write one record per sentence with its time segment '
        '(<name>_<split>_sentences.json)')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    return run_cli(prepare_activitynet, root=args.root, out_dir=args.out,
                   video_dir=args.video_dir,
                   sentence_level=args.sentence_level)


if __name__ == '__main__':
    sys.exit(main())
