"""mmaction2 1.2.0's own CLIPSimilarity with our loose heads as its adapter.

Run in a fresh interpreter (it changes ``sys.modules`` and mmaction2's
registries)::

    python mmaction2_clip_similarity_check.py MMACTION2_SOURCE OUT.json

``MMACTION2_SOURCE`` is the extracted sdist. ``mmaction.models`` becomes a
bare package whose ``__path__`` is the sdist's ``mmaction/models`` (its
``__init__``, which fails with the wheel, never runs); the modules needed
are imported from there. ``clip`` is a stand-in whose ``load`` returns a
tiny OpenAI-layout CLIP with random weights. For each loose head the script
trains a few steps in mmaction2's loss mode and evaluates with mmaction2's
and our RetrievalMetric in mmengine's ValLoop; then it converts an mmaction2
checkpoint of the real TransformerAdapter with a non-default head count and
scores both models. The figures go to ``OUT.json``; the test asserts them.
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import openai_reference as ref  # noqa: E402

# A tiny CLIP whose text width equals its embedding size (as in ViT-B), so
# seqTransf can start from its text tower; heads = width // 64 = 1.
WIDTH = 64
CLIP_KW = dict(width=WIDTH, layers=2, vision_width=WIDTH, vision_layers=1,
               patch=4, image_size=16, context_length=16, vocab=64,
               embed_dim=WIDTH, seed=0)
FRAMES = 4
ADAPTER_HEADS = 4  # not the width // 64 = 1 a converter would guess
# mmaction2's clip4clip config: pixel mean/std on the 0..255 scale.
PREPROCESSOR = dict(
    type='MultiModalDataPreprocessor',
    preprocessors=dict(
        imgs=dict(type='ActionDataPreprocessor',
                  mean=[122.771, 116.746, 104.094],
                  std=[68.500, 66.632, 70.323], format_shape='NCHW'),
        text=dict(type='ActionDataPreprocessor', to_float32=False)))


# ---- mmaction.models from the sdist -----------------------------------------
def import_sdist_models(source: Path) -> None:
    """Make ``mmaction.models`` the sdist's package without its __init__."""
    import mmaction
    assert 'mmaction.models' not in sys.modules, 'imported before'
    package = types.ModuleType('mmaction.models')
    package.__path__ = [str(source / 'mmaction' / 'models')]
    sys.modules['mmaction.models'] = package
    mmaction.models = package
    for name in ('similarity', 'losses', 'data_preprocessors'):
        importlib.import_module(f'mmaction.models.{name}')


# ---- the stand-in ``clip`` package ------------------------------------------
class OpenAICLIP(nn.Module):
    """OpenAI's ``clip.model.CLIP`` (ViT image tower), module for module.

    Built from mmaction2's copy of OpenAI's ``Transformer`` and
    ``LayerNorm``, so parameter names are OpenAI's (``visual.conv1.weight``,
    ``transformer.resblocks.0.attn.in_proj_weight``...).
    """

    def __init__(self, sd: dict[str, Tensor]) -> None:
        from mmaction.models.similarity.adapters import LayerNorm, Transformer
        super().__init__()
        width = sd['ln_final.weight'].shape[0]
        vision_width, _, patch, _ = sd['visual.conv1.weight'].shape
        context = sd['positional_embedding'].shape[0]
        causal = torch.full((context, context), float('-inf')).triu(1)

        def blocks(prefix: str) -> int:
            return len({k.split('.')[len(prefix.split('.')) - 1]
                        for k in sd if k.startswith(prefix)})

        self.visual = nn.Module()
        self.visual.conv1 = nn.Conv2d(3, vision_width, patch, patch,
                                      bias=False)
        self.visual.class_embedding = nn.Parameter(
            sd['visual.class_embedding'])
        self.visual.positional_embedding = nn.Parameter(
            sd['visual.positional_embedding'])
        self.visual.ln_pre = LayerNorm(vision_width)
        self.visual.transformer = Transformer(
            vision_width, blocks('visual.transformer.resblocks.'),
            vision_width // 64)
        self.visual.ln_post = LayerNorm(vision_width)
        self.visual.proj = nn.Parameter(sd['visual.proj'])
        self.transformer = Transformer(
            width, blocks('transformer.resblocks.'), width // 64,
            attn_mask=causal)
        self.token_embedding = nn.Embedding(*sd['token_embedding.weight'].shape)
        self.positional_embedding = nn.Parameter(sd['positional_embedding'])
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(sd['text_projection'])
        self.logit_scale = nn.Parameter(sd['logit_scale'])
        self.load_state_dict(sd, strict=True)

    def encode_image(self, image: Tensor) -> Tensor:
        """[N, 3, S, S] -> [N, D]."""
        v = self.visual
        x = v.conv1(image).flatten(2).transpose(1, 2)  # [N, G*G, W]
        cls = v.class_embedding.expand(x.shape[0], 1, -1)
        x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)
        x = v.transformer(x.transpose(0, 1)).transpose(0, 1)  # NLD
        return v.ln_post(x[:, 0]) @ v.proj

    def encode_text(self, text: Tensor) -> Tensor:
        """[N, context] ids -> [N, D], read at the end token (argmax)."""
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] \
            @ self.text_projection


