"""Embed every video under a folder into a search index; rerun to update.

    python tools/index_videos.py CONFIG [CHECKPOINT] VIDEO_DIR INDEX
        [--batch-size 8] [--workers 0] [--device cpu] [--rebuild]

Without CHECKPOINT the model keeps the config's own weights, e.g. a
published CLIP4Clip model named by its ``pretrained`` directory.

Only new or changed files (size or mtime) are encoded on a rerun, removed
files are dropped, and broken files are skipped and listed at the end. The
index layout is described in ``mmclip4clip/apis/index.py``. A missing or
malformed config, checkpoint, video folder or index, or a model whose
embeddings are not finite, ends with a one-line error and exit status 1;
nothing is written then.
"""
import argparse
import sys

from mmengine.config import Config

from mmclip4clip.apis import init_retriever, update_index
from mmclip4clip.utils.cli import at_least


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
    # Intermixed: the optional CHECKPOINT stays in its place whatever
    # options come between the paths.
    return parser.parse_intermixed_args()


def main() -> int:
    args = parse_args()

    def progress(done: int, total: int) -> None:
        print(f'encoded {done}/{total}', flush=True)

    try:
        cfg = Config.fromfile(args.config)
        model = init_retriever(cfg, args.checkpoint, device=args.device)
        summary = update_index(model, cfg, args.video_dir, args.index,
                               args.config, args.checkpoint,
                               batch_size=args.batch_size,
                               num_workers=args.workers,
                               rebuild=args.rebuild, progress=progress)
    except (ValueError, OSError) as err:
        print('error: ' + ' '.join(str(err).splitlines()), file=sys.stderr)
        return 1
    print('added={added} updated={updated} unchanged={unchanged} '
          'removed={removed} encoded={encoded} total={total} '
          'skipped={n}'.format(n=len(summary['skipped']), **summary))
    for item in summary['skipped']:
        print(f'skipped {item["path"]}: {item["error"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
