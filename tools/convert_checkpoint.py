"""Convert a CLIP or CLIP4Clip checkpoint into mmclip4clip weights + config.

    python tools/convert_checkpoint.py SRC OUT_DIR --format {openai,clip4clip,mmaction2}
        [--sim-header {meanP,seqLSTM,seqTransf,tightTransf}] [--linear-patch {2d,3d}]
        [--max-words 32] [--max-frames 12] [--base-config CONFIG] [--allow-pickle]
        [--num-heads N]

Writes OUT_DIR/model.pth and OUT_DIR/config.py, so that
``python tools/test.py OUT_DIR/config.py OUT_DIR/model.pth`` evaluates it on
the base config's data (MSR-VTT 1k-A by default).
"""
import argparse
import pickle
import sys
from pathlib import Path

import mmclip4clip  # noqa: F401  (registers every component)
from mmclip4clip.models.checkpoints.export import export_converted
from mmclip4clip.models.checkpoints.retriever import FORMATS, SIM_HEADERS

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs/retrieval/clip4clip'
DEFAULT_BASE = CONFIG_DIR / (
    'clip4clip_vit-base-p32-res224-clip-pre_8xb16-u12-5e_msrvtt-9k-rgb.py')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('out_dir', help='folder for model.pth and config.py')
    parser.add_argument('--format', required=True, choices=FORMATS,
                        help='openai: an OpenAI CLIP .pt archive; clip4clip: '
                        'the original pytorch_model.bin.N; mmaction2: an '
                        'mmaction2 CLIP4Clip checkpoint')
    parser.add_argument('--sim-header', choices=SIM_HEADERS,
                        help='head (openai: default meanP; clip4clip: read off '
                        'the weights, a different value is an error)')
    parser.add_argument('--linear-patch', choices=('2d', '3d'),
                        help='default: 3d when the weights hold the 3-D conv')
    parser.add_argument('--max-words', type=int, default=32)
    parser.add_argument('--max-frames', type=int, default=12)
    parser.add_argument('--base-config', default=str(DEFAULT_BASE),
                        help='config whose data, schedule and runtime the '
                        'written config keeps (default: %(default)s)')
    parser.add_argument('--num-heads', type=int,
                        help='mmaction2 only: attention heads of the '
                        'TransformerAdapter (default: the config stored in '
                        'the checkpoint; the weights do not tell)')
    parser.add_argument('--allow-pickle', action='store_true',
                        help='load a trusted checkpoint that holds pickled '
                        'objects, or an OpenAI archive with torch.jit.load '
                        '(either can run code from the file)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        ckpt, cfg = export_converted(
            args.src, args.out_dir, args.format, args.base_config,
            sim_header=args.sim_header, linear_patch=args.linear_patch,
            max_words=args.max_words, max_frames=args.max_frames,
            allow_pickle=args.allow_pickle, num_heads=args.num_heads)
    except (ValueError, FileNotFoundError, pickle.UnpicklingError) as err:
        # A bad, foreign or unsafe file: one line naming it, no traceback.
        sys.exit(f'error: {err}')
    print(f'wrote {ckpt}\nwrote {cfg}\n'
          f'evaluate: python tools/test.py {cfg} {ckpt}')


if __name__ == '__main__':
    main()