def install_clip_stand_in(sd: dict[str, Tensor]) -> list[str]:
    """``import clip`` -> a module whose ``load`` builds :class:`OpenAICLIP`
    from ``sd``; returns the list of the archs it was asked for."""
    asked: list[str] = []

    def load(name: str, device: str = 'cpu', jit: bool = False):
        asked.append(name)
        return OpenAICLIP(sd).to(device), None

    module = types.ModuleType('clip')
    module.load = load
    sys.modules['clip'] = module
    return asked


# ---- data in mmaction2's format ---------------------------------------------
def tokens(num: int, seed: int) -> Tensor:
    """[num, context] CLIP-style ids: start, words, end (largest id), 0s."""
    gen = torch.Generator().manual_seed(seed)
    vocab, length = CLIP_KW['vocab'], CLIP_KW['context_length']
    ids = torch.zeros(num, length, dtype=torch.long)
    for i in range(num):
        k = 2 + i % (length - 4)
        ids[i, 0] = vocab - 2
        ids[i, 1:k + 1] = torch.randint(1, vocab - 2, (k, ), generator=gen)
        ids[i, k + 1] = vocab - 1
    return ids


def batches(num_videos: int, batch_size: int, seed: int) -> list[dict]:
    """Collated batches as mmaction2's MSR-VTT pipeline gives them: uint8
    frames [T, 3, S, S] and token ids [L] per video, one caption each."""
    from mmaction.structures import ActionDataSample
    gen = torch.Generator().manual_seed(seed)
    size = CLIP_KW['image_size']
    imgs = torch.randint(0, 256, (num_videos, FRAMES, 3, size, size),
                         generator=gen, dtype=torch.uint8)
    text = tokens(num_videos, seed)
    return [dict(inputs=dict(imgs=list(imgs[i:i + batch_size]),
                             text=list(text[i:i + batch_size])),
                 data_samples=[ActionDataSample() for _ in
                               range(min(batch_size, num_videos - i))])
            for i in range(0, num_videos, batch_size)]


# ---- checks -----------------------------------------------------------------
def check_stand_in(sd: dict[str, Tensor]) -> float:
    """Largest relative difference of the stand-in's features from the
    plain-torch reference of OpenAI's CLIP."""
    model = OpenAICLIP(sd).eval()
    size = CLIP_KW['image_size']
    images = torch.randn(3, 3, size, size, generator=torch.Generator()
                         .manual_seed(1))
    ids = tokens(3, seed=2)
    err = 0.0
    with torch.no_grad():
        for ours, expected in ((model.encode_image(images),
                                ref.encode_image(sd, images)),
                               (model.encode_text(ids),
                                ref.encode_text(sd, ids))):
            err = max(err, ((ours - expected).abs().max()
                            / expected.abs().max()).item())
    return err


