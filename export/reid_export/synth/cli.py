"""`reid-export synth OUT [--preset NAME] [--seed N] [--set FIELD=VALUE ...]`: write the
synthetic benchmark (also `python -m reid_export.synth`)."""
import argparse
import json
import sys
from dataclasses import fields

from reid_export.synth.config import PRESETS, SynthConfig


def _config_from_args(parser, args) -> SynthConfig:
    types = {f.name: f.type for f in fields(SynthConfig)}
    changes = {}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or name not in types:
            parser.error(f"--set takes FIELD=VALUE with FIELD one of {sorted(types)}; got {item!r}")
        try:
            changes[name] = int(text) if types[name] is int else float(text)
        except ValueError:
            parser.error(f"--set {name}: {text!r} is not a number")
    try:
        return SynthConfig.preset(args.preset, **changes)
    except ValueError as error:
        parser.error(str(error))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="reid-export synth",
        description="Generate the synthetic multi-camera video ReID benchmark (train / query / "
                    "gallery tracklet folders with COCO-17 keypoints; docs/synth.md).")
    parser.add_argument("out", help="output folder (created; an existing complete benchmark with "
                                    "the same config and seed is reused)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="benchmark size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one SynthConfig field, e.g. --set num_test_ids=50 "
                             "(repeatable)")
    parser.add_argument("--workers", type=int, default=None,
                        help="render processes (default: all CPUs; the output does not depend "
                             "on it)")
    parser.add_argument("--no-reuse", action="store_true", help="regenerate even if complete")
    parser.add_argument("--pictures", metavar="DIR",
                        help="also write sample pictures (contact sheet, keypoints, part "
                             "labels) into this folder")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    config = _config_from_args(parser, args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")

    from reid_export.synth.writer import build_world, write_world

    world = build_world(config, args.seed)
    try:
        root = write_world(args.out, world, progress=not args.quiet, reuse=not args.no_reuse,
                           workers=args.workers)
    except FileExistsError as error:
        print(f"reid-export synth: {error}", file=sys.stderr)
        return 1
    if args.pictures:
        from reid_export.synth.sheet import write_pictures

        for path in write_pictures(world, args.pictures):
            print(path, file=sys.stderr)
    print(root)
    return 0
