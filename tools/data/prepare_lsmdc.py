"""Write LSMDC's annotation files: train, val, test 1k.

Usage (from the repository root)::

    python tools/data/prepare_lsmdc.py --root data/lsmdc/lsmdc_data \
        --out data/lsmdc/annotations

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prepare_cli import prepare_main  # noqa: E402  (beside this script)

from mmclip4clip.datasets.prepare import prepare_lsmdc  # noqa: E402

if __name__ == '__main__':
    sys.exit(prepare_main(
        prepare_lsmdc,
        description='LSMDC annotation files (lsmdc_{train,val,test_1k}.json) from '
        'the LSMDC 2016 challenge csv files.',
        root_help='folder with LSMDC16_annos_training.csv, '
        'LSMDC16_annos_val.csv and '
        'LSMDC16_challenge_1000_publictect.csv',
        default_out='data/lsmdc/annotations'))
