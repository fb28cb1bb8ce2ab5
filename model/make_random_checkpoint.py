"""Write an official-format SAM 2 checkpoint ({"model": state_dict}) with seeded random weights.

Tests and benchmarks use these because no real weights can be downloaded in CI. The keys and shapes are
exactly those of Meta's checkpoints for the chosen config; every float tensor is random (see
napari_sam2.model.random_weights for the laws).

usage: python model/make_random_checkpoint.py CONFIG OUT.pt [--seed N] [--object-score-bias B] [--image-size S]
  CONFIG  an official config name: sam2_hiera_{t,s,b+,l} or sam2.1_hiera_{t,s,b+,l}
"""

import argparse

from napari_sam2.model.configs import get_config
from napari_sam2.model.random_weights import write_random_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--object-score-bias",
        type=float,
        default=4.0,
        help="last bias of the object-score head: +4 object present, -4 absent",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="build at another input size (stored in the checkpoint as a custom config)",
    )
    args = parser.parse_args(argv)
    cfg = get_config(args.config)
    if args.image_size:
        cfg = cfg.replace(image_size=args.image_size, name=f"{cfg.name}@{args.image_size}")
    path = write_random_checkpoint(cfg, args.out, seed=args.seed, object_score_bias=args.object_score_bias)
    print(f"wrote {path} ({cfg.name}, seed {args.seed}, object-score bias {args.object_score_bias:+g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
