"""Index a folder of videos and search it: tools/index_videos.py and
tools/search.py on the synthetic dataset's 90 test clips, with a fixed
untrained model, so every index row and every ranking is checked exactly
against a brute-force computation (not a model-quality threshold)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_fixed_model
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmclip4clip.apis import (
    encode_texts,
    encode_videos,
    init_retriever,
    load_index,
    search_index,
    update_index,
)
from mmclip4clip.apis.index import save_index
from mmclip4clip.registry import TRANSFORMS

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
NUM_TEST_VIDEOS = 90


def run_tool(args: list, cwd: Path, timeout: int = 300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def parse_counts(stdout: str) -> dict:
    line = next(s for s in stdout.splitlines() if s.startswith('added='))
    return {k: int(v) for k, v in (p.split('=') for p in line.split())}


@pytest.fixture(scope='module')
def workspace(make_workspace) -> Path:
    return make_workspace('index_ws')


@pytest.fixture(scope='module')
def checkpoint(workspace) -> Path:
    """The synthetic config's model with weights drawn from seed 0, saved
    as tools/train.py saves its checkpoints (``meta`` + ``state_dict``)."""
    return save_fixed_model(workspace / 'fixed_model.pth', CONFIG)


@pytest.fixture(scope='module')
def model_cfg(workspace, checkpoint):
    """The fixed model and its config; the tokenizer path in the config
    is relative to the workspace."""
    cwd = os.getcwd()
    os.chdir(workspace)
    cfg = Config.fromfile(str(CONFIG))
    yield init_retriever(cfg, checkpoint), cfg
    os.chdir(cwd)


@pytest.fixture(scope='module')
def test_index(workspace, checkpoint) -> Path:
    index = workspace / 'test_index'
    proc = run_tool([REPO / 'tools/index_videos.py', CONFIG, checkpoint,
                     'data/synthetic/videos/test', index, '--batch-size', 16],
                    cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = parse_counts(proc.stdout)
    assert counts['added'] == counts['total'] == counts['encoded'] == \
        NUM_TEST_VIDEOS
    return index


def test_index_rows_are_the_embeddings_of_their_videos(workspace, model_cfg,
                                                       test_index):
    """Every test clip of the annotation file has one row (paths relative
    to the indexed folder), and a row holds its own video's embedding."""
    model, cfg = model_cfg
    index = load_index(test_index)
    ann = json.loads(
        (workspace / 'data/synthetic/annotations/test.json').read_text())
    paths = [v['path'] for v in index.videos]
    assert sorted(paths) == sorted(rec['video'].removeprefix('test/')
                                   for rec in ann)
    picked = paths[::17]  # 6 rows spread over the index
    emb, info = encode_videos(
        model, cfg, [workspace / 'data/synthetic/videos/test' / p
                     for p in picked])
    assert [i['error'] for i in info] == [None] * len(picked)
    rows = [paths.index(p) for p in picked]
    np.testing.assert_allclose(index.embeddings[rows], emb, atol=1e-5)


def test_search_ranks_by_brute_force_inner_products(workspace, model_cfg,
                                                   test_index):
    """For each held-out caption, the top 5 that ``search_index`` returns
    are those of the full caption x video product, scores included."""
    model, cfg = model_cfg
    index = load_index(test_index)
    ann = json.loads(
        (workspace / 'data/synthetic/annotations/test.json').read_text())
    captions = [c for rec in ann for c in rec['captions']][::9]  # 20
    scores = encode_texts(model, cfg, captions) @ index.embeddings.T
    for caption, row in zip(captions, scores, strict=True):
        order = np.argsort(-row, kind='stable')
        # Not vacuous: the 6 best are apart by more than rounding.
        assert np.all(np.diff(row[order[:6]]) < -1e-6), row[order[:6]]
        hits = search_index(model, cfg, index, caption, 5)
        assert [h['path'] for h in hits] == [
            index.videos[i]['path'] for i in order[:5]]
        np.testing.assert_allclose([h['score'] for h in hits],
                                   row[order[:5]], atol=1e-6)


