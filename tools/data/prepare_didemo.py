"""Write DiDeMo's paragraph annotation files: train, (val,) test.

Usage (from the repository root)::

    python tools/data/prepare_didemo.py --root data/didemo/didemo_data \
        --out data/didemo/annotations \
        --video-dir data/didemo/videos

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prepare_cli import prepare_main  # noqa: E402  (beside this script)

from mmclip4clip.datasets.prepare import prepare_didemo  # noqa: E402

if __name__ == '__main__':
    sys.exit(prepare_main(
        prepare_didemo,
        description='DiDeMo annotation files (didemo_{train,val,test}.json, one '
        'paragraph per video).',
        root_help='folder with train_data.json and test_data.json '
        '(val_data.json and {train,val,test}_list.txt are '
        'used if there)',
        default_out='data/didemo/annotations',
        sentence_level=True))
