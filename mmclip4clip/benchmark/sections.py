"""The sections of ``tools/analysis_tools/benchmark.py``.

Each section measures one of the costs of text-video retrieval at the shapes
of CLIP4Clip with ViT-B/32 (random weights: speed does not depend on them)
and returns a JSON-ready dict. ``quick`` shrinks every size so the whole
benchmark runs in about a minute (CI runs it so it cannot rot); the figures
of a quick run are not comparable with the full ones. Where an earlier
implementation pays the same cost differently, a ``baseline`` entry gives its
figure from the same run (:mod:`.baselines`) and ``speedup`` = its time /
ours.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from time import perf_counter

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
from .data_pipeline import data_pipeline
from .measure import count_flops, median_seconds, peak_memory

FRAMES = 12  # frames per video (MSR-VTT recipe)
WORDS = 32  # caption length in tokens (MSR-VTT recipe)
EMBED_DIM = 512  # ViT-B/32's joint embedding width


def vit_b32_backbone(device: torch.device) -> CLIPBackbone:
    """CLIP ViT-B/32 shapes (transformers' CLIPConfig defaults), random."""
    torch.manual_seed(0)
    return CLIPBackbone(config=dict()).to(device)


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
                   quick: bool = False) -> dict:
    """(a) videos/s of the image tower, 12 frames at 224 px, by batch size,
    and its achieved fraction of the matrix-product peak."""
    backbone = vit_b32_backbone(device).eval()
    rows = []
    for batch in ((1, 4) if quick else (1, 4, 16)):
        frames = torch.randn(batch, FRAMES, 3, 224, 224, device=device)
        mask = torch.ones(batch, FRAMES, device=device)
        run = partial(backbone.encode_frames, frames, mask)
        with torch.no_grad():
            flops = count_flops(run)
            seconds = median_seconds(run, device, repeats=1 if quick else 3)
        rows.append(dict(batch=batch, seconds=seconds,
                         videos_per_s=batch / seconds,
                         gflop=flops / 1e9,
                         fraction_of_peak=flops / seconds / peak_flops))
        if batch == (1 if quick else 4):
            base = partial(baselines.image_features, backbone.clip, frames)
            rows[-1]['baseline'] = _baseline(run, base, seconds, device,
                                             repeats=1 if quick else 3,
                                             videos_per_s=batch)
    return dict(frames=FRAMES, image_size=224, runs=rows)


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
                  quick: bool = False) -> dict:
    """(b) texts/s for 64 captions of 32 tokens, tokenised at 32 and padded
    to CLIP's context of 77 (padding past the longest caption is cut)."""
    backbone = vit_b32_backbone(device).eval()
    num = 16 if quick else 64
    rows = []
    for context in (WORDS, 77):
        ids, mask = random_captions(num, WORDS, context, device)
        run = partial(backbone.encode_text, ids, mask)
        with torch.no_grad():
            flops = count_flops(run)
            seconds = median_seconds(run, device, repeats=1 if quick else 5)
        rows.append(dict(captions=num, tokens=WORDS, padded_to=context,
                         seconds=seconds, texts_per_s=num / seconds,
                         gflop=flops / 1e9,
                         fraction_of_peak=flops / seconds / peak_flops))
        base = partial(baselines.text_features, backbone.clip, ids, mask)
        rows[-1]['baseline'] = _baseline(run, base, seconds, device,
                                         repeats=1 if quick else 5,
                                         texts_per_s=num)
    return dict(runs=rows)


def training_step(device: torch.device, quick: bool = False) -> dict:
    """(c) one optimisation step (forward, backward, AdamW) for meanP and
    seqTransf, batch 4 videos x 12 frames with 4 captions of 32 tokens."""
    batch = 1 if quick else 4
    rows = []
    for head in ('MeanPHead', 'SeqTransfHead'):
        torch.manual_seed(0)
        head_cfg = dict(type=head)
        if head == 'SeqTransfHead':
            head_cfg.update(embed_dim=EMBED_DIM, num_layers=4)
        model = CLIP4Clip(backbone=dict(type='CLIPBackbone', config=dict()),
                          head=head_cfg).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
        ids, mask = random_captions(batch, WORDS, WORDS, device)
        inputs = dict(
            frames=torch.randn(batch, FRAMES, 3, 224, 224, device=device),
            frame_mask=torch.ones(batch, FRAMES, device=device),
            input_ids=ids, attention_mask=mask,
            text_video_index=torch.arange(batch, device=device))

        seconds = median_seconds(partial(_train_step, model, optimizer, inputs),
                                 device, repeats=1 if quick else 3)
        rows.append(dict(head=head, batch=batch, frames=FRAMES,
                         seconds=seconds))
        if head == 'MeanPHead':  # the same weights, frozen set and inputs
            clip = model.backbone.clip
            base = partial(baselines.train_step, clip, torch.optim.AdamW(
                [p for p in clip.parameters() if p.requires_grad], lr=1e-7),
                inputs['frames'], ids, mask)
            base_seconds = median_seconds(base, device,
                                          repeats=1 if quick else 3)
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
    return scale * text @ head(frames, mask).T


