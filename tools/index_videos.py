"""Embed every video under a folder into a search index; rerun to update.

    python tools/index_videos.py CONFIG [CHECKPOINT] VIDEO_DIR INDEX
        [--batch-size 8] [--workers 0] [--device cpu] [--rebuild]
        [--commit-every 256] [--launcher {none,pytorch}]

Without CHECKPOINT the model keeps the config's own weights, e.g. a
published CLIP4Clip model named by its ``pretrained`` directory.

Only new or changed files (size or mtime) are encoded on a rerun, removed
files are dropped, and broken files are skipped and listed at the end. The
index layout is described in ``mmclip4clip/apis/index.py``. A missing or
malformed config, checkpoint, video folder or index, or a model whose
embeddings are not finite, ends with a one-line error and exit status 1;
nothing is written then.

Progress is committed every ``--commit-every`` videos under
``INDEX/.progress/``: a killed run started again with the same arguments
resumes there, and the index is written only at the end. Under torchrun
(``--launcher pytorch``, ``tools/dist_index.sh``) each process encodes its
share and rank 0 writes the index a single process would write. stdout
carries only the summary; the progress bar (rate, ETA) is on stderr.
"""
import argparse
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config

from mmclip4clip.apis import init_retriever, update_index
from mmclip4clip.apis.index import DEFAULT_COMMIT_EVERY
from mmclip4clip.utils.cli import at_least

# How long a process waits for the others at the end of its share (they
# finish at different times) before the job fails.
DIST_TIMEOUT_S = 6 * 3600


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Index a folder of videos')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', nargs='?',
                        help='checkpoint file; omitted: the config\'s own '
                        '(pretrained) weights')
    parser.add_argument('video_dir', help='folder searched recursively')
    parser.add_argument('index', help='index directory (created if missing)')
    parser.add_argument('--batch-size', type=at_least(1), default=8)
    parser.add_argument('--workers', type=at_least(0), default=0,
                        help='decoding worker processes')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--rebuild', action='store_true',
                        help='re-encode everything, e.g. for a new model')
    parser.add_argument(
        '--commit-every', type=at_least(1), default=DEFAULT_COMMIT_EVERY,
        help='videos between two commits of the progress (rounded down to '
        'whole batches): what a killed run loses')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch'],
                        help='pytorch: one process per torchrun rank')
    # Intermixed: the optional CHECKPOINT stays in its place whatever
    # options come between the paths.
    return parser.parse_intermixed_args()


def init_distributed(device: str) -> str:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU);
    return this process's device."""
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device.startswith('cuda') and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = f'cuda:{local_rank}', 'nccl'
    else:
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend,
                                timeout=timedelta(seconds=DIST_TIMEOUT_S))
    return device


class ProgressBarOnStderr:
    """``progress(done, total)`` drawn as mmengine's bar (rate, ETA) on
    stderr, over the videos left when it starts; says when it resumes."""

    def __init__(self, show: bool) -> None:
        self.show, self.bar, self.last = show, None, 0

    def __call__(self, done: int, total: int) -> None:
        if not self.show:
            return
        if self.bar is None:
            from mmengine.utils import ProgressBar
            if done:
                print(f'resuming: {done} of {total} videos already encoded',
                      file=sys.stderr)
            self.bar = ProgressBar(total - done, file=sys.stderr)
            self.last = done
            return
        if done > self.last:
            self.bar.update(done - self.last)
        self.last = done

    def close(self) -> None:
        if self.bar is not None:
            sys.stderr.write('\n')


def main() -> int:
    args = parse_args()
    rank = 0
    bar = None
    try:
        device = args.device
        if args.launcher == 'pytorch':
            device = init_distributed(device)
            rank = dist.get_rank()
        bar = ProgressBarOnStderr(show=rank == 0)
        cfg = Config.fromfile(args.config)
        model = init_retriever(cfg, args.checkpoint, device=device)
        summary = update_index(model, cfg, args.video_dir, args.index,
                               args.config, args.checkpoint,
                               batch_size=args.batch_size,
                               num_workers=args.workers,
                               rebuild=args.rebuild, progress=bar,
                               commit_every=args.commit_every)
    except (ValueError, OSError, RuntimeError) as err:
        if bar is not None:
            bar.close()
        print('error: ' + ' '.join(str(err).splitlines()), file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    bar.close()
    if rank != 0:
        return 0
    print('added={added} updated={updated} unchanged={unchanged} '
          'removed={removed} encoded={encoded} resumed={resumed} '
          'total={total} skipped={n}'.format(n=len(summary['skipped']),
                                             **summary))
    for item in summary['skipped']:
        print(f'skipped {item["path"]}: {item["error"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
