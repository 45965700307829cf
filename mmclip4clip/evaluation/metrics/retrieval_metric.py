"""Text-video retrieval metric: exact ranks over one full score matrix
or over per-video data samples from mmengine's standard loops."""
import os
import os.path as osp
import pickle
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.dist import (
    all_gather_object,
    broadcast_object_list,
    collect_results,
    is_main_process,
)
from mmengine.evaluator import BaseMetric
from mmengine.structures import BaseDataElement
from torch import Tensor

from mmclip4clip.registry import METRICS
from mmclip4clip.utils import atomic_write

from ..functional import (
    dual_softmax,
    once_each,
    querybank_norm,
    rank_metrics,
    retrieval_ranks,
)
from ..scores import EmbeddingScores, Scores, as_scores

METRIC_NAMES = ('R1', 'R5', 'R10', 'MdR', 'MnR')

# What process() received: one full result (our RetrievalValLoop) or data
# samples (mmengine's ValLoop / TestLoop).
_FULL, _SAMPLES = 'full result', 'data samples'


def _metric_names(metric_list: str | Sequence[str]) -> tuple[str, ...]:
    """mmaction2's ``metric_list`` as a tuple; unknown names are an error."""
    names = (metric_list, ) if isinstance(metric_list, str) else tuple(
        metric_list)
    if not names:
        raise ValueError('RetrievalMetric: metric_list is empty; choose from '
                         f'{METRIC_NAMES}')
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f'RetrievalMetric: unknown metric_list entries '
                         f'{unknown}; choose from {METRIC_NAMES}')
    return tuple(dict.fromkeys(names))


