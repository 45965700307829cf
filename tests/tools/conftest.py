"""Fixtures of the search server's tests (test_search_server.py and
test_search_server_browser.py): a workspace, a fixed untrained model and a
small index of synthetic clips (one of them under
:data:`helpers.EVIL_VIDEO_NAME`), built once in each module that uses them.

Module-scoped, not session-scoped: :func:`web_workspace` makes the
workspace the current directory (the config's tokenizer path is relative
to it) while its module runs, and gives the old one back after.
"""
import os
import shutil
from pathlib import Path

import pytest
from helpers import EVIL_VIDEO_NAME, SYNTHETIC_CONFIG, WEB_INDEX_CLIPS, save_fixed_model
from mmengine.config import Config

from mmclip4clip.apis import init_retriever, update_index


@pytest.fixture(scope='module')
def web_workspace(make_workspace) -> Path:
    """A workspace the module runs in."""
    root = make_workspace('web_ws')
    cwd = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(cwd)


@pytest.fixture(scope='module')
def web_checkpoint(web_workspace) -> Path:
    """The synthetic config's model with weights drawn from seed 0."""
    return save_fixed_model(web_workspace / 'fixed_model.pth')


@pytest.fixture(scope='module')
def web_model_cfg(web_checkpoint):
    """``(model, cfg)``: :func:`web_checkpoint` loaded."""
    cfg = Config.fromfile(str(SYNTHETIC_CONFIG))
    return init_retriever(cfg, web_checkpoint), cfg


@pytest.fixture(scope='module')
def web_index_dir(web_workspace, web_model_cfg, web_checkpoint) -> Path:
    """An index of WEB_INDEX_CLIPS test clips and one more named
    EVIL_VIDEO_NAME."""
    model, cfg = web_model_cfg
    videos = web_workspace / 'videos'
    videos.mkdir()
    clips = sorted(
        (web_workspace / 'data/synthetic/videos/test').glob('*.mp4'))
    for clip in clips[:WEB_INDEX_CLIPS]:
        shutil.copy(clip, videos / clip.name)
    shutil.copy(clips[WEB_INDEX_CLIPS], videos / EVIL_VIDEO_NAME)
    index = web_workspace / 'index'
    counts = update_index(model, cfg, videos, index, SYNTHETIC_CONFIG,
                          web_checkpoint)
    assert counts['added'] == WEB_INDEX_CLIPS + 1
    assert counts['skipped'] == []
    return index
