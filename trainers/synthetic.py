"""`python -m trainers.synthetic`: write a generated task as a folder of class subfolders.

The tasks themselves are `trainers.data.synthetic`.

    python -m trainers.synthetic --task target --classes 8 --images-per-class 50 --out data/target
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import get_args

from trainers.data.synthetic import Task, write_image_folder
from trainers.installation import add_version_option


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.synthetic",
        description="Write a generated task as a folder of class subfolders of PNG images.",
    )
    add_version_option(parser)
    parser.add_argument("--task", choices=get_args(Task), default="target")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--images-per-class", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder to create")
    args = parser.parse_args(argv)
    try:
        root = write_image_folder(
            args.out,
            args.task,
            num_classes=args.classes,
            images_per_class=args.images_per_class,
            image_size=args.image_size,
            seed=args.seed,
        )
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(
        f"wrote {args.classes * args.images_per_class} images in {args.classes} classes to {root}"
    )


if __name__ == "__main__":
    main()
