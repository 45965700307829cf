"""The CLIP4Clip retriever: CLIP towers, a similarity head and InfoNCE."""
from __future__ import annotations

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement, InstanceData
from torch import Tensor

from mmclip4clip.evaluation.scores import Scores
from mmclip4clip.registry import MODELS


@MODELS.register_module()
class CLIP4Clip(BaseModel):
    """Text-video retrieval with CLIP (Luo et al., 2021).

    The batch ``inputs`` (after the data preprocessor) is a dict:

    - ``frames``: [B, T, 3, H, W] normalised frames, padded frames zero;
    - ``frame_mask``: [B, T], 1 for real frames;
    - ``input_ids`` / ``attention_mask``: [N, L] tokenised captions;
    - ``text_video_index``: [N], the video (0..B-1) each caption describes.

    Scoring is the head's: :meth:`scores` gives the lazy text x video
    :class:`~mmclip4clip.evaluation.scores.Scores` that the loss, the
    evaluation loop, the metric and search consume, whatever the head.

    Modes: ``loss`` (one caption per video, symmetric InfoNCE),
    ``predict`` (per-video data samples holding ``video_emb`` and ``text_emb``
    [K, D] for its K captions, for the encode-once evaluation loop),
    ``tensor`` (the batch's text x video score matrix) and ``surrogate``
    (the second pass of a micro-batched step, :meth:`cached_grad_surrogate`).

    Loose heads (meanP, seqLSTM, seqTransf) embed texts and videos apart:
    ``video_emb`` is a unit vector [D], the loss runs over the batch gathered
    from all processes. The tight head (tightTransf) scores pairs: a video is
    kept as its frame features [T, D] (``video_emb``) and mask
    (``video_mask``), and the loss runs over the in-batch pairs of each
    process, as in the original.

    Micro-batched training (``micro_batch_size``): the training step embeds
    the batch in micro-batches of that many videos (and their captions)
    and still optimises the loss of the whole batch, with the same loss
    and, up to rounding, the same gradients as one pass over it
    (gradient caching, Gao et al., 2021): the embeddings are computed
    without a graph, the loss and its gradient w.r.t. the embeddings over
    the whole (gathered) batch, then each micro-batch is embedded again
    with its random state restored and the cached gradient
    back-propagated. The towers' activation memory follows the
    micro-batch, at the price of a second forward pass through them (the
    tight head's cross-encoder still runs over all in-batch pairs at
    once). See :mod:`mmclip4clip.engine.grad_cache`; under DDP our model
    wrapper (``CLIP4ClipDistributedDataParallel``, the default of
    ``tools/train.py --launcher pytorch``) does it, with one gradient
    all-reduce per optimiser step.

    Args:
        backbone: config of :class:`CLIPBackbone`.
        head: config of a similarity head (``MeanPHead``, ``SeqLSTMHead``,
            ``SeqTransfHead`` or ``TightTransfHead``).
        loss: config of the loss on the text x video logits.
        init_head_from_clip: start the head's position table and blocks from
            CLIP's text tower (docs/models.md#initialisation-from-clip); a
            checkpoint loaded later replaces them.
        micro_batch_size: videos per forward pass in a training step
            (None: the whole per-process batch at once; a batch not larger
            than it also runs in one pass; a last smaller micro-batch is
            fine).
        data_preprocessor: config of the data preprocessor.
        init_cfg: mmengine initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 loss: dict | None = None,
                 init_head_from_clip: bool = True,
                 micro_batch_size: int | None = None,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        if micro_batch_size is not None and (
                isinstance(micro_batch_size, bool)
                or not isinstance(micro_batch_size, int)
                or micro_batch_size < 1):
            raise ValueError('model.micro_batch_size must be None or an '
                             f'integer >= 1, got {micro_batch_size!r}')
        self.micro_batch_size = micro_batch_size
        if data_preprocessor is None:
            data_preprocessor = dict(type='VideoTextDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = MODELS.build(head)
        self.loss_module = MODELS.build(
            loss if loss is not None else dict(type='SymmetricInfoNCELoss'))
        if init_head_from_clip and hasattr(self.head, 'init_from_clip'):
            self.head.init_from_clip(self.backbone.clip)

    @property
    def embeds_videos(self) -> bool:
        """Whether a video is one embedding vector that can be stored and
        searched (the loose heads); the tight head keeps frame features and
        scores pairs."""
        return self.head.embeds_videos

    # ---- encoders -------------------------------------------------------
    def encode_text(self, input_ids: Tensor,
                    attention_mask: Tensor | None = None) -> Tensor:
        """[N, L] -> [N, D] text embeddings: unit vectors for the loose
        heads, the raw projected feature for the tight head."""
        feats = self.backbone.encode_text(input_ids, attention_mask)
        return self.head.embed_text(feats)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """[B, T, 3, H, W] + [B, T] -> video embeddings: [B, D] unit vectors
        for the loose heads, the frame features [B, T, D] for the tight
        head."""
        feats = self.backbone.encode_frames(frames, frame_mask)  # [B, T, D]
        return self.head.embed_video(feats, frame_mask)

    def scores(self, text_emb: Tensor, video_emb: Tensor,
               video_mask: Tensor | None = None) -> Scores:
        """Texts x videos as a lazy [N, M] :class:`Scores` (rows are texts),
        from :meth:`encode_text` and :meth:`encode_video` outputs.

        Loose heads: ``logit_scale.exp() * t @ v.T`` for [N, D] and [M, D]
        unit vectors. Tight head: the pair logits of [N, D] text features
        against [M, T, D] frame features with their [M, T] ``video_mask``,
        in chunks of the head's ``chunk_size`` pairs.
        """
        return self.head.scores(text_emb, video_emb, video_mask,
                                self.backbone.logit_scale.exp())

    def similarity(self, text_emb: Tensor, video_emb: Tensor,
                   video_mask: Tensor | None = None) -> Tensor:
        """Texts x videos -> the whole [N, M] matrix of :meth:`scores`."""
        return self.scores(text_emb, video_emb, video_mask).full()

    @torch.no_grad()
    def sim_matrix(self, input_ids: Tensor, attention_mask: Tensor,
                   frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Score matrix for tokenised captions and normalised frames.

        [N, L] ids and mask, [M, T, 3, H, W] frames, [M, T] mask -> [N, M]
        (loose heads including ``logit_scale.exp()``, the tight head its pair
        logits).
        """
        return self.similarity(
            self.encode_text(input_ids, attention_mask),
            self.encode_video(frames, frame_mask), frame_mask)

    # ---- mmengine modes -------------------------------------------------
    def forward(self, inputs: dict,
                data_samples: list[BaseDataElement] | None = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'surrogate':
            return self.cached_grad_surrogate(**inputs)
        if mode == 'tensor':
            return self.sim_matrix(inputs['input_ids'],
                                   inputs['attention_mask'],
                                   inputs['frames'], inputs['frame_mask'])
        raise ValueError(f'unknown mode {mode!r}: expected loss, predict, '
                         'tensor or surrogate')

    def loss(self, inputs: dict) -> dict[str, Tensor]:
        """Symmetric InfoNCE, one caption per video: over the global batch
        for loose heads, over each process's in-batch pairs for the tight
        head (N x N cross-encoder passes per process, as in the original)."""
        num_videos = self.check_training_batch(inputs)
        if (self.micro_batch_size is not None and torch.is_grad_enabled()
                and num_videos > self.micro_batch_size):
            raise RuntimeError(
                f'model.micro_batch_size={self.micro_batch_size} but a batch '
                f'of {num_videos} videos ran in one pass: the step went '
                'through a model wrapper that does not micro-batch; use '
                "model_wrapper_cfg=dict(type='CLIP4ClipDistributedDataParallel')"
                ' (the default of our tools)')
        text, video = self.embed(inputs)
        return dict(loss=self.loss_from_embeddings(text, video,
                                                   inputs['frame_mask']))

    # ---- training pieces (also used by micro-batched steps) -------------
    @staticmethod
    def check_training_batch(inputs: dict) -> int:
        """The number of videos B of a training batch; its captions must
        be exactly one per video, in video order (read from the frame mask
        and index: the same before and after preprocessing)."""
        num_videos = inputs['frame_mask'].shape[0]
        index = inputs['text_video_index']
        if index.shape[0] != num_videos or not torch.equal(
                index, torch.arange(num_videos, device=index.device)):
            raise ValueError('training needs exactly one caption per video, '
                             'in video order (dataset in train mode)')
        return num_videos

    def embed(self, inputs: dict) -> tuple[Tensor, Tensor]:
        """Training batch -> (text [B, D], video embeddings [B, D] or frame
        features [B, T, D] for the tight head)."""
        text = self.encode_text(inputs['input_ids'], inputs['attention_mask'])
        video = self.encode_video(inputs['frames'], inputs['frame_mask'])
        return text, video

    def batch_scores(self, text: Tensor, video: Tensor,
                     frame_mask: Tensor) -> Scores:
        """The scores the training loss runs over, from this process's
        embeddings (:meth:`embed`) and [B, T] frame mask: gathered over
        processes (loose heads) or this process's in-batch pairs (tight
        head): the head's ``batch_scores``."""
        return self.head.batch_scores(text, video, frame_mask,
                                      self.backbone.logit_scale.exp())

    def loss_from_embeddings(self, text: Tensor, video: Tensor,
                             frame_mask: Tensor) -> Tensor:
        """The training loss of :meth:`batch_scores`."""
        return self.loss_module(
            self.batch_scores(text, video, frame_mask).full())

    def cached_grad_surrogate(self, batch: dict, text_grad: Tensor,
                              video_grad: Tensor,
                              param_grads: dict[str, Tensor]) -> Tensor:
        """``sum(text * text_grad) + sum(video * video_grad)`` over a
        micro-batch's embeddings, plus ``sum(p * g)`` for each parameter
        named in ``param_grads``. Its backward adds to every parameter the
        micro-batch's share of the cached-loss gradient (and ``g`` to the
        named ones); a forward mode so that DDP sees every parameter it
        reduces used in its forward."""
        text, video = self.embed(batch)
        # At least float32: the sums of fp16/bf16 products would round.
        acc = torch.promote_types(text.dtype, torch.float32)
        out = (text.to(acc) * text_grad.to(acc)).sum() + (
            video.to(acc) * video_grad.to(acc)).sum()
        if param_grads:
            params = dict(self.named_parameters())
            for name, grad in param_grads.items():
                out = out + (params[name] * grad).sum()
        return out

    def train_step(self, data, optim_wrapper) -> dict[str, Tensor]:
        """mmengine's step, micro-batched when ``micro_batch_size`` is
        set (:func:`mmclip4clip.engine.grad_cache.micro_batched_train_step`).
        """
        if self.micro_batch_size is None:
            return super().train_step(data, optim_wrapper)
        from mmclip4clip.engine.grad_cache import micro_batched_train_step
        return micro_batched_train_step(self, data, optim_wrapper)

    @torch.no_grad()
    def predict(self, inputs: dict,
                data_samples: list[BaseDataElement]) -> list[BaseDataElement]:
        """Attach each video's embedding and its captions' embeddings.

        A loose head's video with exactly one caption also gets mmaction2's
        ``features`` (``video_feature`` [D], ``text_feature`` [D]: views of
        the same tensors), so mmaction2's ``RetrievalMetric`` reads it in
        mmengine's ``ValLoop``. With K != 1 captions there is none: that
        metric pairs each video with one caption (use ours, which reads
        ``text_emb`` [K, D]).
        """
        text = self.encode_text(inputs['input_ids'], inputs['attention_mask'])
        video = self.encode_video(inputs['frames'], inputs['frame_mask'])
        index = inputs['text_video_index']
        for i, sample in enumerate(data_samples):
            sample.video_emb = video[i]
            sample.text_emb = text[index == i]
            if not self.embeds_videos:  # frame features: keep their mask
                sample.video_mask = inputs['frame_mask'][i]
            elif len(sample.text_emb) == 1:
                sample.features = InstanceData(
                    video_feature=sample.video_emb,
                    text_feature=sample.text_emb[0])
        return data_samples
