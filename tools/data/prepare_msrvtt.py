"""Write MSR-VTT's annotation files: train 9k, train 7k, test 1k-A.

Usage (from the repository root)::

    python tools/data/prepare_msrvtt.py --root data/msrvtt/msrvtt_data \
        --out data/msrvtt/annotations

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import argparse
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.prepare import prepare_msrvtt  # noqa: E402
from mmclip4clip.datasets.prepare.common import run_cli  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='MSR-VTT annotation files (msrvtt_train_9k.json, '
        'msrvtt_train_7k.json, msrvtt_test_1k.json) from the files of '
        "CLIP4Clip's msrvtt_data.zip.")
    parser.add_argument(
        '--root', required=True,
        help='folder with MSRVTT_data.json, MSRVTT_train.9k.csv, '
        'MSRVTT_train.7k.csv and MSRVTT_JSFUSION_test.csv')
    parser.add_argument(
        '--out', default='data/msrvtt/annotations',
        help='folder for the annotation files (default: %(default)s)')
    parser.add_argument(
        '--video-dir',
        help='the video folder (optional): each record then points at the '
        'file found there (any sub-folder, any extension) and records whose '
        'video is missing are left out with a warning')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    return run_cli(prepare_msrvtt, root=args.root, out_dir=args.out,
                   video_dir=args.video_dir)


if __name__ == '__main__':
    sys.exit(main())
