"""Time and peak memory of tightTransf scoring at a given chunk size.

    python tools/analysis_tools/tight_eval_memory.py --texts 100 --videos 100 \
        --chunk-size 1024 [--frames 12] [--dim 512] [--layers 4] [--device cpu]

Scores N texts x M videos from random features with a ViT-B-shaped head
(512 wide, 4 blocks) and prints the wall time and the peak memory above
what the inputs and the head already held: the process's resident-set
high-water mark on the CPU, the allocator's peak on CUDA. Run one chunk size
per process, since the CPU high-water mark never goes down.
"""
import argparse
import json
import resource
import time

import torch

from mmclip4clip.models.heads import TightTransfHead


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--texts', type=int, default=100)
    parser.add_argument('--videos', type=int, default=100)
    parser.add_argument('--frames', type=int, default=12)
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--layers', type=int, default=4)
    parser.add_argument('--chunk-size', type=int, required=True)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    head = TightTransfHead(args.dim, args.layers).eval().to(device)
    text = torch.randn(args.texts, args.dim, device=device)
    frames = torch.randn(args.videos, args.frames, args.dim, device=device)
    mask = torch.ones(args.videos, args.frames, device=device)
    with torch.no_grad():  # warm-up on a few pairs
        head.pair_logits(text[:2], frames[:2], mask[:2], args.chunk_size)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_peak_mib()
    start = time.perf_counter()
    with torch.no_grad():
        scores = head.pair_logits(text, frames, mask, args.chunk_size)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = rss_peak_mib() - base
    print(json.dumps(dict(
        texts=args.texts, videos=args.videos, pairs=args.texts * args.videos,
        chunk_size=args.chunk_size, seconds=round(time.perf_counter() - start, 3),
        peak_mib_above_inputs=round(peak, 1), finite=bool(scores.isfinite().all()),
        threads=torch.get_num_threads())))


if __name__ == '__main__':
    main()
