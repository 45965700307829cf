"""Write MSVD's annotation files: train, val, test.

Usage (from the repository root)::

    python tools/data/prepare_msvd.py --root data/msvd/msvd_data \
        --out data/msvd/annotations

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prepare_cli import prepare_main  # noqa: E402  (beside this script)

from mmclip4clip.datasets.prepare import prepare_msvd  # noqa: E402

if __name__ == '__main__':
    sys.exit(prepare_main(
        prepare_msvd,
        description='MSVD annotation files (msvd_{train,val,test}.json) from the '
        "files of CLIP4Clip's msvd_data.zip.",
        root_help='folder with raw-captions.pkl and '
        '{train,val,test}_list.txt',
        default_out='data/msvd/annotations'))
