"""The sections of ``tools/analysis_tools/benchmark.py``.

Each section measures one of the costs of text-video retrieval at the shapes
of CLIP4Clip with ViT-B/32 (random weights: speed does not depend on them)
and returns a JSON-ready dict. Its sizes come from a :class:`Sizes`:
``FULL`` (the benchmark), ``QUICK`` (every size shrunk) or
``TINY`` (a tiny CLIP and a few of everything: the tests run it so
the benchmark cannot rot); the figures of the small runs are not comparable
with the full ones. Where an earlier
implementation pays the same cost differently, a ``baseline`` entry gives its
figure from the same run (:mod:`.baselines`) and ``speedup`` = its time /
ours.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import perf_counter
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope

from mmclip4clip.evaluation.functional import retrieval_ranks
from mmclip4clip.evaluation.scores import EmbeddingScores
from mmclip4clip.models.backbones.clip import CLIPBackbone
from mmclip4clip.models.heads import (
    MeanPHead,
    SeqLSTMHead,
    SeqTransfHead,
    TightTransfHead,
)
from mmclip4clip.models.retrievers import CLIP4Clip

from . import baselines
from .big_batch import big_batch
from .data_pipeline import data_pipeline
from .indexing import index_build_rate
from .measure import count_flops, median_seconds, peak_memory
from .search import search_latency

FRAMES = 12  # frames per video (MSR-VTT recipe)
WORDS = 32  # caption length in tokens (MSR-VTT recipe)
EMBED_DIM = 512  # ViT-B/32's joint embedding width

# CLIP's vocabulary and text context, 64-wide towers of 2 layers, 32-px
# frames in 16 patches.
TINY_CLIP = dict(
    projection_dim=64,
    text_config=dict(hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=2),
    vision_config=dict(image_size=32, patch_size=8, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2))


@dataclass(frozen=True)
class Sizes:
    """Every size of one benchmark run (``FULL``, ``QUICK`` or ``TINY``)."""

    name: str
    # The model: a transformers CLIPConfig ({}: ViT-B/32), its joint
    # embedding width and input shapes.
    clip: dict = field(default_factory=dict)
    embed_dim: int = EMBED_DIM
    image_size: int = 224
    frames: int = FRAMES
    head_layers: int = 4  # seqTransf / tightTransf
    # Timed runs per measurement, after one warm-up (text: its own).
    repeats: int = 3
    text_repeats: int = 5
    matmul_size: int = 4096  # the fp32 matrix-product peak's matrices
    video_batches: tuple[int, ...] = (1, 4, 16)
    baseline_batch: int = 4  # the video batch timed against transformers
    captions: int = 64
    train_batch: int = 4
    loose_size: int = 1000  # texts = videos scored from frame features
    tight_sizes: tuple[int, ...] = (100, )  # --tight-large adds 1000
    matrix_sizes: tuple[int, ...] = (1000, 5000, 10000)
    embedding_sizes: tuple[int, ...] = (1000, 10000, 100000)
    # The data section: generated clips, seconds and size of each.
    clips: int = 16
    clip_seconds: int = 10
    clip_size: tuple[int, int] = (640, 360)
    # The search section: index sizes (random unit vectors of embed_dim),
    # timed queries per engine and size (after search_warmup of them), and
    # search_index calls (text to top 10) per engine and size.
    search_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    search_queries: int = 100
    search_warmup: int = 5
    search_calls: int = 10
    # The indexing section: synthetic clips per index, repeats of each
    # (processes, threads per process) configuration, and whether a rerun
    # on the finished index times the start-up every run pays.
    index_clips: int = 2880
    index_repeats: int = 3
    index_startup: bool = True
    index_configurations: tuple[tuple[int, int], ...] = ((1, 1), (2, 1),
                                                         (1, 2))


FULL = Sizes('full')
QUICK = Sizes('quick', repeats=1, text_repeats=1, matmul_size=2048,
              video_batches=(1, 4), baseline_batch=1, captions=16,
              train_batch=1, loose_size=100, tight_sizes=(20, ),
              matrix_sizes=(1000, ), embedding_sizes=(1000, ), clips=3,
              clip_seconds=4, search_sizes=(10_000, ), search_queries=20,
              search_calls=3, index_clips=360, index_repeats=1)
TINY = Sizes('tiny', clip=TINY_CLIP, embed_dim=64, image_size=32, frames=4,
             head_layers=1, repeats=1, text_repeats=1, matmul_size=512,
             video_batches=(1, 2), baseline_batch=1, captions=4,
             train_batch=2, loose_size=8, tight_sizes=(20, ),
             matrix_sizes=(50, ), embedding_sizes=(50, ), clips=2,
             clip_seconds=2, clip_size=(160, 90), search_sizes=(200, ),
             search_queries=5, search_warmup=1, search_calls=2,
             index_clips=8, index_repeats=1, index_startup=False,
             index_configurations=((1, 1), (2, 1)))
SIZES = {sizes.name: sizes for sizes in (FULL, QUICK, TINY)}


def random_backbone(sizes: Sizes, device: torch.device) -> CLIPBackbone:
    """A CLIP of the run's shapes (``FULL``: ViT-B/32), random weights."""
    torch.manual_seed(0)
    return CLIPBackbone(config=copy.deepcopy(sizes.clip)).to(device)


