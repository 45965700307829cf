"""Write ActivityNet Captions' paragraph annotation files: train, val_1.

Usage (from the repository root)::

    python tools/data/prepare_activitynet.py --root data/activitynet/captions \
        --out data/activitynet/annotations \
        --video-dir data/activitynet/videos

Ends by printing ``<split>: <V> videos, <C> captions`` for each file written.
"""
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prepare_cli import prepare_main  # noqa: E402  (beside this script)

from mmclip4clip.datasets.prepare import prepare_activitynet  # noqa: E402

if __name__ == '__main__':
    sys.exit(prepare_main(
        prepare_activitynet,
        description='ActivityNet Captions annotation files '
        '(activitynet_{train,val_1}.json, one paragraph per video).',
        root_help='folder with train.json and val_1.json',
        default_out='data/activitynet/annotations',
        sentence_level=True))
