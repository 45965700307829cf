"""Write MSR-VTT's annotation files: train 9k, train 7k, test 1k-A.

Usage (from the repository root)::

    python tools/data/prepare_msrvtt.py --root data/msrvtt/msrvtt_data \
        --out data/msrvtt/annotations

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prepare_cli import prepare_main  # noqa: E402  (beside this script)

from mmclip4clip.datasets.prepare import prepare_msrvtt  # noqa: E402

if __name__ == '__main__':
    sys.exit(prepare_main(
        prepare_msrvtt,
        description='MSR-VTT annotation files (msrvtt_train_9k.json, '
        'msrvtt_train_7k.json, msrvtt_test_1k.json) from the files of '
        "CLIP4Clip's msrvtt_data.zip.",
        root_help='folder with MSRVTT_data.json, MSRVTT_train.9k.csv, '
        'MSRVTT_train.7k.csv and MSRVTT_JSFUSION_test.csv',
        default_out='data/msrvtt/annotations'))
