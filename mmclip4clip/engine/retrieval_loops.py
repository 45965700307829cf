"""Evaluation loops that encode every video and every caption exactly once.

Each batch of the evaluation dataset (one sample per video, carrying all its
captions) is encoded by the model's ``predict`` mode; the embeddings of all
processes are gathered in dataset order (samples that a distributed sampler
repeated to even out the shards are dropped) and the evaluator ranks the
text x video scores in both directions. The scores are the model's
(``model.scores``): a lazy :class:`~mmclip4clip.evaluation.scores.Scores`
on the model's device, computed tile by tile as the metric ranks them (the
loose heads' ``scale * T @ V.T``, the tight head's pair logits, under the
loop's ``no_grad`` and fp16 settings), so even 100k x 100k never exists
whole.
"""
from __future__ import annotations

import torch
from mmengine.dist import all_gather_object, get_world_size
from mmengine.model import is_model_wrapper
from mmengine.runner import TestLoop, ValLoop, autocast
from mmengine.structures import BaseDataElement
from torch import Tensor

from mmclip4clip.evaluation.functional import once_each
from mmclip4clip.evaluation.scores import Scores
from mmclip4clip.registry import LOOPS


def gather_predictions(
        samples: list[BaseDataElement]) -> list[BaseDataElement]:
    """All processes' predictions, each dataset sample once, in order."""
    if get_world_size() > 1:
        samples = [s for part in all_gather_object(samples) for s in part]
    return once_each(samples, lambda sample: int(sample.sample_idx))


def build_scores(model, text_emb: Tensor, video_emb: Tensor,
                 video_mask: Tensor | None = None) -> Scores:
    """Texts x videos -> the model's lazy [N, M] scores on its device
    (``video_emb``: [M, D] embeddings, or [M, T, D] frame features with
    their [M, T] ``video_mask``)."""
    device = next(model.parameters()).device
    if video_mask is not None:
        video_mask = video_mask.to(device)
    return model.scores(text_emb.to(device), video_emb.to(device), video_mask)


def assemble_result(model, samples: list[BaseDataElement]) -> dict:
    """Per-video predictions -> the retrieval metric's input dict."""
    text_emb = torch.cat([s.text_emb for s in samples])  # [N, D]
    video_emb = torch.stack([s.video_emb for s in samples])  # [M, D] / [M, T, D]
    video_mask = torch.stack([s.video_mask for s in samples]) \
        if 'video_mask' in samples[0] else None  # [M, T], tight head only
    counts = torch.tensor([len(s.text_emb) for s in samples])
    result = dict(
        scores=build_scores(model, text_emb, video_emb, video_mask),
        text_video_index=torch.repeat_interleave(
            torch.arange(len(samples)), counts),
        video_ids=[s.video_id for s in samples],
        captions=[c for s in samples for c in s.captions])
    if all('filename' in s for s in samples):
        # The files the dataset read (data prefix + annotation path), so a
        # dump says where each video is even when its id is not a path.
        result['video_paths'] = [s.filename for s in samples]
    return result


class _RetrievalLoopMixin:
    """The shared body of :class:`RetrievalValLoop` and
    :class:`RetrievalTestLoop`; ``_stage`` is 'val' or 'test'."""

    _stage: str

    def run(self) -> dict:
        runner, stage = self.runner, self._stage
        runner.call_hook(f'before_{stage}')
        runner.call_hook(f'before_{stage}_epoch')
        runner.model.eval()
        step = getattr(runner.model, f'{stage}_step')
        samples: list[BaseDataElement] = []
        for idx, data_batch in enumerate(self.dataloader):
            runner.call_hook(f'before_{stage}_iter', batch_idx=idx,
                             data_batch=data_batch)
            with torch.no_grad(), autocast(enabled=self.fp16):
                outputs = step(data_batch)
            samples.extend(self._detach(outputs))
            runner.call_hook(f'after_{stage}_iter', batch_idx=idx,
                             data_batch=data_batch, outputs=outputs)
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        with torch.no_grad(), autocast(enabled=self.fp16):
            result = assemble_result(model, gather_predictions(samples))
        self.evaluator.process(data_samples=[result], data_batch=None)
        metrics = self.evaluator.evaluate(1)
        dataset = self.dataloader.dataset
        if getattr(dataset, 'skipped', None):  # skip_broken=True left some out
            runner.logger.warning(dataset.skip_summary())
        runner.call_hook(f'after_{stage}_epoch', metrics=metrics)
        runner.call_hook(f'after_{stage}')
        return metrics

    @staticmethod
    def _detach(outputs: list[BaseDataElement]) -> list[BaseDataElement]:
        """Keep only the CPU embeddings and the metainfo of each video
        (not ``features``, the same embeddings for mmaction2's metric)."""
        kept = []
        for sample in outputs:
            if 'video_emb' not in sample or 'text_emb' not in sample:
                raise ValueError(
                    'RetrievalValLoop / RetrievalTestLoop need the model\'s '
                    "predict to set 'video_emb' and 'text_emb' (mmclip4clip's "
                    f'CLIP4Clip); got a sample with keys {sorted(sample.keys())}'
                    '. For a model whose predict sets \'features\' (mmaction2\'s '
                    "CLIPSimilarity) use mmengine's loops, "
                    "val_cfg=dict(type='ValLoop') / test_cfg=dict(type="
                    "'TestLoop'), with RetrievalMetric (mmclip4clip's or "
                    "mmaction2's)")
            new = BaseDataElement(metainfo=sample.metainfo)
            new.video_emb = sample.video_emb.float().cpu()
            new.text_emb = sample.text_emb.float().cpu()
            if 'video_mask' in sample:
                new.video_mask = sample.video_mask.cpu()
            kept.append(new)
        return kept


@LOOPS.register_module()
class RetrievalValLoop(_RetrievalLoopMixin, ValLoop):
    """Validation loop for retrieval (see the module docstring).

    Args:
        runner, dataloader, evaluator, fp16: as :class:`mmengine.runner.ValLoop`.
    """

    _stage = 'val'


@LOOPS.register_module()
class RetrievalTestLoop(_RetrievalLoopMixin, TestLoop):
    """Test loop for retrieval (see the module docstring).

    Args:
        runner, dataloader, evaluator, fp16: as :class:`mmengine.runner.TestLoop`.
    """

    _stage = 'test'
