"""Direction-only retrieval on the synthetic dataset: each caption of a
moving clip against its clip and the same clip played backwards.

    python tools/analysis_tools/reversal_probe.py CONFIG CHECKPOINT [--device cpu]

Prints t2v R@1 among those two candidates (ties count half; meanP gets 50).
"""
import argparse
import json
from pathlib import Path

from mmengine.config import Config
from mmengine.registry import DefaultScope
from reversal import reversal_accuracy  # the measure, beside this script

from mmclip4clip.apis import init_retriever
from mmclip4clip.registry import DATASETS


def is_moving(video: str) -> bool:
    """Synthetic file names end in the motion: ..._red_square_left.mp4."""
    return Path(video).stem.rsplit('_', 1)[-1] != 'still'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    model = init_retriever(cfg, args.checkpoint, args.device)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
    result = reversal_accuracy(model, dataset, is_moving)
    print()
    print(json.dumps(result))


if __name__ == '__main__':
    main()
