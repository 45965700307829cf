"""The Runner of the mmclip4clip scope: safe, checked checkpoint loading and
whole-or-nothing checkpoint files."""
from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence

from mmengine.config import Config
from mmengine.dist import master_only
from mmengine.model import is_model_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from mmclip4clip.registry import RUNNERS
from mmclip4clip.utils.fileio import atomic_path

from .checkpoint_io import (
    DEFAULT_REVISE_KEYS,
    load_checkpoint_file,
    load_weights,
    state_dict_of,
)

# mmengine's pointer to the newest checkpoint, in the work dir.
LAST_CHECKPOINT = 'last_checkpoint'


def _is_local(path: str) -> bool:
    return '://' not in str(path)


@RUNNERS.register_module()
class CLIP4ClipRunner(Runner):
    """mmengine's Runner with the checkpoint handling our tools need.

    Why a Runner subclass (selected by ``runner_type`` in our
    ``default_runtime`` and built by our tools): mmengine reads every local
    checkpoint through one process-wide loader table, so making our loader
    the default would also change how mmaction2's (or anyone's) checkpoints
    load in a process that merely imports this plugin. Overriding the
    Runner's own load and save methods confines the behaviour to runs of our
    configs and tools:

    - checkpoints are read with :func:`load_checkpoint_file` (torch's safe
      mode, clear messages for empty, truncated and foreign files);
    - evaluation (``test()``, ``val()``) and ``resume`` refuse a checkpoint
      whose weights do not fit the model (missing, unused or reshaped
      tensors, named in groups): the metrics of a half-random model would
      otherwise be printed with exit 0. Training's ``load_from`` stays
      lenient, as fine-tuning a meanP model into another head needs, and
      logs what it did not load;
    - ``resume`` without a checkpoint in the work dir is an error naming
      the work dir, not a silent start from scratch;
    - a checkpoint file appears under its name only once written whole.
    """

    _fine_tuning = False  # set while train() runs: load_from is lenient

    def train(self) -> nn.Module:
        self._fine_tuning = True
        try:
            return super().train()
        finally:
            self._fine_tuning = False

    def load_or_resume(self) -> None:
        """Resume (from ``load_from`` or the work dir's latest checkpoint),
        else load ``load_from``: checked against the model, leniently when
        training."""
        if self._has_loaded:
            return
        if self._resume:
            self.resume(self._load_from or self.latest_checkpoint())
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from,
                                 strict=not self._fine_tuning)
        else:
            return
        self._has_loaded = True

    def latest_checkpoint(self) -> str:
        """The checkpoint the work dir's ``last_checkpoint`` names."""
        pointer = osp.join(self.work_dir, LAST_CHECKPOINT)
        if not osp.isfile(pointer):
            raise FileNotFoundError(
                f'cannot resume: work dir {self.work_dir} holds no checkpoint '
                f'(no {LAST_CHECKPOINT} file). Train without --resume, or '
                'pass --resume CHECKPOINT')
        with open(pointer) as f:
            latest = f.read().strip()
        if not latest:
            raise FileNotFoundError(f'cannot resume: {pointer} is empty')
        if _is_local(latest) and not osp.isfile(latest):
            raise FileNotFoundError(
                f'cannot resume: {pointer} names {latest}, which does not '
                'exist')
        self.logger.info(f'Auto resumed from the latest checkpoint {latest}.')
        return latest

    def load_checkpoint(self, filename: str, map_location='cpu',
                        strict: bool = True,
                        revise_keys: Sequence[tuple[str, str]] = (
                            DEFAULT_REVISE_KEYS)) -> dict:
        """Read ``filename`` safely and load its weights into the model.

        ``strict`` (the default, used by ``resume`` and evaluation): any
        missing, unused or reshaped weight is a
        :class:`~mmclip4clip.engine.checkpoint_io.CheckpointMismatchError`.
        Otherwise the differences are logged as a warning, grouped by
        module.
        """
        if _is_local(filename):
            checkpoint = load_checkpoint_file(filename, map_location)
        else:  # URLs and model zoos: mmengine's loaders
            checkpoint = _load_checkpoint(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        weights = state_dict_of(checkpoint, filename, revise_keys)
        mismatch = load_weights(model, weights, filename, strict=strict)
        if mismatch:
            self.logger.warning(
                f'load_from {filename}: not every weight was loaded '
                f'(fine-tuning keeps the model\'s own values for these):\n'
                f'{mismatch.describe()}')
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str,
                        file_client_args: dict | None = None,
                        save_optimizer: bool = True,
                        save_param_scheduler: bool = True,
                        meta: dict | None = None, by_epoch: bool = True,
                        backend_args: dict | None = None) -> None:
        """mmengine's ``save_checkpoint``, written to a temporary name in
        ``out_dir`` and renamed once complete (local folders): a full disk
        or a kill leaves the earlier checkpoints and no partial file."""
        args = dict(file_client_args=file_client_args,
                    save_optimizer=save_optimizer,
                    save_param_scheduler=save_param_scheduler, meta=meta,
                    by_epoch=by_epoch, backend_args=backend_args)
        if not _is_local(out_dir) or file_client_args or backend_args:
            super().save_checkpoint(out_dir, filename, **args)
            return
        os.makedirs(out_dir, exist_ok=True)
        with atomic_path(osp.join(out_dir, filename)) as tmp:
            super().save_checkpoint(out_dir, tmp.name, **args)


def build_runner(cfg: Config) -> Runner:
    """The config's ``runner_type`` (default :class:`CLIP4ClipRunner`),
    built in the mmclip4clip scope; used by ``tools/train.py`` and
    ``tools/test.py``."""
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        runner_cls = RUNNERS.get(cfg.get('runner_type', 'CLIP4ClipRunner'))
    if runner_cls is None:
        raise KeyError(f'runner_type {cfg.get("runner_type")!r} is not a '
                       'registered runner')
    return runner_cls.from_cfg(cfg)
