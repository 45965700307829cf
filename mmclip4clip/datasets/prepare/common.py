"""Shared steps of the dataset preparation scripts (``tools/data/prepare_*``).

Each dataset module parses its public annotation files into :class:`Split`
objects (records in mmclip4clip's annotation format); this module cleans
captions, optionally finds the real video files and writes the annotation
files atomically. The scripts' command line and summary are
``tools/data/prepare_cli.py``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmclip4clip.datasets.annotations import AnnotationError, load_annotations
from mmclip4clip.utils.fileio import atomic_path


class SourceFormatError(ValueError):
    """A dataset's own annotation file is malformed (names file and row)."""


@dataclass
class Split:
    """One annotation file to write: ``records`` go to ``filename``."""

    name: str
    filename: str
    records: list[dict]

    @property
    def num_videos(self) -> int:
        """Distinct video files (segments of one video count once)."""
        return len({record['video'] for record in self.records})

    @property
    def num_captions(self) -> int:
        """Captions over all records (a paragraph counts as one)."""
        return sum(len(record['captions']) for record in self.records)


def paragraph_splits(dataset: str, name: str, paragraphs: list[dict],
                     sentences: list[dict] | None) -> list[Split]:
    """A paragraph dataset's split ``<dataset>_<name>.json`` (one record per
    video, its sentences joined) and, when ``sentences`` are given (the
    sentence-level protocol), ``<dataset>_<name>_sentences.json``."""
    splits = [Split(name, f'{dataset}_{name}.json', paragraphs)]
    if sentences is not None:
        splits.append(Split(f'{name}_sentences',
                            f'{dataset}_{name}_sentences.json', sentences))
    return splits


# ----------------------------------------------------------------- reading


def require_file(root: str | Path, name: str) -> Path:
    """``root/name``, or a FileNotFoundError naming the missing file."""
    path = Path(root) / name
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: the dataset folder '
                                f'{root} must contain {name}')
    return path


def load_json(path: Path) -> object:
    """Parse a JSON file; a syntax error names the file."""
    with open(path, encoding='utf-8') as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise SourceFormatError(f'{path}: not valid JSON ({err})') \
                from err


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines, stripped; a line that
    is not UTF-8 is an error naming the file and line."""
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as err:
                raise SourceFormatError(f'{path}, line {number}: not UTF-8 '
                                        f'({err})') from err
            line = line.strip('\r\n')
            if line.strip():
                yield number, line


def read_csv(path: Path, columns: Sequence[str]
             ) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a comma-separated file with a header that
    has ``columns``; a missing column or an empty value names file and line.
    """
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceFormatError(
                f'{path}: header {reader.fieldnames} lacks column(s) '
                f'{missing}')
        for row in reader:
            for column in columns:
                if not (row.get(column) or '').strip():
                    raise SourceFormatError(
                        f'{path}, line {reader.line_num}: empty or missing '
                        f'{column!r}')
            yield reader.line_num, row


def clean_caption(text: object, where: str) -> str:
    """Collapse runs of whitespace (CLIP's tokenizer does the same, so the
    tokens do not change) and reject empty or non-string captions."""
    if not isinstance(text, str):
        raise SourceFormatError(f'{where}: caption must be a string, got '
                                f'{type(text).__name__}')
    caption = ' '.join(text.split())
    if not caption:
        raise SourceFormatError(f'{where}: empty caption')
    return caption


# ------------------------------------------------------------ video files


class VideoFileLookup:
    """The files under a video folder, looked up the way CLIP4Clip's loaders
    find videos (``os.walk`` over sub-folders): by relative path, by file
    name, or by file name without its extension. Any extension counts (a
    dataset's own videos may come in any container); hidden files do not.

    Args:
        video_dir: the folder that ``data_prefix['video']`` will point to.
    """

    def __init__(self, video_dir: str | Path) -> None:
        self.root = Path(video_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f'video folder {self.root} does not exist')
        self._by_name: dict[str, str] = {}
        self._by_stem: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()  # the first of several matches is deterministic
            for filename in sorted(filenames):
                if filename.startswith('.'):
                    continue
                rel = Path(dirpath, filename).relative_to(self.root)
                self._by_name.setdefault(filename, rel.as_posix())
                self._by_stem.setdefault(rel.stem, rel.as_posix())

    def find(self, names: Sequence[str]) -> str | None:
        """Relative path of the first of ``names`` that is there, or None."""
        for name in names:
            if (self.root / name).is_file():
                return name
            found = self._by_name.get(name) or self._by_stem.get(name)
            if found:
                return found
        return None


