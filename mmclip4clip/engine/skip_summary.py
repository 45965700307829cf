"""Report the training samples ``skip_broken`` skipped.

With ``VideoTextDataset(skip_broken=True)`` a broken video's samples are
replaced by random others while training, with a warning per file in the
process that met it (often a DataLoader worker). :class:`SkipSummaryHook`
adds up the dataset's
:class:`~mmclip4clip.datasets.video_text_dataset.SkipRecord` (all
processes of a rank) and gathers it from every rank to rank 0, which logs
how many samples were replaced, of which files and why: a warning after each
epoch that replaced some, and a summary at the end of training.
"""
from __future__ import annotations

from mmengine.dist import all_gather_object, is_main_process
from mmengine.hooks import Hook

from mmclip4clip.registry import HOOKS


def skip_recording_datasets(dataset) -> list:
    """The datasets inside ``dataset`` (itself, or wrapped in Concat /
    Repeat-style datasets) that record their skips."""
    if getattr(dataset, 'skip_record', None) is not None:
        return [dataset]
    inner = getattr(dataset, 'datasets', None)
    if inner is None and getattr(dataset, 'dataset', None) is not None:
        inner = [dataset.dataset]
    return [found for sub in inner or [] for found in
            skip_recording_datasets(sub)]


def gather_skips(dataset) -> dict[str, dict]:
    """``{file: {'error', 'samples', 'dropped'}}`` of one dataset over all
    ranks (a collective call): replaced samples are added up; samples dropped
    when loading are counted once, every rank having dropped the same."""
    per_rank = all_gather_object(dataset.skip_record.read())
    files: dict[str, dict] = {}
    for rank, skips in enumerate(per_rank):
        for name, entry in skips.items():
            if entry['dropped'] and rank > 0:
                continue
            if name in files:
                files[name]['samples'] += entry['samples']
            else:
                files[name] = dict(entry)
    return files


def replaced_samples(files: dict[str, dict]) -> int:
    return sum(e['samples'] for e in files.values() if not e['dropped'])


def format_skips(ann_file: str, files: dict[str, dict]) -> str:
    """The end-of-training summary: counts, then one line per file."""
    if not files:
        return f'skip_broken summary for {ann_file}: no sample skipped'
    replaced = {n: e for n, e in files.items() if not e['dropped']}
    dropped = {n: e for n, e in files.items() if e['dropped']}
    parts = []
    if replaced:
        parts.append(f'{replaced_samples(files)} training sample(s) of '
                     f'{len(replaced)} broken video(s) replaced by random '
                     'others')
    if dropped:
        parts.append(f'{sum(e["samples"] for e in dropped.values())} '
                     f'sample(s) of {len(dropped)} missing video(s) dropped '
                     'when the dataset was loaded')
    lines = [f'skip_broken summary for {ann_file}: ' + '; '.join(parts)]
    for name, entry in sorted(files.items()):
        how = 'dropped' if entry['dropped'] else 'replaced'
        lines.append(f'  {name}: {entry["samples"]} sample(s) {how}: '
                     f'{entry["error"]}')
    return '\n'.join(lines)


@HOOKS.register_module()
class SkipSummaryHook(Hook):
    """Log what ``skip_broken`` skipped in training: after each epoch that
    replaced samples, and in full at the end of training. Does nothing when
    the training dataset does not skip broken videos."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        self._datasets = skip_recording_datasets(
            runner.train_dataloader.dataset)
        self._replaced = [0] * len(self._datasets)

    def after_train_epoch(self, runner) -> None:
        for i, dataset in enumerate(self._datasets):
            total = replaced_samples(gather_skips(dataset))
            new, self._replaced[i] = total - self._replaced[i], total
            if new and is_main_process():
                runner.logger.warning(
                    f'skip_broken, epoch {runner.epoch + 1}: {new} training '
                    f'sample(s) of {dataset.ann_file} replaced by random '
                    f'others ({total} in all so far)')

    def after_train(self, runner) -> None:
        for dataset in self._datasets:
            files = gather_skips(dataset)
            if is_main_process():
                message = format_skips(dataset.ann_file, files)
                if files:
                    runner.logger.warning(message)
                else:
                    runner.logger.info(message)