def loose_scoring(device: torch.device, quick: bool = False) -> dict:
    """(e) a 1000 x 1000 test scored from precomputed frame features: the
    head once per video, then one matrix product."""
    num = 100 if quick else 1000
    torch.manual_seed(0)
    text = F.normalize(torch.randn(num, EMBED_DIM, device=device), dim=-1)
    frames = torch.randn(num, FRAMES, EMBED_DIM, device=device)
    mask = torch.ones(num, FRAMES, device=device)
    heads = dict(meanP=MeanPHead(), seqLSTM=SeqLSTMHead(EMBED_DIM),
                 seqTransf=SeqTransfHead(EMBED_DIM, num_layers=4))
    rows = []
    for name, head in heads.items():
        run = partial(_loose_scores, head.to(device).eval(), text, frames,
                      mask, 100.0)
        with torch.no_grad():
            seconds = median_seconds(run, device, repeats=1 if quick else 3)
        rows.append(dict(head=name, texts=num, videos=num, seconds=seconds))
    return dict(frames=FRAMES, runs=rows)


def tight_scoring(device: torch.device, quick: bool = False,
                  large: bool = False) -> dict:
    """(g) tightTransf over every (text, video) pair at two chunk sizes:
    time and peak memory above the inputs and the head."""
    torch.manual_seed(0)
    head = TightTransfHead(EMBED_DIM, num_layers=4).to(device).eval()
    sizes = [20] if quick else [100]
    if large:
        sizes.append(1000)
    rows = []
    for num in sizes:
        text = torch.randn(num, EMBED_DIM, device=device)
        frames = torch.randn(num, FRAMES, EMBED_DIM, device=device)
        mask = torch.ones(num, FRAMES, device=device)
        for chunk in (128, 2048):
            run = partial(head.pair_logits, text, frames, mask, chunk)
            with torch.no_grad():
                head.pair_logits(text[:2], frames[:2], mask[:2], chunk)
                with peak_memory(device) as peak:
                    seconds = median_seconds(run, device, repeats=1, warmup=0)
            rows.append(dict(texts=num, videos=num, chunk_size=chunk,
                             seconds=seconds, peak_mib=peak.mib))
    return dict(frames=FRAMES, runs=rows)


def retrieval_metrics(device: torch.device, quick: bool = False) -> dict:
    """(f) exact ranks and R@K/MdR/MnR both ways for N texts x N videos:
    from a score matrix held in memory, and from embeddings (the score
    matrix computed and ranked block by block, never held whole)."""
    rows = []
    torch.manual_seed(0)
    matrix_sizes = (1000, ) if quick else (1000, 5000, 10000)
    for num in matrix_sizes:
        scores = torch.randn(num, num)
        index = torch.arange(num)
        run = partial(retrieval_ranks, scores, index)
        with peak_memory(torch.device('cpu')) as peak:
            seconds = median_seconds(run, torch.device('cpu'),
                                     repeats=1 if quick else 3)
        rows.append(dict(source='matrix', n=num, seconds=seconds,
                         peak_mib=peak.mib))
        if num <= 5000:
            base = partial(baselines.sorted_ranks, scores.numpy())
            with peak_memory(torch.device('cpu')) as base_peak:
                base_seconds = median_seconds(base, torch.device('cpu'),
                                              repeats=1 if quick else 3)
            rows[-1]['baseline'] = dict(seconds=base_seconds,
                                        speedup=base_seconds / seconds,
                                        peak_mib=base_peak.mib)
        del scores
    embedding_sizes = (1000, ) if quick else (1000, 10000, 100000)
    for num in embedding_sizes:
        text = F.normalize(torch.randn(num, EMBED_DIM, device=device), dim=-1)
        video = F.normalize(torch.randn(num, EMBED_DIM, device=device), dim=-1)
        scores = EmbeddingScores(text, video, scale=100.0)
        index = torch.arange(num)
        run = partial(retrieval_ranks, scores, index)
        with peak_memory(device) as peak:
            seconds = median_seconds(run, device, repeats=1,
                                     warmup=0 if num > 10000 else 1)
        rows.append(dict(source='embeddings', n=num, seconds=seconds,
                         peak_mib=peak.mib))
    return dict(dim=EMBED_DIM, runs=rows)


_RUNS = dict(
    video=lambda dev, peak, work_dir, quick, large: video_encoding(
        dev, peak, quick),
    text=lambda dev, peak, work_dir, quick, large: text_encoding(
        dev, peak, quick),
    train=lambda dev, peak, work_dir, quick, large: training_step(dev, quick),
    data=lambda dev, peak, work_dir, quick, large: data_pipeline(
        work_dir, quick),
    loose=lambda dev, peak, work_dir, quick, large: loose_scoring(dev, quick),
    metrics=lambda dev, peak, work_dir, quick, large: retrieval_metrics(
        dev, quick),
    tight=lambda dev, peak, work_dir, quick, large: tight_scoring(
        dev, quick, large))
SECTIONS = tuple(_RUNS)


def run_section(name: str, device: str, peak_flops: float, work_dir: str,
                quick: bool = False, tight_large: bool = False) -> dict:
    """One section by name, with its wall time; meant to run in a fresh
    process per section, so that no section's memory (or the allocator
    state it leaves) counts in the next one's peak."""
    init_default_scope('mmclip4clip')
    start = perf_counter()
    result = _RUNS[name](torch.device(device), peak_flops, Path(work_dir),
                         quick, tight_large)
    result['section_seconds'] = perf_counter() - start
    return result
