"""A hook that SIGKILLs its own training process at a given iteration.

Loaded by the configs that ``test_resume_and_determinism.py`` writes, via
``custom_imports=dict(imports=['kill_hook'])`` with this folder on
``PYTHONPATH``. SIGKILL cannot be caught: no ``finally``, ``atexit`` or hook
runs, as when a job is killed by the scheduler or the OOM killer.
"""
import os
import signal

from mmengine.hooks import Hook

from mmclip4clip.registry import HOOKS


@HOOKS.register_module()
class SigkillAtIterHook(Hook):
    """Kill the process just before global iteration ``at_iter`` (0-based,
    i.e. after ``at_iter`` finished iterations) starts."""

    priority = 'HIGHEST'

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if runner.iter == self.at_iter:
            os.kill(os.getpid(), signal.SIGKILL)
