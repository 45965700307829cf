"""Measure the costs of text-video retrieval on this machine.

    python tools/analysis_tools/benchmark.py --out result.json \
        [--device cpu|cuda] [--quick | --tiny] [--sections video text ...] \
        [--tight-large] [--work-dir DIR]

Sections (medians over repeats after warm-up; ViT-B/32 shapes, 12 frames,
random weights), after the machine's fp32 matrix-product peak (always
measured: the towers' fractions are of it):
``video`` (videos/s, batch 1/4/16, and the fraction of that peak),
``text`` (64 captions of 32 tokens), ``train`` (one meanP / seqTransf step,
batch 4), ``data`` (decode + sample + resize, 0/1/2 workers, vs OpenCV
seeking), ``loose`` (1000 x 1000 scores from frame features per head),
``metrics`` (exact ranks, N = 1k..100k, time and peak memory), ``tight``
(tightTransf 100 x 100 pairs at two chunk sizes; ``--tight-large`` adds
1000 x 1000), ``bigbatch`` (seqTransf steps at global batch 16/32/64,
plain and in micro-batches of 4/8/16, without and with ``with_cp``: time
and peak memory as ratios to the plain step; on a CPU 2 frames per video,
plus batch 64 in micro-batches of 8 at 12 frames against a plain step of 8;
on CUDA also the largest batch of 12-frame videos that fits, plain and
micro-batched with ``with_cp``), ``search`` (one text query against
indexes of 10k / 100k / 1M random unit vectors, exact and faiss: median
and p99 latency, faiss build time, memory and recall@10 against exact, the
query's encoding apart), ``indexing`` (``tools/index_videos.py`` on
synthetic clips with the tiny synthetic model, videos/s with 1 process and
with 2 under torchrun, 1 thread each, and 1 process of 2 threads). Each
section runs in a fresh process. Beside ours,
``baseline`` entries time the earlier implementations' way on the same
weights in the same run (transformers' CLIP forward for the towers and a
training step, the original's full sorts for metrics; OpenCV seeking for
data). ``--quick`` shrinks every size (its figures are not the
benchmark's); ``--tiny`` runs every section on a tiny random CLIP and a few
inputs (the tests run it to check that every section
still works). Prints each section as it finishes and writes all
of them to ``--out``.
"""
import argparse
import json
import multiprocessing
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# The sections: a package beside this script (tooling, not the library);
# Python puts this folder first on sys.path when it runs the script.
import benchmarks
import torch

SECTIONS = benchmarks.SECTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='result JSON file')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    small = parser.add_mutually_exclusive_group()
    small.add_argument('--quick', action='store_true',
                       help='small sizes, to check that it runs')
    small.add_argument('--tiny', action='store_true',
                       help='a tiny CLIP and a few inputs: checks that '
                       'every section runs, in seconds')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS,
                        default=list(SECTIONS))
    parser.add_argument('--tight-large', action='store_true',
                        help='also score 1000 x 1000 tightTransf pairs '
                        '(100 times the pairs of the 100 x 100 run)')
    parser.add_argument('--work-dir', help='where the generated clips go '
                        '(default: a temporary directory)')
    return parser.parse_args(argv)


def machine(device: torch.device) -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor(),
                torch=torch.__version__, threads=torch.get_num_threads(),
                device=str(device))
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda, but CUDA is not available')
    sizes = 'quick' if args.quick else 'tiny' if args.tiny else 'full'
    result = dict(machine=machine(device), quick=args.quick, sizes=sizes)
    peak = benchmarks.matmul_peak_flops(
        device, size=benchmarks.SIZES[sizes].matmul_size)
    result['matmul'] = dict(fp32_flops_per_s=peak)
    print(f'matmul: {peak / 1e9:.1f} GFLOP/s (fp32)', flush=True)
    # On a CPU, sections fork from a server that has imported the package
    # and run nothing: each starts clean without paying the imports again.
    # CUDA cannot start in a forked child once imports have touched it.
    if device.type == 'cuda':
        fresh = multiprocessing.get_context('spawn')
    else:
        fresh = multiprocessing.get_context('forkserver')
        fresh.set_forkserver_preload(['benchmarks'])
    with tempfile.TemporaryDirectory() as tmp:
        for name in SECTIONS:
            if name not in args.sections:
                continue
            # A fresh process per section: no section's memory, or the
            # allocator state it leaves behind, counts in the next one's peak.
            with ProcessPoolExecutor(1, mp_context=fresh) as pool:
                result[name] = pool.submit(
                    benchmarks.run_section, name, args.device, peak,
                    args.work_dir or tmp, sizes, args.tight_large).result()
            print(f'{name}: ' + json.dumps(result[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