def random_captions(num: int, length: int, context: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` token sequences of ``length`` tokens (SOT ... EOT) padded to
    ``context``: ids and attention mask, [num, context]."""
    ids = torch.zeros(num, context, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1:length - 1] = torch.randint(1, 49000, (num, length - 2))
    ids[:, length - 1] = 49407
    mask = torch.zeros_like(ids)
    mask[:, :length] = 1
    return ids.to(device), mask.to(device)


def video_encoding(device: torch.device, peak_flops: float,
                   sizes: Sizes = FULL) -> dict:
    """(a) videos/s of the image tower, 12 frames at 224 px, by batch size,
    and its achieved fraction of the matrix-product peak."""
    backbone = random_backbone(sizes, device).eval()
    px = sizes.image_size
    rows = []
    for batch in sizes.video_batches:
        frames = torch.randn(batch, sizes.frames, 3, px, px, device=device)
        mask = torch.ones(batch, sizes.frames, device=device)
        run = partial(backbone.encode_frames, frames, mask)
        with torch.no_grad():
            flops = count_flops(run)
            seconds = median_seconds(run, device, repeats=sizes.repeats)
        rows.append(dict(batch=batch, seconds=seconds,
                         videos_per_s=batch / seconds,
                         gflop=flops / 1e9,
                         fraction_of_peak=flops / seconds / peak_flops))
        if batch == sizes.baseline_batch:
            base = partial(baselines.image_features, backbone.clip, frames)
            rows[-1]['baseline'] = _baseline(run, base, seconds, device,
                                             repeats=sizes.repeats,
                                             videos_per_s=batch)
    return dict(frames=sizes.frames, image_size=px, runs=rows)


def _baseline(ours, theirs, our_seconds: float, device: torch.device,
              repeats: int, **per_s: int) -> dict:
    """Time ``theirs`` as ours was timed; the largest difference of the
    two outputs shows they compute the same thing."""
    with torch.no_grad():
        seconds = median_seconds(theirs, device, repeats=repeats)
        diff = (ours() - theirs()).abs().max().item()
    row = dict(seconds=seconds, speedup=seconds / our_seconds,
               max_abs_diff=diff)
    row.update({name: count / seconds for name, count in per_s.items()})
    return row


def text_encoding(device: torch.device, peak_flops: float,
                  sizes: Sizes = FULL) -> dict:
    """(b) texts/s for 64 captions of 32 tokens, tokenised at 32 and padded
    to CLIP's context of 77 (padding past the longest caption is cut)."""
    backbone = random_backbone(sizes, device).eval()
    num = sizes.captions
    rows = []
    for context in (WORDS, 77):
        ids, mask = random_captions(num, WORDS, context, device)
        run = partial(backbone.encode_text, ids, mask)
        with torch.no_grad():
            flops = count_flops(run)
            seconds = median_seconds(run, device, repeats=sizes.text_repeats)
        rows.append(dict(captions=num, tokens=WORDS, padded_to=context,
                         seconds=seconds, texts_per_s=num / seconds,
                         gflop=flops / 1e9,
                         fraction_of_peak=flops / seconds / peak_flops))
        base = partial(baselines.text_features, backbone.clip, ids, mask)
        rows[-1]['baseline'] = _baseline(run, base, seconds, device,
                                         repeats=sizes.text_repeats,
                                         texts_per_s=num)
    return dict(runs=rows)


def training_step(device: torch.device, sizes: Sizes = FULL) -> dict:
    """(c) one optimisation step (forward, backward, AdamW) for meanP and
    seqTransf, batch 4 videos x 12 frames with 4 captions of 32 tokens."""
    batch, frames, px = sizes.train_batch, sizes.frames, sizes.image_size
    rows = []
    for head in ('MeanPHead', 'SeqTransfHead'):
        torch.manual_seed(0)
        head_cfg = dict(type=head)
        if head == 'SeqTransfHead':
            head_cfg.update(embed_dim=sizes.embed_dim,
                            num_layers=sizes.head_layers)
        model = CLIP4Clip(backbone=dict(type='CLIPBackbone',
                                        config=copy.deepcopy(sizes.clip)),
                          head=head_cfg).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
        ids, mask = random_captions(batch, WORDS, WORDS, device)
        inputs = dict(
            frames=torch.randn(batch, frames, 3, px, px, device=device),
            frame_mask=torch.ones(batch, frames, device=device),
            input_ids=ids, attention_mask=mask,
            text_video_index=torch.arange(batch, device=device))

        seconds = median_seconds(partial(_train_step, model, optimizer, inputs),
                                 device, repeats=sizes.repeats)
        rows.append(dict(head=head, batch=batch, frames=frames,
                         seconds=seconds))
        if head == 'MeanPHead':  # the same weights, frozen set and inputs
            clip = model.backbone.clip
            base = partial(baselines.train_step, clip, torch.optim.AdamW(
                [p for p in clip.parameters() if p.requires_grad], lr=1e-7),
                inputs['frames'], ids, mask)
            base_seconds = median_seconds(base, device, repeats=sizes.repeats)
            rows[-1]['baseline'] = dict(seconds=base_seconds,
                                        speedup=base_seconds / seconds)
        del model, optimizer
    return dict(runs=rows)


def _train_step(model: CLIP4Clip, optimizer: torch.optim.Optimizer,
                inputs: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    model.loss(inputs)['loss'].backward()
    optimizer.step()


def _loose_scores(head: torch.nn.Module, text: torch.Tensor,
                  frames: torch.Tensor, mask: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """The head once per video, then one product: [N, M] logits."""
    return head.scores(text, head.embed_video(frames, mask), mask,
                       scale).full()


def loose_scoring(device: torch.device, sizes: Sizes = FULL) -> dict:
    """(e) a 1000 x 1000 test scored from precomputed frame features: the
    head once per video, then one matrix product."""
    num, dim = sizes.loose_size, sizes.embed_dim
    torch.manual_seed(0)
    text = F.normalize(torch.randn(num, dim, device=device), dim=-1)
    frames = torch.randn(num, sizes.frames, dim, device=device)
    mask = torch.ones(num, sizes.frames, device=device)
    heads = dict(meanP=MeanPHead(), seqLSTM=SeqLSTMHead(dim),
                 seqTransf=SeqTransfHead(dim, num_layers=sizes.head_layers))
    rows = []
    for name, head in heads.items():
        run = partial(_loose_scores, head.to(device).eval(), text, frames,
                      mask, 100.0)
        with torch.no_grad():
            seconds = median_seconds(run, device, repeats=sizes.repeats)
        rows.append(dict(head=name, texts=num, videos=num, seconds=seconds))
    return dict(frames=sizes.frames, runs=rows)


def tight_scoring(device: torch.device, sizes: Sizes = FULL,
                  large: bool = False) -> dict:
    """(g) tightTransf over every (text, video) pair at two chunk sizes:
    time and peak memory above the inputs and the head."""
    torch.manual_seed(0)
    dim, num_frames = sizes.embed_dim, sizes.frames
    head = TightTransfHead(dim, num_layers=sizes.head_layers).to(device).eval()
    nums = list(sizes.tight_sizes)
    if large:
        nums.append(1000)
    rows = []
    for num in nums:
        text = torch.randn(num, dim, device=device)
        frames = torch.randn(num, num_frames, dim, device=device)
        mask = torch.ones(num, num_frames, device=device)
        for chunk in (128, 2048):
            run = partial(head.pair_logits, text, frames, mask, chunk)
            with torch.no_grad():
                head.pair_logits(text[:2], frames[:2], mask[:2], chunk)
                with peak_memory(device) as peak:
                    seconds = median_seconds(run, device, repeats=1, warmup=0)
            rows.append(dict(texts=num, videos=num, chunk_size=chunk,
                             seconds=seconds, peak_mib=peak.mib))
    return dict(frames=num_frames, runs=rows)


def retrieval_metrics(device: torch.device, sizes: Sizes = FULL) -> dict:
    """(f) exact ranks and R@K/MdR/MnR both ways for N texts x N videos:
    from a score matrix held in memory, and from embeddings (the score
    matrix computed and ranked block by block, never held whole)."""
    rows = []
    torch.manual_seed(0)
    for num in sizes.matrix_sizes:
        scores = torch.randn(num, num)
        index = torch.arange(num)
        run = partial(retrieval_ranks, scores, index)
        with peak_memory(torch.device('cpu')) as peak:
            seconds = median_seconds(run, torch.device('cpu'),
                                     repeats=sizes.repeats)
        rows.append(dict(source='matrix', n=num, seconds=seconds,
                         peak_mib=peak.mib))
        if num <= 5000:
            base = partial(baselines.sorted_ranks, scores.numpy())
            with peak_memory(torch.device('cpu')) as base_peak:
                base_seconds = median_seconds(base, torch.device('cpu'),
                                              repeats=sizes.repeats)
            rows[-1]['baseline'] = dict(seconds=base_seconds,
                                        speedup=base_seconds / seconds,
                                        peak_mib=base_peak.mib)
        del scores
    dim = sizes.embed_dim
    for num in sizes.embedding_sizes:
        text = F.normalize(torch.randn(num, dim, device=device), dim=-1)
        video = F.normalize(torch.randn(num, dim, device=device), dim=-1)
        scores = EmbeddingScores(text, video, scale=100.0)
        index = torch.arange(num)
        run = partial(retrieval_ranks, scores, index)
        with peak_memory(device) as peak:
            seconds = median_seconds(run, device, repeats=1,
                                     warmup=0 if num > 10000 else 1)
        rows.append(dict(source='embeddings', n=num, seconds=seconds,
                         peak_mib=peak.mib))
    return dict(dim=dim, runs=rows)


# Each section from the run's settings ``run``: device, peak_flops,
# work_dir, sizes and tight_large (see run_section).
_RUNS = dict(
    video=lambda run: video_encoding(run.device, run.peak_flops, run.sizes),
    text=lambda run: text_encoding(run.device, run.peak_flops, run.sizes),
    train=lambda run: training_step(run.device, run.sizes),
    data=lambda run: data_pipeline(
        run.work_dir, num=run.sizes.clips, seconds=run.sizes.clip_seconds,
        size=run.sizes.clip_size, frames=run.sizes.frames,
        image_size=run.sizes.image_size),
    loose=lambda run: loose_scoring(run.device, run.sizes),
    metrics=lambda run: retrieval_metrics(run.device, run.sizes),
    tight=lambda run: tight_scoring(run.device, run.sizes, run.tight_large),
    bigbatch=lambda run: big_batch(run.device, run.sizes),
    search=lambda run: search_latency(run.device, run.sizes, run.work_dir,
                                      max_words=WORDS),
    indexing=lambda run: index_build_rate(
        run.work_dir, run.sizes.index_clips, run.sizes.index_repeats,
        run.sizes.index_configurations, run.sizes.index_startup))
SECTIONS = tuple(_RUNS)


def run_section(name: str, device: str, peak_flops: float, work_dir: str,
                sizes: str = 'full', tight_large: bool = False) -> dict:
    """One section by name at the named :data:`SIZES`, with its wall time;
    meant to run in a fresh process per section, so that no section's
    memory (or the allocator state it leaves) counts in the next one's
    peak."""
    init_default_scope('mmclip4clip')
    start = perf_counter()
    result = _RUNS[name](SimpleNamespace(
        device=torch.device(device), peak_flops=peak_flops,
        work_dir=Path(work_dir), sizes=SIZES[sizes], tight_large=tight_large))
    result['section_seconds'] = perf_counter() - start
    return result
