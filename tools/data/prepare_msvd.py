"""Write MSVD's annotation files: train, val, test.

Usage (from the repository root)::

    python tools/data/prepare_msvd.py --root data/msvd/msvd_data \
        --out data/msvd/annotations

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import argparse
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.prepare import prepare_msvd  # noqa: E402
from mmclip4clip.datasets.prepare.common import run_cli  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='MSVD annotation files (msvd_{train,val,test}.json) from the '
        "files of CLIP4Clip's msvd_data.zip.")
    parser.add_argument(
        '--root', required=True,
        help='folder with raw-captions.pkl and '
        '{train,val,test}_list.txt')
    parser.add_argument(
        '--out', default='data/msvd/annotations',
        help='folder for the annotation files (default: %(default)s)')
    parser.add_argument(
        '--video-dir',
        help='the video folder (optional): each record then points at the '
        'file found there (any sub-folder, any extension) and records whose '
        'video is missing are left out with a warning')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    return run_cli(prepare_msvd, root=args.root, out_dir=args.out,
                   video_dir=args.video_dir)


if __name__ == '__main__':
    sys.exit(main())