def run_val_loop(model, loader: list[dict], metrics: list) -> dict:
    """mmengine's standard ValLoop over ``loader`` (a runner stand-in: the
    loop reads only ``model``, ``call_hook`` and ``visualizer``)."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import ValLoop

    class Loader(list):
        dataset = range(sum(len(b['data_samples']) for b in loader))

    runner = SimpleNamespace(model=model, call_hook=lambda *a, **k: None,
                             visualizer=SimpleNamespace())
    return ValLoop(runner, Loader(loader), Evaluator(metrics)).run()


def train_and_evaluate(adapter: dict, init_from_clip: bool) -> dict:
    """A few AdamW steps in CLIPSimilarity's loss mode, then ValLoop with
    mmaction2's and our RetrievalMetric."""
    from mmaction.evaluation import RetrievalMetric as MMActionMetric
    from mmaction.registry import MODELS
    from mmengine.optim import OptimWrapper

    from mmclip4clip.evaluation.metrics.retrieval_metric import RetrievalMetric
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CLIPSimilarity', clip_arch='ViT-B/32', to_float32=True,
        frozen_layers=1, adapter=adapter, data_preprocessor=PREPROCESSOR,
        loss=dict(type='CrossEntropyLoss', loss_weight=0.5)))
    if init_from_clip:  # as the README says to, for mmaction2's model
        model.adapter.init_from_clip(model.clip)
    head_before = {n: p.detach().clone()
                   for n, p in model.adapter.named_parameters()}
    optim = OptimWrapper(torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3))
    train = batches(8, 8, seed=3)[0]
    model.train()
    # First step by hand, to look at the gradients.
    data = model.data_preprocessor(train, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    no_grad = [n for n, p in model.adapter.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    clip_grad = [n for n, p in model.clip.named_parameters()
                 if p.grad is not None and bool(p.grad.abs().sum() > 0)]
    optim.step()
    optim.zero_grad()
    history = [loss.item()]
    for _ in range(4):
        log = model.train_step(train, optim)
        history.append(sum(v.item() for k, v in log.items()
                           if k.startswith('sim_loss')))
    changed = [n for n, p in model.adapter.named_parameters()
               if not torch.equal(p.detach(), head_before[n])]
    metrics = run_val_loop(model, batches(12, 5, seed=4),
                           [MMActionMetric(), RetrievalMetric()])
    return dict(
        head_params=sorted(head_before), head_params_without_grad=no_grad,
        head_params_changed=changed, clip_params_with_grad=clip_grad,
        losses=history, loss_keys=sorted(losses),
        metrics={k: float(v) for k, v in metrics.items()})


def check_transformer_adapter(sd: dict[str, Tensor], work: Path) -> dict:
    """mmaction2's TransformerAdapter (``ADAPTER_HEADS`` heads), trained
    weights saved as its runner does, converted by ours: the two models'
    scores, and those of a conversion with the guessed head count."""
    from mmaction.registry import MODELS
    from mmengine.config import Config

    from mmclip4clip.models.checkpoints.retriever import (
        build_converted,
        convert_checkpoint,
        load_source,
    )
    from mmclip4clip.models.checkpoints.stored_config import (
        mmaction2_adapter_heads,
    )
    adapter = dict(type='TransformerAdapter', num_segs=FRAMES,
                   transformer_width=WIDTH, transformer_heads=ADAPTER_HEADS,
                   transformer_layers=2)
    cfg = dict(type='CLIPSimilarity', clip_arch='ViT-B/32', to_float32=True,
               frozen_layers=-1, adapter=adapter,
               data_preprocessor=PREPROCESSOR)
    torch.manual_seed(5)
    model = MODELS.build(cfg)
    model.adapter.init_weights()
    with torch.no_grad():  # beyond init_weights' near-zero positions
        model.adapter.positional_embedding.normal_(std=0.5)
    model.eval()
    path = work / 'epoch_5.pth'
    torch.save({'meta': {'epoch': 5, 'cfg': Config(dict(model=cfg))
                         .pretty_text},
                'state_dict': model.state_dict()}, path)

    gen = torch.Generator().manual_seed(6)
    size = CLIP_KW['image_size']
    frames = torch.randn(5, FRAMES, 3, size, size, generator=gen)
    ids = tokens(6, seed=7)
    with torch.no_grad():
        video, text = model.extract_feat(dict(imgs=frames, text=ids))
        expected = model.clip.logit_scale.exp() * text @ video.T  # [N, M]

    def converted_scores(num_heads: int | None) -> Tensor:
        source = load_source(str(path), 'mmaction2')
        heads = mmaction2_adapter_heads(str(path), source, num_heads)
        state_dict, model_cfg = convert_checkpoint(source, 'mmaction2',
                                                   num_heads=heads)
        ours = build_converted(state_dict, model_cfg).eval()
        with torch.no_grad():
            return ours.sim_matrix(ids, (ids != 0).long(), frames,
                                   torch.ones(len(frames), FRAMES)), model_cfg

    scale = expected.abs().max()
    scores, model_cfg = converted_scores(None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # --num-heads overrides the config
        guessed, _ = converted_scores(WIDTH // 64)
    return dict(
        heads=model_cfg['head']['num_heads'],
        max_rel_err=((scores - expected).abs().max() / scale).item(),
        guessed_heads_rel_diff=((guessed - expected).abs().max()
                                / scale).item(),
        score_spread=(expected.max() - expected.min()).item())


def main(source: Path, out: Path) -> None:
    from mmengine.registry import DefaultScope
    import_sdist_models(source)
    # mmaction2's configs run in its scope (the runner's default_scope).
    DefaultScope.get_instance('mmaction2_check', scope_name='mmaction')
    from mmaction.models.similarity import CLIPSimilarity

    import mmclip4clip  # noqa: F401  (registers our heads)
    sd = ref.make_openai_state_dict(**CLIP_KW)
    asked = install_clip_stand_in(sd)
    heads = {
        'MeanPHead': (dict(type='mmclip4clip.MeanPHead'), False),
        'SeqLSTMHead': (dict(type='mmclip4clip.SeqLSTMHead',
                             embed_dim=WIDTH), False),
        'SeqTransfHead': (dict(type='mmclip4clip.SeqTransfHead',
                               embed_dim=WIDTH, num_layers=2), True),
    }
    report = dict(
        similarity_file=inspect.getfile(CLIPSimilarity),
        stand_in_rel_err=check_stand_in(sd),
        heads={name: train_and_evaluate(cfg, init)
               for name, (cfg, init) in heads.items()},
        transformer_adapter=check_transformer_adapter(sd, out.parent))
    report['clip_archs_loaded'] = asked
    out.write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
    main(Path(sys.argv[1]), Path(sys.argv[2]))
