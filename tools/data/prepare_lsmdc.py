"""Write LSMDC's annotation files: train, val, test 1k.

Usage (from the repository root)::

    python tools/data/prepare_lsmdc.py --root data/lsmdc/lsmdc_data \
        --out data/lsmdc/annotations

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import argparse
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.prepare import prepare_lsmdc  # noqa: E402
from mmclip4clip.datasets.prepare.common import run_cli  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='LSMDC annotation files (lsmdc_{train,val,test_1k}.json) from '
        'the LSMDC 2016 challenge csv files.')
    parser.add_argument(
        '--root', required=True,
        help='folder with LSMDC16_annos_training.csv, '
        'LSMDC16_annos_val.csv and '
        'LSMDC16_challenge_1000_publictect.csv')
    parser.add_argument(
        '--out', default='data/lsmdc/annotations',
        help='folder for the annotation files (default: %(default)s)')
    parser.add_argument(
        '--video-dir',
        help='the video folder (optional): each record then points at the '
        'file found there (any sub-folder, any extension) and records whose '
        'video is missing are left out with a warning')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    return run_cli(prepare_lsmdc, root=args.root, out_dir=args.out,
                   video_dir=args.video_dir)


if __name__ == '__main__':
    sys.exit(main())