def test_embeddings_match_the_evaluation_pipeline(workspace, model_cfg):
    """encode_videos == test pipeline + data preprocessor + encode_video."""
    model, cfg = model_cfg
    paths = sorted((workspace / 'data/synthetic/videos/test').glob('*.mp4'))
    paths = paths[:3]
    emb, info = encode_videos(model, cfg, paths, batch_size=2)
    assert [i['error'] for i in info] == [None] * 3
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        pipeline = Compose([TRANSFORMS.build(step) for step in
                            cfg.test_dataloader.dataset.pipeline])
    for row, path in enumerate(paths):
        packed = pipeline(dict(filename=str(path), captions=['x']))['inputs']
        data = model.data_preprocessor(dict(inputs=dict(
            imgs=packed['imgs'][None], frame_mask=packed['frame_mask'][None])))
        with torch.no_grad():
            ref = model.encode_video(data['inputs']['frames'],
                                     data['inputs']['frame_mask'])[0]
        np.testing.assert_allclose(emb[row], ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_rerun_encodes_nothing(workspace, model_cfg, checkpoint, test_index):
    model, cfg = model_cfg
    counts = update_index(model, cfg, workspace / 'data/synthetic/videos/test',
                          test_index, CONFIG, checkpoint)
    assert counts['encoded'] == 0 and counts['unchanged'] == 90


def test_index_loads_without_pickle(test_index):
    meta = json.loads((test_index / 'index.json').read_text())
    emb = np.load(test_index / meta['embeddings'], allow_pickle=False)
    assert emb.dtype == np.float32 and emb.shape == (90, meta['dim'])
    assert list(test_index.glob('embeddings-*.npy')) == [
        test_index / meta['embeddings']]


def test_broken_changed_and_removed_files(workspace, model_cfg, checkpoint,
                                          tmp_path):
    model, cfg = model_cfg
    videos = tmp_path / 'videos'
    shutil.copytree(workspace / 'data/synthetic/videos/test', videos)
    index = tmp_path / 'index'
    first = update_index(model, cfg, videos, index, CONFIG, checkpoint,
                         batch_size=16, num_workers=2)
    assert first['added'] == 90 and first['skipped'] == []
    (videos / 'broken.mp4').write_bytes(
        np.random.default_rng(0).bytes(4096))
    names = sorted(p.name for p in videos.glob('0*.mp4'))
    changed, gone = videos / names[0], videos / names[1]
    os.utime(changed, ns=(0, changed.stat().st_mtime_ns + 10**9))
    gone.unlink()
    second = update_index(model, cfg, videos, index, CONFIG, checkpoint)
    assert (second['updated'], second['added'], second['removed']) == (1, 0,
                                                                       1)
    assert second['encoded'] == 2 and second['total'] == 89
    assert [s['path'] for s in second['skipped']] == ['broken.mp4']
    assert second['skipped'][0]['error']
    # An unchanged broken file is reported again but not retried.
    third = update_index(model, cfg, videos, index, CONFIG, checkpoint)
    assert third['encoded'] == 0
    assert [s['path'] for s in third['skipped']] == ['broken.mp4']
    paths = [v['path'] for v in load_index(index).videos]
    assert 'broken.mp4' not in paths and names[1] not in paths
    assert len(paths) == 89


def test_other_checkpoint_is_refused(workspace, model_cfg, test_index,
                                     tmp_path):
    model, cfg = model_cfg
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'x': 1}}, other)
    with pytest.raises(ValueError, match='--rebuild'):
        update_index(model, cfg, workspace / 'data/synthetic/videos/test',
                     test_index, CONFIG, other)


def controlled_index(model_cfg, test_index: Path, out: Path,
                     query: str) -> list[tuple[str, float]]:
    """A copy of ``test_index`` whose rows are unit vectors with chosen
    cosines to ``query``'s embedding: row i is ``c_i q + sqrt(1 - c_i^2)
    u_i`` (u_i a unit vector orthogonal to q), the c_i 90 values from 0.89
    to -0.89 in a shuffled order. Returns the (path, c_i), best first."""
    model, cfg = model_cfg
    query_emb = encode_texts(model, cfg, [query])[0].astype(np.float64)  # [D]
    index = load_index(test_index)
    rng = np.random.default_rng(0)
    cosines = rng.permutation(np.linspace(0.89, -0.89, NUM_TEST_VIDEOS))
    noise = rng.standard_normal((NUM_TEST_VIDEOS, query_emb.size))
    noise -= np.outer(noise @ query_emb, query_emb)  # orthogonal to q
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    rows = (cosines[:, None] * query_emb
            + np.sqrt(1 - cosines[:, None]**2) * noise)  # [M, D]
    meta = {k: v for k, v in index.meta.items()
            if k not in ('embeddings', 'dim')}
    save_index(out, rows.astype(np.float32), meta)
    ranked = np.argsort(-cosines)
    return [(index.videos[i]['path'], float(cosines[i])) for i in ranked]