def default_video_names(video: str) -> list[str]:
    """Names a video may have: the expected path, or its stem anywhere."""
    return [video, Path(video).stem]


def locate_videos(splits: Sequence[Split], video_dir: str | Path,
                  video_names: Callable[[str], list[str]]
                  = default_video_names) -> list[Split]:
    """Point each record at its real file under ``video_dir``.

    ``video_names(record['video'])`` lists the names to try. Records whose
    video is not there are left out with a warning on stderr (CLIP4Clip's
    loaders skip them silently); a split with no video left is an error.
    """
    lookup = VideoFileLookup(video_dir)
    found: dict[str, str | None] = {}
    located = []
    for split in splits:
        records, missing = [], []
        for record in split.records:
            video = record['video']
            if video not in found:
                found[video] = lookup.find(video_names(video))
            if found[video] is None:
                if video not in missing:
                    missing.append(video)
                continue
            records.append(dict(record, video=found[video]))
        if not records:
            raise FileNotFoundError(
                f'{split.name}: none of its {len(missing)} videos is under '
                f'{lookup.root} (e.g. {missing[0]})')
        if missing:
            print(f'warning: {split.name}: {len(missing)} videos not found '
                  f'under {lookup.root}, their records are left out (e.g. '
                  f'{", ".join(missing[:3])})', file=sys.stderr)
        located.append(Split(split.name, split.filename, records))
    return located


# ----------------------------------------------------------------- writing


def _dump(records: list[dict], f) -> None:
    """A JSON list with one record per line: compact yet diffable."""
    f.write('[\n')
    for i, record in enumerate(records):
        f.write(json.dumps(record, ensure_ascii=False))
        f.write(',\n' if i + 1 < len(records) else '\n')
    f.write(']\n')


def write_splits(splits: Sequence[Split], out_dir: str | Path) -> list[Path]:
    """Write all splits or none.

    Each split goes to a temporary file in ``out_dir`` and is read back with
    :func:`load_annotations`; only when every one is valid are they renamed
    to their final names, so a failure never leaves a half-written file.
    """
    names = [split.filename for split in splits]
    if len(set(names)) != len(names):
        raise ValueError(f'two splits write the same file: {names}')
    for split in splits:
        if not split.records:
            raise SourceFormatError(f'{split.name}: no video in this split')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / split.filename for split in splits]
    # Every file stays a temporary until the last one is valid: an error
    # unwinds the stack, deleting them all; leaving it renames them all.
    with contextlib.ExitStack() as stack:
        for split, target in zip(splits, targets):
            temp = stack.enter_context(atomic_path(target))
            with open(temp, 'w', encoding='utf-8') as f:
                _dump(split.records, f)
            try:
                load_annotations(str(temp))
            except AnnotationError as err:
                raise AnnotationError(f'{split.name} ({target}) would be '
                                      f'invalid: {err}') from err
    return targets


def write_dataset(splits: Sequence[Split], out_dir: str | Path,
                  video_dir: str | Path | None = None,
                  video_names: Callable[[str], list[str]]
                  = default_video_names) -> list[Split]:
    """Write the splits to ``out_dir`` (all or none, :func:`write_splits`);
    with ``video_dir``, each record first points at the file found there
    under one of ``video_names(record['video'])``, and records without a
    video are left out with a warning (:func:`locate_videos`). Returns the
    splits as written."""
    if video_dir is not None:
        splits = locate_videos(splits, video_dir, video_names)
    write_splits(splits, out_dir)
    return list(splits)