def _both_directions(t2v: Tensor, v2t: Tensor,
                     names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """``t2v/R1`` ... ``v2t/MnR`` (the metrics ``names``) from the ranks of
    both directions."""
    out = {}
    for direction, ranks in (('t2v', t2v), ('v2t', v2t)):
        values = rank_metrics(ranks)
        out.update({f'{direction}/{name}': values[name] for name in names})
    return out


def _as_dict(sample: Any) -> dict:
    """A data sample as the dict mmengine's ``Evaluator`` passes on."""
    if isinstance(sample, BaseDataElement):
        return sample.to_dict()
    if not isinstance(sample, dict):
        raise TypeError('RetrievalMetric expects dict results or data '
                        f'samples, got {type(sample)}')
    return sample


def _sample_embeddings(sample: dict) -> tuple[Tensor, Tensor]:
    """(video [D], texts [K, D]) of one data sample.

    Our CLIP4Clip's ``predict`` sets ``video_emb`` [D] and ``text_emb``
    [K, D]; mmaction2's ``CLIPSimilarity`` sets ``features`` with
    ``video_feature`` [D] and ``text_feature`` [D] (or [K, D]).
    """
    if 'video_emb' in sample:
        frames = sample['video_emb']
        if 'video_mask' in sample or (isinstance(frames, Tensor)
                                      and frames.dim() != 1):
            raise ValueError(
                'RetrievalMetric: a data sample holds frame features '
                f'{tuple(getattr(frames, "shape", ()))} (tightTransf), which '
                'only the model can score against the captions; evaluate '
                "with mmclip4clip's RetrievalValLoop / RetrievalTestLoop "
                "(val_cfg=dict(type='mmclip4clip.RetrievalValLoop'))")
        if 'text_emb' not in sample:
            raise ValueError("RetrievalMetric: a data sample has 'video_emb' "
                             "but no 'text_emb'")
        video, text, names = sample['video_emb'], sample['text_emb'], (
            'video_emb', 'text_emb')
    elif 'features' in sample:
        features = _as_dict(sample['features'])
        missing = [f'features.{key}' for key in ('video_feature',
                                                 'text_feature')
                   if key not in features]
        if missing:
            raise ValueError(f'RetrievalMetric: a data sample lacks {missing}')
        video, text = features['video_feature'], features['text_feature']
        names = ('features.video_feature', 'features.text_feature')
    else:
        raise ValueError(
            "RetrievalMetric: a data sample has neither 'video_emb' and "
            "'text_emb' (mmclip4clip's CLIP4Clip) nor 'features' (mmaction2's "
            "CLIPSimilarity), and is no full result ('scores'); its keys: "
            f'{sorted(sample)}')
    for name, value in zip(names, (video, text), strict=True):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(f"RetrievalMetric: '{name}' must be a float "
                             f'Tensor, got {getattr(value, "dtype", type(value))}')
    if video.dim() != 1 or text.dim() not in (1, 2) or text.numel() == 0 \
            or text.shape[-1] != video.shape[0]:
        raise ValueError(
            f"RetrievalMetric: '{names[0]}' must be [D] and '{names[1]}' [D] "
            f'or [K, D] (K >= 1 captions), got {tuple(video.shape)} and '
            f'{tuple(text.shape)}')
    dtype = torch.promote_types(video.dtype, torch.float32)
    return (video.detach().to('cpu', dtype),
            text.detach().reshape(-1, video.shape[0]).to('cpu', dtype))


def _sample_entry(sample: dict) -> dict:
    """The embeddings and the identifying metainfo of one data sample."""
    video, text = _sample_embeddings(sample)
    entry = dict(video=video, text=text)
    if 'sample_idx' in sample:
        entry['sample_idx'] = int(sample['sample_idx'])
    for key in ('video_id', 'filename'):
        if key in sample:
            entry[key] = str(sample[key])
    captions = sample.get('captions', sample.get('text'))
    if isinstance(captions, str):
        captions = [captions]
    if isinstance(captions, (list, tuple)) and len(captions) == len(text):
        entry['captions'] = [str(c) for c in captions]
    return entry


def _samples_to_result(entries: list[dict]) -> dict:
    """Per-sample entries (see :func:`_sample_entry`) -> the full result.

    Samples repeated by a distributed sampler (same ``sample_idx``) count
    once, in ``sample_idx`` order; without ``sample_idx`` the order is the
    collected one. Scores are cosine similarities of the normalised
    embeddings (``x / |x|``, as mmaction2's metric), a zero embedding is
    therefore NaN and an error naming the query.
    """
    with_idx = sum('sample_idx' in entry for entry in entries)
    if 0 < with_idx < len(entries):
        raise ValueError(f'RetrievalMetric: {with_idx} of {len(entries)} '
                         "data samples carry 'sample_idx'; all or none must")
    if with_idx:
        entries = once_each(entries, lambda entry: entry['sample_idx'])
    dims = {entry['video'].shape[0] for entry in entries}
    if len(dims) > 1:
        raise ValueError(f'RetrievalMetric: data samples of different '
                         f'embedding sizes {sorted(dims)}')
    video = torch.stack([entry['video'] for entry in entries])  # [M, D]
    text = torch.cat([entry['text'] for entry in entries])  # [N, D]
    counts = torch.tensor([len(entry['text']) for entry in entries])
    result = dict(
        scores=EmbeddingScores(text / text.norm(dim=-1, keepdim=True),
                               video / video.norm(dim=-1, keepdim=True)),
        text_video_index=torch.repeat_interleave(
            torch.arange(len(entries)), counts),
        video_ids=[
            entry.get('video_id', str(entry.get('sample_idx', position)))
            for position, entry in enumerate(entries)
        ],
        captions=[
            caption for entry in entries
            for caption in entry.get('captions', [''] * len(entry['text']))
        ])
    if all('filename' in entry for entry in entries):
        result['video_paths'] = [entry['filename'] for entry in entries]
    return result


@METRICS.register_module()
class RetrievalMetric(BaseMetric):
    """Exact R@1/5/10, MdR and MnR, text-to-video and video-to-text.

    ``process`` takes either of two inputs (one kind per evaluation):

    1. One full result, from mmclip4clip's ``RetrievalValLoop`` /
       ``RetrievalTestLoop``, which encode the whole test set once and call
       ``process`` once with a single dict:

       - ``scores``: float Tensor [N_text, M_video], rows = captions, or a
         :class:`~mmclip4clip.evaluation.scores.Scores` (the model's
         ``scores``: the loose heads' ``scale * T @ V.T``, the tight head's
         pair logits), which is ranked tile by tile without ever holding
         the whole matrix; DSL, QB-Norm and ``dump_file`` need the whole
         matrix and compute it.
       - ``text_video_index``: long Tensor [N_text], column of each caption's
         video.
       - ``video_ids``: list of M_video str.
       - ``captions``: list of N_text str.
       - ``video_paths`` (optional, only dumped): list of M_video str, the
         file of each video as the dataset resolved it.

    2. Data samples, one per video, batch by batch from mmengine's standard
       ``ValLoop`` / ``TestLoop`` (as mmaction2's ``RetrievalMetric`` takes
       them): our CLIP4Clip's ``predict`` output (``video_emb`` [D],
       ``text_emb`` [K, D] for the video's K captions) or mmaction2's
       ``CLIPSimilarity`` output (``features.video_feature`` [D],
       ``features.text_feature`` [D] or [K, D]). They are collected across
       processes as ``BaseMetric`` does, a sample repeated by a distributed
       sampler (same ``sample_idx``) counts once, caption rows follow the
       samples, and the scores are cosine similarities of the normalised
       embeddings (mmaction2's; no logit scale, which matters for
       ``dsl_tau`` and ``qb_beta`` only). The tight head's samples (frame
       features with ``video_mask``) need the model to be scored and are
       refused: use mmclip4clip's ``RetrievalValLoop`` for it.

    Ranks follow docs/evaluation.md#ranks-and-metrics: ties do not push the
    ground truth down, a NaN or inf score is an error naming the query, and a
    video with several captions is one candidate scored by its best caption
    (video-to-text). With one caption per video and no tied scores, ``t2v/*``
    equals mmaction2's ``retrieval/*``; where a caption's score ties another
    video's, mmaction2 counts the caption once per tied video (its
    ``np.where`` over the sorted row) and ranks it lower, this metric counts
    it once at the best rank.

    Args:
        metric_list: which of ``'R1', 'R5', 'R10', 'MdR', 'MnR'`` to report
            (a name or a tuple, as mmaction2's ``RetrievalMetric``); all by
            default. Each is reported for both directions and every score
            variant (``t2v/R1``, ``v2t/R1``, ``dsl/t2v/R1``...).
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
        collect_device: passed to ``BaseMetric``: how data samples are
            collected across processes; a full result is on every process
            already and is not collected.
        prefix: prefix of the returned keys (``'{prefix}/t2v/R1'``); none by
            default, so the keys are ``t2v/R1`` ... ``v2t/MnR`` (mmaction2's
            metric reports ``retrieval/R1``..., text-to-video only).
    """

    def __init__(self,
                 metric_list: str | Sequence[str] = METRIC_NAMES,
                 block_size: int | None = None,
                 dsl_tau: float | None = None,
                 qb_beta: float | None = None,
                 qb_k: int = 1,
                 dump_file: str | None = None,
                 collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.metric_list = _metric_names(metric_list)
        if block_size is not None and block_size < 1:
            raise ValueError(f'block_size must be >= 1, got {block_size}')
        self.block_size = block_size
        if qb_k < 1:
            raise ValueError(f'qb_k must be >= 1, got {qb_k}')
        self.dsl_tau = dsl_tau
        self.qb_beta = qb_beta
        self.qb_k = qb_k
        self.dump_file = dump_file
        self._kind: str | None = None  # _FULL or _SAMPLES once processed

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Validate and store a full result or data samples (``data_batch``
        is unused)."""
        for sample in data_samples:
            sample = _as_dict(sample)
            kind = _FULL if 'scores' in sample else _SAMPLES
            if self._kind is not None and kind != self._kind:
                raise ValueError(
                    f'RetrievalMetric got a {kind} after {self._kind}s in the '
                    'same evaluation; a full result comes alone from '
                    "mmclip4clip's RetrievalValLoop, data samples from "
                    "mmengine's ValLoop")
            self.results.append(self._validate(sample) if kind == _FULL else
                                _sample_entry(sample))
            self._kind = kind

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
        if not isinstance(scores, Scores) and (
                not isinstance(scores, Tensor) or scores.dim() != 2
                or not scores.is_floating_point()):
            raise ValueError(
                "'scores' must be a 2-d float Tensor [N_text, M_video], got "
                f'{getattr(scores, "shape", type(scores))}')
        scores = as_scores(scores.detach() if isinstance(scores, Tensor)
                           else scores)
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
            'scores': scores,
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
        """Metrics of the one full result or of the collected data samples;
        dump them if ``dump_file`` is set."""
        if results and 'scores' not in results[0]:
            results = [_samples_to_result(results)]
        if len(results) != 1:
            raise ValueError(
                'RetrievalMetric expects exactly one result (the whole test '
                f'set, from a single process() call), got {len(results)}')
        result = results[0]
        scores = result['scores']  # Scores [N, M]
        index = result['text_video_index']  # [N]

        bs = self.block_size
        if (self.dump_file is not None or self.dsl_tau is not None
                or self.qb_beta is not None):
            # These need the whole matrix; rank that same matrix, so the
            # dumped ranks are exactly those of the dumped scores.
            scores = scores.full()
        ranks = dict(zip(('t2v_ranks', 'v2t_ranks'),
                         retrieval_ranks(scores, index, bs), strict=True))
        metrics = _both_directions(ranks['t2v_ranks'], ranks['v2t_ranks'],
                                   self.metric_list)
        if self.dsl_tau is not None:
            # Reported next to the plain metrics, never instead of them.
            # t2v normalises over the texts (dim 0), v2t over the videos (dim 1).
            tau = self.dsl_tau
            ranks['dsl_t2v_ranks'] = retrieval_ranks(
                dual_softmax(scores, tau, dim=0), index, bs)[0]
            ranks['dsl_v2t_ranks'] = retrieval_ranks(
                dual_softmax(scores, tau, dim=1), index, bs)[1]
            dsl = _both_directions(ranks['dsl_t2v_ranks'],
                                   ranks['dsl_v2t_ranks'], self.metric_list)
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
            qb = _both_directions(ranks['qb_t2v_ranks'], ranks['qb_v2t_ranks'],
                                  self.metric_list)
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
        """Compute on rank 0 and broadcast.

        Every process reports what it received; all take the same path. Data
        samples are collected across processes by ``BaseMetric``'s rule
        (``size``: the dataset length, which drops a distributed sampler's
        padding). A full result is on every process (or on rank 0) already,
        so ``collect_results`` would drop or duplicate it and pickle large
        matrices; ``size`` is unused then. An error on rank 0 is broadcast
        too, so the other ranks raise instead of waiting forever.
        """
        kinds = {kind for kind in all_gather_object(self._kind) if kind}
        self._kind = None
        if len(kinds) > 1:
            self.results.clear()
            raise ValueError('RetrievalMetric: some processes got a full '
                             'result, others data samples')
        results = self.results
        if kinds == {_SAMPLES}:
            results = collect_results(
                self.results, size, self.collect_device,
                **({'tmpdir': self.collect_dir}
                   if self.collect_device == 'cpu' else {}))
        outcome: list = [None]  # [(metrics, error message)]
        error: Exception | None = None
        if is_main_process():
            try:
                if not results:
                    raise ValueError(
                        'RetrievalMetric got no result on rank 0: the loop '
                        'must call process() with the full score matrix or '
                        'with data samples before evaluate()')
                outcome = [(self.compute_metrics(results), None)]
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