def test_search_tool_returns_the_known_ranking_as_json(workspace, model_cfg,
                                                       test_index, tmp_path):
    """tools/search.py on an index of chosen embeddings: exactly the known
    top 5, best first, with their cosines; stdout is exactly one JSON
    document (log lines, such as the checkpoint loader's, go to stderr) and
    a word the tokenizer does not know is named in one warning line."""
    query = 'a red zebra moves left'
    index = tmp_path / 'controlled_index'
    expected = controlled_index(model_cfg, test_index, index, query)
    proc = run_tool([REPO / 'tools/search.py', index, query, '--topk', 5,
                     '--json'], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits = json.loads(proc.stdout)
    assert [h['path'] for h in hits] == [p for p, _ in expected[:5]]
    np.testing.assert_allclose([h['score'] for h in hits],
                               [c for _, c in expected[:5]], atol=1e-5)
    assert all(h['path'].endswith('.mp4') for h in hits)
    warning = [line for line in proc.stderr.splitlines()
               if line.startswith('warning:')]
    assert len(warning) == 1 and "'zebra'" in warning[0], proc.stderr


def corrupt_index_json(index: Path) -> None:
    (index / 'index.json').write_text('{"format": ')


def run_tool_in_process(load_tool, monkeypatch, capsys, tool: str,
                        args: list) -> tuple[int, str, str]:
    """A tool's main() in-process, for arguments it refuses before loading
    anything: (exit status, stdout, stderr)."""
    module = load_tool(tool)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [Path(tool).name, *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        module.main()
    out, err = capsys.readouterr()
    return stop.value.code, out, err


@pytest.mark.parametrize('args, message', [
    (['a red square', '--topk', '-5'], "--topk: must be an integer >= 1"),
    (['a red square', '--rerank-config', CONFIG],
     '--rerank-config and --rerank-checkpoint go together'),
    (['a red square', '--ef-search', '256'],
     '--ef-search applies to --engine faiss only'),
    (['a red square', '--engine', 'faiss', '--ef-search', '0'],
     '--ef-search: must be an integer >= 1'),
])
def test_search_argument_errors_are_one_line_and_exit_2(
        test_index, load_tool, monkeypatch, capsys, args, message):
    # In-process: argparse refuses them before anything is loaded (the test
    # below runs the tool for the errors found while searching).
    status, out, err = run_tool_in_process(
        load_tool, monkeypatch, capsys, 'tools/search.py',
        [test_index, *args, '--json'])
    assert status == 2 and out == ''
    assert message in err.strip().splitlines()[-1], err


def test_search_error_is_one_line_and_exits_non_zero(workspace, test_index,
                                                     tmp_path):
    """An error found while searching (here a corrupt index.json): exit 1,
    nothing on stdout, one ``error:`` line naming the fault, no
    traceback."""
    index = tmp_path / 'index'
    shutil.copytree(test_index, index)
    corrupt_index_json(index)
    proc = run_tool([REPO / 'tools/search.py', index, 'a red square',
                     '--json'], cwd=workspace)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout == ''
    assert 'error: ' in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert 'index.json: not valid JSON' in \
        proc.stderr.strip().splitlines()[-1], proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('query, message', [
    ('  ', "the query '  ' is empty"),
    ('zebra giraffe', 'the tokenizer knows none of the words'),
])
def test_search_refuses_unusable_queries(workspace, test_index, load_tool,
                                         monkeypatch, query, message):
    # In-process: search() raises the ValueError that main() prints as the
    # one error line above.
    tool = load_tool('tools/search.py')
    monkeypatch.chdir(workspace)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv',
                        ['search.py', str(test_index), query, '--json'])
    with pytest.raises(ValueError, match=re.escape(message)):
        tool.search(tool.parse_args())


def test_index_videos_batch_size_must_be_positive(workspace, checkpoint,
                                                  tmp_path, load_tool,
                                                  monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    status, _, err = run_tool_in_process(
        load_tool, monkeypatch, capsys, 'tools/index_videos.py',
        [CONFIG, checkpoint, 'data/synthetic/videos/test', tmp_path / 'index',
         '--batch-size', 0])
    assert status == 2
    assert '--batch-size: must be an integer >= 1' in err
    assert not (tmp_path / 'index').exists()


def test_nan_checkpoint_is_refused_and_nothing_is_written(
        workspace, model_cfg, tmp_path):
    model, _ = model_cfg
    # New tensors: the state dict shares the module model's storage.
    state = {name: torch.full_like(value, float('nan'))
             if value.is_floating_point() else value
             for name, value in model.state_dict().items()}
    nan_ckpt = tmp_path / 'nan.pth'
    torch.save(dict(state_dict=state), nan_ckpt)
    index = tmp_path / 'index'
    proc = run_tool([REPO / 'tools/index_videos.py', CONFIG, nan_ckpt,
                     'data/synthetic/videos/test', index, '--batch-size', 16],
                    cwd=workspace)
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith('error: 16 video(s) have embeddings that are not '
                            'finite'), proc.stderr
    assert '00000_' in error and 'Traceback' not in proc.stderr
    # Refused at the first batch, before anything is stored: no index, no
    # committed progress (the bar, now on stderr, never reached 16/90).
    assert ' 16/90,' not in proc.stderr and proc.stdout == ''
    assert not index.exists()


def test_tight_head_is_refused(model_cfg):
    _, cfg = model_cfg
    tight = cfg.model.copy()
    tight['head'] = dict(type='TightTransfHead', embed_dim=64, num_layers=1)
    model = init_retriever(dict(model=tight))
    with pytest.raises(ValueError, match='loose head'):
        encode_texts(model, cfg, ['a red square'])


def test_tight_rerank_orders_a_shortlist_by_pair_logits(workspace, model_cfg,
                                                        test_index, tmp_path):
    """search.py --rerank-config: the loose top-k re-ordered by a tightTransf
    model's logits, equal to that model's sim_matrix on each video."""
    _, cfg = model_cfg
    tight_cfg = Config.fromfile(str(CONFIG))
    tight_cfg.model.head = dict(type='TightTransfHead', embed_dim=64,
                                num_layers=1, num_heads=2, max_positions=32)
    torch.manual_seed(0)
    tight = init_retriever(tight_cfg)
    with torch.no_grad():  # a random head far from uniform attention
        tight.head.position_embeddings.weight.normal_()
    ckpt = tmp_path / 'tight.pth'
    torch.save(dict(state_dict=tight.state_dict()), ckpt)
    tight_path = tmp_path / 'tight_config.py'
    tight_cfg.dump(str(tight_path))
    query = 'a red square moves left along the top'
    proc = run_tool([REPO / 'tools/search.py', test_index, query, '--topk', 4,
                     '--rerank-config', tight_path, '--rerank-checkpoint', ckpt,
                     '--rerank-topk', 6, '--json'], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits = json.loads(proc.stdout)
    assert len(hits) == 4
    tight_scores = [h['tight_score'] for h in hits]
    assert tight_scores == sorted(tight_scores, reverse=True)
    # Each score is the tight model's own logit for that (query, video).
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        pipeline = Compose([TRANSFORMS.build(step) for step in
                            cfg.test_dataloader.dataset.pipeline])
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        for hit in hits:
            path = workspace / 'data/synthetic/videos/test' / hit['path']
            packed = pipeline(dict(filename=str(path),
                                   captions=[query]))['inputs']
            data = tight.data_preprocessor(dict(inputs=dict(
                imgs=packed['imgs'][None],
                frame_mask=packed['frame_mask'][None])))
            logit = tight.sim_matrix(packed['input_ids'],
                                     packed['attention_mask'],
                                     data['inputs']['frames'],
                                     data['inputs']['frame_mask'])[0, 0]
            assert abs(float(logit) - hit['tight_score']) < 1e-4
    finally:
        os.chdir(cwd)


def test_faiss_engine_agrees_with_exact_search_and_caches(workspace, model_cfg,
                                                          test_index):
    """The approximate HNSW engine finds (nearly) the exact top-k and caches
    its graph beside the embeddings, without pickle."""
    from mmclip4clip.apis import search_index

    model, cfg = model_cfg
    index = load_index(test_index)
    for old in test_index.glob('faiss-*.index'):
        old.unlink()
    queries = ['a red square moves left along the top',
               'a blue circle stays still at the middle centre',
               'the green triangle is moving up along the west']
    overlap = []
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        for query in queries:
            exact = search_index(model, cfg, index, query, 10)
            approx = search_index(model, cfg, index, query, 10, 'faiss',
                                  test_index)
            overlap.append(len({h['path'] for h in exact}
                               & {h['path'] for h in approx}) / 10)
            scores = [h['score'] for h in approx]
            assert scores == sorted(scores, reverse=True)
            # Scores are the same inner products as the exact ones.
            exact_scores = {h['path']: h['score'] for h in exact}
            for hit in approx:
                if hit['path'] in exact_scores:
                    assert abs(hit['score'] - exact_scores[hit['path']]) < 1e-4
    finally:
        os.chdir(cwd)
    assert np.mean(overlap) >= 0.9, overlap  # 90 videos: HNSW is near exact
    cached = list(test_index.glob('faiss-*.index'))
    assert [p.name for p in cached] == [
        f'faiss-{Path(index.meta["embeddings"]).stem}.index']
