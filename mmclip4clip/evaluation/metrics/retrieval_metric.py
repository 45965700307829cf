"""Text-video retrieval metric over one full score matrix (spec section 7)."""
import os
import os.path as osp
import pickle
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.dist import broadcast_object_list, is_main_process
from mmengine.evaluator import BaseMetric
from torch import Tensor

from mmclip4clip.registry import METRICS
from mmclip4clip.utils import atomic_write

from ..functional import (
    dual_softmax,
    querybank_norm,
    rank_metrics,
    retrieval_ranks,
)
from ..scores import EmbeddingScores, full_scores


def _both_directions(t2v: Tensor, v2t: Tensor) -> dict[str, float]:
    """``t2v/R1`` ... ``v2t/MnR`` from the ranks of both directions."""
    return {
        f'{direction}/{key}': value
        for direction, ranks in (('t2v', t2v), ('v2t', v2t))
        for key, value in rank_metrics(ranks).items()
    }


@METRICS.register_module()
class RetrievalMetric(BaseMetric):
    """Exact R@1/5/10, MdR and MnR, text-to-video and video-to-text.

    The evaluation loop encodes the whole test set once and calls ``process``
    once with a single result dict:

    - ``scores``: float Tensor [N_text, M_video], rows = captions, or an
      :class:`EmbeddingScores` (the loose heads' ``scale * T @ V.T``), which
      is ranked block by block without ever holding the whole matrix; DSL,
      QB-Norm and ``dump_file`` need the whole matrix and compute it.
    - ``text_video_index``: long Tensor [N_text], column of each caption's video.
    - ``video_ids``: list of M_video str.
    - ``captions``: list of N_text str.
    - ``video_paths`` (optional, only dumped): list of M_video str, the
      file of each video as the dataset resolved it.

    Ranks follow spec section 7: ties do not push the ground truth down, a NaN
    or inf score is an error naming the query, and a video with several
    captions is one candidate scored by its best caption (video-to-text).

    Args:
        block_size: caption rows ranked at once (both directions in one
            pass, 1024 columns at a time, 8192 on a GPU); default 1024 (4096
            on a GPU).
        dsl_tau: if set, also report every metric under ``dsl/`` computed on
            dual-softmax scores with this temperature. The plain metrics are
            always reported. DSL normalises over all test queries, so it
            assumes the whole query set is known at once (not online search).
        qb_beta: if set, also report every metric under ``qb/`` computed on
            QB-Norm scores (dynamic inverted softmax with this beta, see
            :func:`querybank_norm`). The query bank is the test queries
            themselves (the captions for t2v, the videos for v2t), so like DSL
            it assumes the whole query set is known at once; with such a bank
            every query's top-1 is in the activation set (up to ties), so
            every row is normalised. The plain metrics are always reported.
        qb_k: top-k of each bank query that forms QB-Norm's activation set
            (clipped to the number of candidates).
        dump_file: if set, rank 0 pickles the scores, ids, captions, ranks and
            metrics to this path.
        collect_device: passed to ``BaseMetric``; unused, since the full result
            is already on every process (or on rank 0) and is not collected.
        prefix: prefix of the returned keys (``'{prefix}/t2v/R1'``); none by
            default, so the keys are ``t2v/R1`` ... ``v2t/MnR``.
    """

    def __init__(self,
                 block_size: int | None = None,
                 dsl_tau: float | None = None,
                 qb_beta: float | None = None,
                 qb_k: int = 1,
                 dump_file: str | None = None,
                 collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if block_size is not None and block_size < 1:
            raise ValueError(f'block_size must be >= 1, got {block_size}')
        self.block_size = block_size
        if qb_k < 1:
            raise ValueError(f'qb_k must be >= 1, got {qb_k}')
        self.dsl_tau = dsl_tau
        self.qb_beta = qb_beta
        self.qb_k = qb_k
        self.dump_file = dump_file

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Validate and store the full result (``data_batch`` is unused)."""
        for result in data_samples:
            self.results.append(self._validate(result))

    @staticmethod
    def _validate(result: dict) -> dict:
        """Check keys, shapes and index range; name the offending key."""
        if not isinstance(result, dict):
            raise TypeError(
                f'RetrievalMetric expects a dict result, got {type(result)}')
        keys = ('scores', 'text_video_index', 'video_ids', 'captions')
        missing = [key for key in keys if key not in result]
        if missing:
            raise ValueError(f'RetrievalMetric result is missing keys {missing}')
        scores = result['scores']
        if (not isinstance(scores, (Tensor, EmbeddingScores))
                or scores.dim() != 2 or not scores.is_floating_point()):
            raise ValueError(
                "'scores' must be a 2-d float Tensor [N_text, M_video], got "
                f'{getattr(scores, "shape", type(scores))}')
        num_texts, num_videos = scores.shape
        index = result['text_video_index']
        if (not isinstance(index, Tensor) or index.is_floating_point()
                or index.dtype == torch.bool):
            raise ValueError(
                "'text_video_index' must be an integer Tensor, got "
                f'{getattr(index, "dtype", type(index))}')
        if tuple(index.shape) != (num_texts, ):
            raise ValueError(
                f"'text_video_index' must have shape [{num_texts}] (N_text "
                f"rows of 'scores'), got {tuple(index.shape)}")
        if num_texts and (index.min() < 0 or index.max() >= num_videos):
            raise ValueError(
                f"'text_video_index' values must lie in [0, {num_videos}) "
                f"(M_video columns of 'scores'), got [{int(index.min())}, "
                f'{int(index.max())}]')
        if len(result['video_ids']) != num_videos:
            raise ValueError(
                f"'video_ids' has {len(result['video_ids'])} entries, but "
                f"'scores' has {num_videos} video columns")
        if len(result['captions']) != num_texts:
            raise ValueError(
                f"'captions' has {len(result['captions'])} entries, but "
                f"'scores' has {num_texts} caption rows")
        checked = {
            'scores': scores if isinstance(scores, EmbeddingScores) else
            scores.detach(),
            'text_video_index': index.detach().long(),
            'video_ids': list(result['video_ids']),
            'captions': list(result['captions']),
        }
        if 'video_paths' in result:  # optional: only dumped
            if len(result['video_paths']) != num_videos:
                raise ValueError(
                    f"'video_paths' has {len(result['video_paths'])} "
                    f"entries, but 'scores' has {num_videos} video columns")
            checked['video_paths'] = [str(p) for p in result['video_paths']]
        return checked

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Metrics of the one full result; dump it if ``dump_file`` is set."""
        if len(results) != 1:
            raise ValueError(
                'RetrievalMetric expects exactly one result (the whole test '
                f'set, from a single process() call), got {len(results)}')
        result = results[0]
        scores = result['scores']  # [N, M]
        index = result['text_video_index']  # [N]

        bs = self.block_size
        if (self.dump_file is not None or self.dsl_tau is not None
                or self.qb_beta is not None):
            # These need the whole matrix; rank that same matrix, so the
            # dumped ranks are exactly those of the dumped scores.
            scores = full_scores(scores)
        ranks = dict(zip(('t2v_ranks', 'v2t_ranks'),
                         retrieval_ranks(scores, index, bs), strict=True))
        metrics = _both_directions(ranks['t2v_ranks'], ranks['v2t_ranks'])
        if self.dsl_tau is not None:
            # Reported next to the plain metrics, never instead of them.
            # t2v normalises over the texts (dim 0), v2t over the videos (dim 1).
            tau = self.dsl_tau
            ranks['dsl_t2v_ranks'] = retrieval_ranks(
                dual_softmax(scores, tau, dim=0), index, bs)[0]
            ranks['dsl_v2t_ranks'] = retrieval_ranks(
                dual_softmax(scores, tau, dim=1), index, bs)[1]
            dsl = _both_directions(ranks['dsl_t2v_ranks'],
                                   ranks['dsl_v2t_ranks'])
            metrics.update({f'dsl/{key}': value for key, value in dsl.items()})
        if self.qb_beta is not None:
            # Bank = the test queries: captions for t2v, videos for v2t
            # (normalised on S.T, then transposed back for v2t_ranks).
            beta, k = self.qb_beta, min(self.qb_k, scores.shape[1])
            ranks['qb_t2v_ranks'] = retrieval_ranks(
                querybank_norm(scores, scores, beta, k), index, bs)[0]
            k = min(self.qb_k, scores.shape[0])
            ranks['qb_v2t_ranks'] = retrieval_ranks(
                querybank_norm(scores.T, scores.T, beta, k).T, index, bs)[1]
            qb = _both_directions(ranks['qb_t2v_ranks'], ranks['qb_v2t_ranks'])
            metrics.update({f'qb/{key}': value for key, value in qb.items()})

        if self.dump_file is not None:
            self._dump(dict(result, scores=scores), ranks, metrics)
        return metrics

    def _dump(self, result: dict, ranks: dict[str, Tensor],
              metrics: dict[str, float]) -> None:
        """Pickle via a temp file and rename, so no half-written file remains."""
        payload = {
            'scores': result['scores'].float().cpu().numpy(),  # float32 [N, M]
            'video_ids': result['video_ids'],
            'captions': result['captions'],
            **({'video_paths': result['video_paths']}
               if 'video_paths' in result else {}),
            'text_video_index': result['text_video_index'].cpu().numpy(),  # [N]
            'metrics': metrics,
        }
        payload.update({key: value.cpu().numpy() for key, value in ranks.items()})
        path = osp.abspath(self.dump_file)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with atomic_write(path) as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)

    def evaluate(self, size: int) -> dict[str, float]:
        """Compute on rank 0 and broadcast; ``size`` is unused.

        Every process (or only rank 0) holds the same full result, so the
        cross-rank ``collect_results`` of ``BaseMetric`` would drop or
        duplicate it and pickle large matrices. An error on rank 0 is
        broadcast too, so the other ranks raise instead of waiting forever.
        """
        outcome: list = [None]  # [(metrics, error message)]
        error: Exception | None = None
        if is_main_process():
            try:
                if not self.results:
                    raise ValueError(
                        'RetrievalMetric got no result on rank 0: the loop '
                        'must call process() with the full score matrix '
                        'before evaluate()')
                outcome = [(self.compute_metrics(self.results), None)]
            except Exception as err:  # noqa: BLE001 -- re-raised below
                error = err
                outcome = [(None, f'{type(err).__name__}: {err}')]
        broadcast_object_list(outcome)
        self.results.clear()
        metrics, message = outcome[0]
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(f'RetrievalMetric failed on rank 0: {message}')
        if self.prefix:
            metrics = {f'{self.prefix}/{key}': value
                       for key, value in metrics.items()}
        return metrics
