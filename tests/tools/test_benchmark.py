"""tools/analysis_tools/benchmark.py runs every section (``--tiny``: the
same code on a tiny CLIP, as CI runs it so the benchmark cannot rot) and
writes sane figures; ``--quick`` and the full run keep ViT-B/32 shapes."""
import importlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools/analysis_tools/benchmark.py'


def import_benchmarks() -> ModuleType:
    """The sections package beside the tool, under the name the tool imports
    it by (``benchmarks``), without putting its folder on ``sys.path``."""
    if 'benchmarks' not in sys.modules:
        folder = TOOL.parent / 'benchmarks'
        spec = importlib.util.spec_from_file_location(
            'benchmarks', folder / '__init__.py',
            submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules['benchmarks'] = module
        spec.loader.exec_module(module)
    return sys.modules['benchmarks']


benchmarks = import_benchmarks()
peak_memory = benchmarks.peak_memory
BIG_BATCH_SIZES = importlib.import_module('benchmarks.big_batch').BIG_BATCH_SIZES
search_largest = importlib.import_module('benchmarks.big_batch').search_largest


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_tiny_benchmark_runs_every_section(tmp_path):
    out = tmp_path / 'result.json'
    proc = subprocess.run(
        [sys.executable, str(TOOL), '--tiny', '--out', str(out),
         '--work-dir', str(tmp_path / 'clips')],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['sizes'] == 'tiny' and result['quick'] is False
    assert positive(result['matmul']['fp32_flops_per_s'])
    tiny = benchmarks.TINY
    assert result['video']['frames'] == tiny.frames
    assert [run['batch'] for run in result['video']['runs']] == list(
        tiny.video_batches)
    for run in result['video']['runs']:
        assert positive(run['videos_per_s'])
        assert 0 < run['fraction_of_peak'] < 2  # FLOPs were counted
    for run in result['text']['runs']:
        assert positive(run['texts_per_s'])
    # Padding past the longest caption is cut: the same FLOPs at 32 and 77.
    padded = {run['padded_to']: run['gflop'] for run in result['text']['runs']}
    assert math.isclose(padded[32], padded[77])
    assert {run['head'] for run in result['train']['runs']} == {
        'MeanPHead', 'SeqTransfHead'}
    assert {run['head'] for run in result['loose']['runs']} == {
        'meanP', 'seqLSTM', 'seqTransf'}
    # Beside ours, the earlier implementations' way on the same weights:
    # transformers' forward gives the same features (so the comparison is
    # of equal work), the original's full sorts the same ranks' costs.
    baselines = [run['baseline'] for section in ('video', 'text', 'train')
                 for run in result[section]['runs'] if 'baseline' in run]
    baselines += [run['baseline'] for run in result['metrics']['runs']
                  if run['source'] == 'matrix']
    assert len(baselines) == 5
    assert all(positive(base['speedup']) for base in baselines)
    assert all(base['max_abs_diff'] < 1e-3 for base in baselines
               if 'max_abs_diff' in base)
    width, height = tiny.clip_size
    assert {(run['clips'], run['workers']) for run in result['data']['runs']
            } == {(c, w) for c in (f'30fps {width}x{height}',
                                   f'3fps {tiny.image_size}')
                  for w in (0, 1, 2)}
    assert all(positive(run['speedup']) for run in result['data']['runs'])
    assert {run['source'] for run in result['metrics']['runs']} == {
        'matrix', 'embeddings'}
    # More pairs than the smaller chunk holds: chunking is exercised.
    assert {run['chunk_size'] for run in result['tight']['runs']} == {128, 2048}
    assert all(run['texts'] * run['videos'] > 128
               for run in result['tight']['runs'])
    check_big_batch(result['bigbatch'])
    check_search(result['search'])
    check_indexing(result['indexing'])


def check_search(section: dict) -> None:
    """Exact search is the brute-force ranking; faiss finds (on a tiny
    index, nearly exhaustively) the same top 10 and each stored vector
    first; search_index = encode_query + search_embedding."""
    tiny = benchmarks.TINY
    assert positive(section['text']['encode_query']['median_ms'])
    assert positive(section['text']['load_tokenizer']['median_ms'])
    assert [run['n'] for run in section['runs']] == list(tiny.search_sizes)
    for run in section['runs']:
        assert run['dim'] == tiny.embed_dim
        exact, approx = run['exact'], run['faiss']
        assert exact['max_score_diff'] < 1e-5 and exact['same_rows'] == 1.0
        assert 0.9 <= approx['recall_at_10'] <= 1.0
        assert approx['stored_vector_top1'] == 1.0
        assert positive(approx['build_s']) and positive(approx['cache_mib'])
        for engine in (exact, approx):
            latency = engine['latency']
            assert latency['calls'] == tiny.search_queries
            assert positive(latency['median_ms'])
            assert latency['median_ms'] <= latency['p99_ms']
            assert engine['search_index']['same_as_search_embedding']
            assert engine['search_index']['calls'] == tiny.search_calls
        # Recall per search depth, on random and on clustered vectors (a
        # depth past the index's size is exhaustive); clustered vectors
        # are closer to their queries than random ones.
        clustered = run['clustered']
        for by_depth in (approx['ef'], clustered['ef']):
            depths = sorted(by_depth, key=int)
            assert 128 in map(int, depths), depths  # the default
            recalls = [by_depth[d]['recall_at_10'] for d in depths]
            assert all(0 <= r <= 1 for r in recalls)
            assert recalls[-1] == 1.0
            assert all(positive(by_depth[d]['latency']['median_ms'])
                       for d in depths)
        assert positive(clustered['build_s'])
        assert clustered['top1_cosine'] > approx['top1_cosine']
        assert clustered['top1_cosine'] >= clustered['top10_cosine']


def check_indexing(section: dict) -> None:
    """index_videos.py in 1 and 2 processes indexes every clip, and the
    2-process index is the 1-process one."""
    tiny = benchmarks.TINY
    runs = section['runs']
    assert [(r['processes'], r['threads_per_process']) for r in runs] == list(
        tiny.index_configurations)
    for run in runs:
        assert run['videos'] == tiny.index_clips and run['same_index']
        assert positive(run['videos_per_s'])
        assert run['startup_s'] is None  # no reruns at tiny sizes


def check_big_batch(section: dict) -> None:
    """Every batch plain and in each smaller micro-batch, without and with
    with_cp; ratios to the plain step of the same batch; the same loss."""
    sizes = BIG_BATCH_SIZES['tiny']
    assert section['frames'] == sizes.frames  # on the CPU
    assert 'largest_batch' not in section  # CUDA only
    assert 'plain step' in section['comparable']
    runs = section['runs']
    assert [(r['batch'], r['with_cp'], r['micro_batch_size']) for r in runs
            ] == [(b, cp, m) for b in sizes.batches for cp in (False, True)
                  for m in (None, *[m for m in sizes.micro_batches if m < b])]
    assert any(r['micro_batch_size'] for r in runs)
    for run in runs:
        assert run['out_of_memory'] is False
        assert positive(run['seconds']) and positive(run['time_ratio'])
        assert run['loss_diff'] < 1e-5 * run['loss']
        plain = next(r for r in runs if r['batch'] == run['batch'])
        assert math.isclose(run['time_ratio'],
                            run['seconds'] / plain['seconds'])
        if plain['peak_mib'] > 0:
            assert math.isclose(run['memory_ratio'],
                                run['peak_mib'] / plain['peak_mib'])
        assert math.isclose(run['peak_above_grads_mib'],
                            run['peak_mib'] - section['grads_mib'])
    assert runs[0]['time_ratio'] == 1.0 and runs[0]['loss_diff'] == 0.0
    # Micro-batched steps against the plain steps of their micro-batch.
    own = {(s['micro_batch_size'], s['with_cp']): s
           for s in section['micro_steps']}
    assert set(own) == {(m, cp) for m in sizes.micro_batches
                        for cp in (False, True)}
    for run in runs:
        if run['micro_batch_size'] is None:
            assert 'time_vs_micro_steps' not in run
            continue
        step = own[run['micro_batch_size'], run['with_cp']]
        k = math.ceil(run['batch'] / run['micro_batch_size'])
        assert math.isclose(run['time_vs_micro_steps'],
                            run['seconds'] / (k * step['seconds']))
        if step['peak_mib'] > 0:
            assert math.isclose(run['memory_vs_micro_step'],
                                run['peak_mib'] / step['peak_mib'])
    # On the CPU, the run's own frames: a micro-batched step against the
    # plain step of its micro-batch.
    recipe = section['recipe_frames']
    assert (recipe['frames'], recipe['batch'], recipe['micro_batch_size']
            ) == (benchmarks.TINY.frames, sizes.recipe_batch,
                  sizes.recipe_micro_batch)
    assert [run['with_cp'] for run in recipe['runs']] == [False, True]
    k = math.ceil(sizes.recipe_batch / sizes.recipe_micro_batch)
    for run in recipe['runs']:
        own, step = run['micro_step'], run['micro_batched']
        assert positive(own['seconds']) and positive(step['seconds'])
        assert math.isclose(run['time_vs_micro_steps'],
                            step['seconds'] / (k * own['seconds']))
        if own['peak_mib'] > 0:
            assert math.isclose(run['memory_vs_micro_step'],
                                step['peak_mib'] / own['peak_mib'])
    # with_cp changes neither loss.
    assert recipe['runs'][0]['micro_batched']['loss'] == pytest.approx(
        recipe['runs'][1]['micro_batched']['loss'], rel=1e-5)


@pytest.mark.parametrize('fits_up_to,expected', [
    (100, (96, 104)),  # doubled to 128, bisected to within 8
    (5000, (4096, None)),  # the limit fits: nothing failed
    (10, (None, 16)),  # the first batch is too large
    (16, (16, 24)),
])
def test_largest_batch_search(fits_up_to, expected):
    tried = []

    def try_batch(batch):
        tried.append(batch)
        return dict(batch=batch) if batch <= fits_up_to else None

    best, failed = search_largest(try_batch, start=16, limit=4096, step=8)
    assert (best and best['batch'], failed) == expected
    assert len(tried) == len(set(tried)) <= 13
    if failed is not None and best is not None:
        assert best['batch'] <= fits_up_to < failed <= best['batch'] + 8


def test_quick_and_full_runs_keep_vit_b32_shapes(load_tool):
    """The tiny run checks the mechanics; --quick (as the README gives it)
    still parses and plans every section at CLIP4Clip's ViT-B/32 shapes,
    only fewer of everything than the full run."""
    tool = load_tool('tools/analysis_tools/benchmark.py')
    args = tool.parse_args(['--quick', '--out', 'quick.json'])
    assert args.quick and not args.tiny
    assert args.sections == list(benchmarks.SECTIONS)
    assert set(benchmarks.SECTIONS) == {
        'video', 'text', 'train', 'data', 'loose', 'metrics', 'tight',
        'bigbatch', 'search', 'indexing'}
    quick, full = benchmarks.QUICK, benchmarks.FULL
    assert benchmarks.SIZES == dict(full=full, quick=quick,
                                    tiny=benchmarks.TINY)
    for sizes in (quick, full):
        assert sizes.clip == {}  # transformers' CLIPConfig: ViT-B/32
        assert (sizes.embed_dim, sizes.image_size, sizes.frames,
                sizes.head_layers) == (512, 224, 12, 4)
        assert sizes.baseline_batch in sizes.video_batches
    assert quick.video_batches == (1, 4)
    assert full.video_batches == (1, 4, 16)
    assert quick.repeats == 1 and full.repeats == 3
    # The search section's indexes: 10k / 100k / 1M ViT-B/32 embeddings.
    assert full.search_sizes == (10_000, 100_000, 1_000_000)
    assert quick.search_sizes == (10_000, )
    assert (1, 1) in full.index_configurations and (
        2, 1) in full.index_configurations
    # The big-batch grid: the recipe's global batches on a CPU's few frames.
    grid = BIG_BATCH_SIZES['full']
    assert grid.batches == (16, 32, 64) and grid.frames == 2
    assert set(BIG_BATCH_SIZES) == set(benchmarks.SIZES)
    for name, sizes in BIG_BATCH_SIZES.items():
        assert all(any(m < b for b in sizes.batches)
                   for m in sizes.micro_batches), name
        assert sizes.search_micro_batch >= 1 and (
            sizes.search_start <= sizes.search_limit), name
    with pytest.raises(SystemExit):
        tool.parse_args(['--quick', '--tiny', '--out', 'x.json'])


def test_peak_memory_sees_a_large_allocation():
    import torch

    with peak_memory(torch.device('cpu')) as peak:
        block = torch.ones(64, 2**20)  # 256 MiB, touched
        del block
    assert 200 < peak.mib < 400
