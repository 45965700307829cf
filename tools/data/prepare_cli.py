"""The command line shared by ``tools/data/prepare_<dataset>.py``: ``--root``,
``--out``, ``--video-dir`` (and ``--sentence-level``), the summary they end
with and their exit status. Imported by those scripts from this folder; not
a script itself.
"""
import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.annotations import AnnotationError  # noqa: E402
from mmclip4clip.datasets.prepare import (  # noqa: E402
    SourceFormatError,
    Split,
)


def format_summary(splits: Sequence[Split]) -> str:
    """The lines the scripts end with: ``<split>: <V> videos, <C> captions``."""
    return '\n'.join(f'{split.name}: {split.num_videos} videos, '
                     f'{split.num_captions} captions' for split in splits)


def run_cli(prepare: Callable[..., list[Split]], **kwargs) -> int:
    """Run a ``prepare_*`` function for a script: print the summary, or the
    error (missing file, malformed row) without a traceback; exit status."""
    try:
        splits = prepare(**kwargs)
    except (FileNotFoundError, SourceFormatError, AnnotationError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(format_summary(splits))
    return 0


def prepare_main(prepare: Callable[..., list[Split]], description: str,
                 root_help: str, default_out: str,
                 sentence_level: bool = False) -> int:
    """The command line of a ``tools/data/prepare_<name>.py`` script:
    ``--root``, ``--out``, ``--video-dir`` (and ``--sentence-level`` for the
    paragraph datasets); returns the exit status."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--root', required=True, help=root_help)
    parser.add_argument(
        '--out', default=default_out,
        help='folder for the annotation files (default: %(default)s)')
    parser.add_argument(
        '--video-dir',
        help='the video folder (optional): each record then points at the '
        'file found there (any sub-folder, any extension) and records whose '
        'video is missing are left out with a warning')
    if sentence_level:
        parser.add_argument(
            '--sentence-level', action='store_true',
            help='also write one record per sentence with its time segment '
            '(<name>_<split>_sentences.json)')
    args = parser.parse_args()
    kwargs = dict(root=args.root, out_dir=args.out, video_dir=args.video_dir)
    if sentence_level:
        kwargs['sentence_level'] = args.sentence_level
    return run_cli(prepare, **kwargs)
