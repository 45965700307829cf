"""Check a dataset's videos and captions before a long run.

Usage (from the repository root)::

    python tools/data/check_dataset.py CONFIG [--workers N] [--verbose]
    python tools/data/check_dataset.py ANN_FILE VIDEO_ROOT
        [--feature-framerate 1] [--max-words 32] [--tokenizer DIR]

With a config, checks the train/val/test datasets (each annotation file
once). Opens every video once and reports missing, unreadable, empty and
too-short videos and empty or over-long captions, with counts per category
(categories in ``mmclip4clip/datasets/check.py``). Exit code 1 if there is
any error; warnings alone exit 0.
"""
import argparse
import os
import sys
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmclip4clip.datasets.check import (  # noqa: E402
    ERRORS,
    WARNINGS,
    CheckTarget,
    SplitReport,
    check_targets,
    targets_from_config,
)


def format_reports(reports: list[SplitReport], limit: int | None = 10) -> str:
    """Counts per category and the offending files (first ``limit`` per
    category; all when ``limit`` is None)."""
    lines = []
    for report in reports:
        target = report.target
        splits = f' [{", ".join(target.splits)}]' if target.splits else ''
        lines.append(f'== {target.ann_file}{splits}: videos under '
                     f'{target.video_root or "."}')
        lines.append(f'   {report.num_records} records, {report.num_videos} '
                     f'videos, {report.num_captions} captions; caption '
                     f'length in {report.token_count}, limit '
                     f'{target.max_words - 2}; sampling at '
                     f'{target.feature_framerate} fps')
        counts = report.counts()
        for kind, categories in (('errors', ERRORS), ('warnings', WARNINGS)):
            lines.append(f'   {kind}: ' + ', '.join(
                f'{c} {counts[c]}' for c in categories))
            for category in categories:
                issues = [i for i in report.issues if i.category == category]
                shown = issues if limit is None else issues[:limit]
                if shown:
                    lines.append(f'   {category} ({len(issues)}):')
                    lines.extend(f'     {issue}' for issue in shown)
                if len(shown) < len(issues):
                    lines.append(f'     ... {len(issues) - len(shown)} more '
                                 '(--verbose lists all)')
    errors = sum(r.num_errors for r in reports)
    warnings = sum(len(r.issues) - r.num_errors for r in reports)
    lines.append(f'{"FAILED" if errors else "OK"}: {errors} errors, '
                 f'{warnings} warnings in {len(reports)} annotation file(s)')
    return '\n'.join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Open every video of a dataset once and check its '
        'annotations; exit code 1 if anything would break a run.')
    parser.add_argument('inputs', nargs='+', metavar='CONFIG | ANN_FILE '
                        'VIDEO_ROOT', help='a config file (.py), or an '
                        'annotation file and the folder its videos are under')
    parser.add_argument('--workers', type=int,
                        default=max(1, min(8, os.cpu_count() or 1)),
                        help='parallel processes opening videos (default: '
                        '%(default)s)')
    parser.add_argument('--full-decode', action='store_true',
                        help='decode every frame, not only the first and '
                        'last (slower, finds damage inside a file)')
    parser.add_argument('--verbose', action='store_true',
                        help='list every offending file, not the first N')
    parser.add_argument('--limit', type=int, default=10,
                        help='files listed per category (default: '
                        '%(default)s)')
    group = parser.add_argument_group('with ANN_FILE VIDEO_ROOT')
    group.add_argument('--feature-framerate', type=int, default=1,
                       help='frames sampled per second (default: '
                       '%(default)s)')
    group.add_argument('--max-words', type=int, default=32,
                       help='text length L with start and end tokens '
                       '(default: %(default)s)')
    group.add_argument('--tokenizer', help='tokenizer directory or hub id '
                       '(default: count whitespace-separated words)')
    args = parser.parse_args()
    if len(args.inputs) > 2 or (len(args.inputs) == 1
                                and not args.inputs[0].endswith('.py')):
        parser.error('give CONFIG (a .py file) or ANN_FILE VIDEO_ROOT')
    return args


def main() -> int:
    args = parse_args()
    if len(args.inputs) == 1:
        from mmengine.config import Config

        targets = targets_from_config(Config.fromfile(args.inputs[0]))
        if not targets:
            print(f'{args.inputs[0]}: no dataset with an ann_file in '
                  'train/val/test_dataloader', file=sys.stderr)
            return 1
    else:
        targets = [CheckTarget(args.inputs[0], args.inputs[1],
                               feature_framerate=args.feature_framerate,
                               max_words=args.max_words,
                               tokenizer=args.tokenizer)]
    reports = check_targets(targets, workers=args.workers,
                            full_decode=args.full_decode,
                            progress=True)
    print(format_reports(reports, None if args.verbose else args.limit))
    return 1 if any(report.num_errors for report in reports) else 0


if __name__ == '__main__':
    sys.exit(main())
