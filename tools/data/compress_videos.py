"""Re-encode a tree of videos at a low frame rate and size, in parallel.

Usage (from the repository root)::

    python tools/data/compress_videos.py SRC DST [--fps 3] [--size 224]
        [--workers N] [--crf 23] [--preset medium] [--force]

Writes ``DST/<same relative path>.mp4`` (H.264, no audio), skips outputs
already done, so an interrupted run can simply be started again, and lists
the files that failed (exit code 1 if any). Details in
``mmclip4clip/datasets/compress.py``.
"""
import argparse
import os
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.compress import (  # noqa: E402
    CompressSummary,
    compress_videos,
)
from mmclip4clip.datasets.video_files import VIDEO_EXTENSIONS  # noqa: E402


def format_summary(summary: CompressSummary) -> str:
    """Counts, then every failure with its reason."""
    lines = [f'encoded {len(summary.encoded)}, already done '
             f'{len(summary.skipped)}, failed {len(summary.failed)} '
             f'in {summary.seconds:.1f} s']
    if summary.failed:
        lines.append('failed:')
        lines.extend(f'  {path}: {why}' for path, why in summary.failed)
    return '\n'.join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Re-encode every video under SRC into DST at a low frame '
        'rate, shorter side SIZE (H.264 mp4, same folder layout).')
    parser.add_argument('src', help='folder of source videos (searched '
                        'recursively)')
    parser.add_argument('dst', help='output folder (not inside SRC)')
    parser.add_argument('--fps', type=float, default=3,
                        help='output frame rate (default: %(default)s)')
    parser.add_argument('--size', type=int, default=224,
                        help='output shorter side, even; smaller videos are '
                        'not upscaled (default: %(default)s)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='parallel encoder processes (default: all '
                        'cores, %(default)s)')
    parser.add_argument('--crf', type=int, default=23,
                        help='x264 quality, lower is better and larger '
                        '(default: %(default)s)')
    parser.add_argument('--preset', default='medium',
                        help='x264 speed preset (default: %(default)s)')
    parser.add_argument('--ext', nargs='+', default=list(VIDEO_EXTENSIONS),
                        help='source extensions (default: %(default)s)')
    parser.add_argument('--force', action='store_true',
                        help='re-encode even outputs that are up to date')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    summary = compress_videos(
        args.src, args.dst, fps=args.fps, size=args.size,
        workers=args.workers, crf=args.crf, preset=args.preset,
        extensions=tuple(args.ext), force=args.force)
    print(format_summary(summary))
    return 1 if summary.failed else 0


if __name__ == '__main__':
    sys.exit(main())
