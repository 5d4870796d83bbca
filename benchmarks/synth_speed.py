"""Speed and size of the synthetic benchmark generator (reid_export.synth).

    python benchmarks/synth_speed.py                       # demo and default presets
    python benchmarks/synth_speed.py --preset train --workers 16

Prints, per preset: frames, tracklets, wall seconds and frames/s of `generate`, the CPU seconds
spent (parent plus worker processes) and the frames per CPU-second, which is what an idle
machine reaches per core (wall figures suffer when other work shares the CPUs), and the size on
disk. Also the single-process split of one frame's cost: rendering vs JPEG encoding + writing.
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from reid_export.synth import SynthConfig, build_world, generate
from reid_export.synth.writer import write_tracklet


def _cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _disk_bytes(root):
    return sum(entry.stat().st_size for entry in Path(root).rglob("*") if entry.is_file())


def _frame_cost(world, folder, tracklets=40):
    """Single-process CPU microseconds per frame: render only, and render + encode + write."""
    jobs = world.jobs[:tracklets]
    frames = sum(job.num_frames for job in jobs)
    start = time.process_time()
    for job in jobs:
        world.render(job)
    render = time.process_time() - start
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        start = time.process_time()
        for job in jobs:
            write_tracklet(world, job, Path(scratch))
        total = time.process_time() - start
    return 1e6 * render / frames, 1e6 * total / frames


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append",
                        help="preset(s) to time (default: demo, default)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder to write the (temporary) benchmarks in; the file "
                                      "system matters (default: the system's temporary folder)")
    args = parser.parse_args(argv)
    presets = args.preset or ["demo", "default"]
    print(f"machine: {len(os.sched_getaffinity(0))} usable CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (wall figures are only meaningful on an idle machine)")
    for name in presets:
        config = SynthConfig.preset(name)
        world = build_world(config, args.seed)
        render_us, total_us = _frame_cost(world, args.out)
        print(f"[{name}] one process: render {render_us:.0f} us/frame, render + JPEG + write "
              f"{total_us:.0f} us/frame ({1e6 / total_us:.0f} frames per CPU-second)")
        jobs = world.jobs
        frames = sum(job.num_frames for job in jobs)
        with tempfile.TemporaryDirectory(dir=args.out) as scratch:
            cpu0, wall0 = _cpu_seconds(), time.perf_counter()
            root = generate(Path(scratch) / f"synth-{name}", config, seed=args.seed,
                            progress=False, reuse=False, workers=args.workers)
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            size = _disk_bytes(root)
        print(f"[{name}] generate: {len(jobs)} tracklets, {frames} frames in {wall:.1f} s wall = "
              f"{frames / wall:.0f} frames/s; {cpu:.1f} CPU-s = {frames / cpu:.0f} frames per "
              f"CPU-second; {size / 1e6:.1f} MB on disk ({size / frames / 1e3:.1f} kB/frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
