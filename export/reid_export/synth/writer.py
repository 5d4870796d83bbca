"""Plans the benchmark (identities, cameras, splits) and writes it in the layout of
docs/dataset_layout.md, atomically: everything goes to a hidden sibling folder that is renamed
into place once complete, so an interrupted run never looks finished and is redone next time.
"""
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from reid_sdk.layout import KEYPOINT_FORMAT, KEYPOINTS_FILE, TRACKLET_FILE, tracklet_name

from reid_export.synth.camera import sample_cameras
from reid_export.synth.config import GENERATOR_VERSION, SynthConfig
from reid_export.synth.identity import sample_identities
from reid_export.synth.render import render_tracklet

GENERATOR_NAME = "reid_export.synth"
DATASET_FILE = "dataset.json"
SPLITS = ("train", "query", "gallery")
#: Identity pools; each draws from its own random stream, so the test identities do not change
#: when the number of train identities does.
POOLS = ("test", "train", "distractor")
FRAME_SUFFIX = ".jpg"
#: Below this many frames the work is not worth starting worker processes for.
PARALLEL_MIN_FRAMES = 400

PROTOCOLS = {
    "same_clothes": "for each query, gallery tracklets of the same pid whose clothes_id differs "
                    "from the query's are ignored (neither match nor non-match)",
    "clothes_changing": "for each query, gallery tracklets of the same pid with the query's "
                        "clothes_id are ignored, so only the second outfit can match",
    "general": "all gallery tracklets count",
    "note": "gallery tracklets of the query's pid and camera are ignored in every protocol "
            "(the generator writes none); clothes_id = 2 * pid + outfit",
}


@dataclass(frozen=True)
class TrackletJob:
    """One tracklet to render and write."""
    split: str            # train | query | gallery
    role: str             # train | query | same_clothes | clothes_change | distractor
    pool: str             # test | train | distractor
    identity_index: int   # index within the pool
    pid: int
    camid: int
    outfit: int           # 0: first outfit, 1: second outfit
    number: int           # tracklet number within the pid, 1-based
    num_frames: int

    @property
    def name(self) -> str:
        return tracklet_name(self.pid, self.camid, self.number)

    @property
    def relative_dir(self) -> Path:
        return Path(self.split) / f"{self.pid:04d}" / self.name


@dataclass
class World:
    """Everything the benchmark is made of: config, seed, cameras, identities per pool, and the
    tracklets to render. Rendering a job depends only on the world and the job."""
    config: SynthConfig
    seed: int
    cameras: list
    identities: dict      # pool -> list of Identity
    jobs: list

    def render(self, job: TrackletJob, debug: bool = False):
        """The job's tracklet (a RenderedTracklet); its random stream is (seed, pool, identity,
        tracklet number), independent of every other tracklet."""
        stream = [self.seed, 4, POOLS.index(job.pool), job.identity_index, job.number]
        rng = np.random.default_rng(stream)
        identity = self.identities[job.pool][job.identity_index]
        return render_tracklet(identity, job.outfit, self.cameras[job.camid], job.num_frames,
                               self.config, rng, debug=debug)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def build_world(config: SynthConfig | None = None, seed: int = 0) -> World:
    """Draw cameras and identities and plan every tracklet of the benchmark."""
    config = config or SynthConfig()
    seed = _check_seed(seed)
    cameras = sample_cameras(config, seed)
    test = sample_identities(np.random.default_rng([seed, 2, 0]), config, config.num_test_ids)
    train = sample_identities(np.random.default_rng([seed, 2, 1]), config, config.num_train_ids,
                              avoid=test)
    distractor = sample_identities(np.random.default_rng([seed, 2, 2]), config,
                                   config.num_distractor_ids, avoid=test + train)
    identities = {"test": [i for i, _ in test], "train": [i for i, _ in train],
                  "distractor": [i for i, _ in distractor]}
    return World(config=config, seed=seed, cameras=cameras, identities=identities,
                 jobs=_plan(config, seed))


def _plan(config, seed):
    """The tracklets of every identity. pids: train 1.., then test, then distractors."""
    first_pid = {"train": 1, "test": 1 + config.num_train_ids,
                 "distractor": 1 + config.num_train_ids + config.num_test_ids}
    counts = {"train": config.num_train_ids, "test": config.num_test_ids,
              "distractor": config.num_distractor_ids}
    cameras = config.num_cameras
    jobs = []
    for pool in ("train", "test", "distractor"):
        for index in range(counts[pool]):
            rng = np.random.default_rng([seed, 3, POOLS.index(pool), index])
            order = [int(c) for c in rng.permutation(cameras)]
            others = order[1:] or order
            if pool == "train":
                entries = [("train", "train", order[k % cameras],
                            int(rng.random() < config.train_second_outfit_share))
                           for k in range(config.train_tracklets_per_id)]
            elif pool == "test":
                entries = [("query", "query", order[0], 0)] * config.queries_per_id
                entries += [("gallery", "same_clothes", others[k % len(others)], 0)
                            for k in range(config.gallery_same_clothes_per_id)]
                entries += [("gallery", "clothes_change",
                             others[(config.gallery_same_clothes_per_id + k) % len(others)], 1)
                            for k in range(config.gallery_clothes_change_per_id)]
            else:
                entries = [("gallery", "distractor", order[k % cameras], 0)
                           for k in range(config.gallery_same_clothes_per_id)]
            for number, (split, role, camid, outfit) in enumerate(entries, start=1):
                jobs.append(TrackletJob(
                    split=split, role=role, pool=pool, identity_index=index,
                    pid=first_pid[pool] + index, camid=camid, outfit=outfit, number=number,
                    num_frames=int(rng.integers(config.min_frames, config.max_frames + 1))))
    return jobs


def _keypoints_json(frame_names, keypoints):
    """keypoints.json text: one frame per line, values as the renderer rounded them."""
    rows = ",\n".join(f"{json.dumps(name)}: {json.dumps(k.tolist())}"
                      for name, k in zip(frame_names, keypoints))
    return f'{{"format": "{KEYPOINT_FORMAT}", "frames": {{\n{rows}\n}}}}\n'


def write_tracklet(world: World, job: TrackletJob, root: Path) -> tuple[int, int]:
    """Render `job` and write its folder under `root`. Returns (frames, bytes written)."""
    tracklet = world.render(job)
    folder = root / job.relative_dir
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{job.name}F{index:04d}{FRAME_SUFFIX}" for index in range(job.num_frames)]
    written = 0
    for name, frame in zip(names, tracklet.frames):
        buffer = io.BytesIO()
        frame.save(buffer, "JPEG", quality=world.config.jpeg_quality)
        data = buffer.getvalue()
        (folder / name).write_bytes(data)
        written += len(data)
    meta = {"pid": job.pid, "camid": job.camid, "outfit": job.outfit,
            "clothes_id": 2 * job.pid + job.outfit, "split": job.split, "role": job.role,
            "num_frames": job.num_frames, "generator": GENERATOR_NAME, **tracklet.meta}
    texts = {KEYPOINTS_FILE: _keypoints_json(names, tracklet.keypoints),
             TRACKLET_FILE: json.dumps(meta, indent=1, sort_keys=True) + "\n"}
    for file_name, text in texts.items():
        data = text.encode("utf-8")
        (folder / file_name).write_bytes(data)
        written += len(data)
    return job.num_frames, written


_WORKER_STATE = {}


def _start_worker(world, root):
    _WORKER_STATE["world"], _WORKER_STATE["root"] = world, root


def _worker_write(job):
    return write_tracklet(_WORKER_STATE["world"], job, _WORKER_STATE["root"])


def _dataset_record(world: World) -> dict:
    splits = {}
    for split in SPLITS:
        jobs = [job for job in world.jobs if job.split == split]
        if jobs:
            splits[split] = {"identities": len({job.pid for job in jobs}), "tracklets": len(jobs),
                             "frames": sum(job.num_frames for job in jobs)}
    return {
        "name": "reid-sdk synthetic video ReID benchmark",
        "layout": "docs/dataset_layout.md",
        "num_cameras": world.config.num_cameras,
        "splits": splits,
        "protocols": PROTOCOLS,
        "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": world.seed,
                      "config": world.config.to_dict()},
    }


def _read_record(root: Path):
    try:
        return json.loads((root / DATASET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _on_disk_counts(root: Path, split: str):
    """(tracklets, frames) actually present in a split folder."""
    tracklets = frames = 0
    split_dir = root / split
    if not split_dir.is_dir():
        return 0, 0
    for person in os.scandir(split_dir):
        if not person.is_dir():
            continue
        for folder in os.scandir(person.path):
            if folder.is_dir():
                tracklets += 1
                frames += sum(entry.name.endswith(FRAME_SUFFIX)
                              for entry in os.scandir(folder.path))
    return tracklets, frames


def is_complete(root, record: dict) -> bool:
    """Whether `root` holds a finished benchmark with exactly this dataset record (same
    generator version, seed and config) and every tracklet and frame it lists."""
    root = Path(root)
    if _read_record(root) != record:
        return False
    return all(_on_disk_counts(root, split) == (info["tracklets"], info["frames"])
               for split, info in record["splits"].items())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scratch_dirs(out: Path):
    """Leftovers of earlier runs next to `out`: (path, pid of the run that made it)."""
    prefix = f".{out.name}."
    if not out.parent.is_dir():
        return []
    found = []
    for entry in out.parent.iterdir():
        kind, _, pid = entry.name[len(prefix):].rpartition("-")
        if entry.name.startswith(prefix) and kind in ("partial", "old") and pid.isdigit():
            found.append((entry, int(pid)))
    return found


def _is_synth_benchmark(root: Path) -> bool:
    record = _read_record(root)
    return isinstance(record, dict) and record.get("generator", {}).get("name") == GENERATOR_NAME


class _Progress:
    def __init__(self, enabled, total_tracklets, total_frames):
        self.enabled, self.total, self.total_frames = enabled, total_tracklets, total_frames
        self.start = self.last = time.perf_counter()
        self.tracklets = self.frames = self.bytes = 0

    def update(self, frames, written):
        self.tracklets += 1
        self.frames += frames
        self.bytes += written
        now = time.perf_counter()
        if self.enabled and (now - self.last > 1.0 or self.tracklets == self.total):
            self.last = now
            rate = self.frames / max(now - self.start, 1e-9)
            print(f"synth: {self.tracklets}/{self.total} tracklets, "
                  f"{self.frames}/{self.total_frames} frames, {rate:.0f} frames/s",
                  file=sys.stderr, flush=True)

    @property
    def seconds(self):
        return time.perf_counter() - self.start


def generate(out_dir, config: SynthConfig | None = None, seed: int = 0, progress: bool = True,
             reuse: bool = True, workers: int | None = None) -> Path:
    """Generate the benchmark into `out_dir` (train/, query/, gallery/, dataset.json) and
    return its path.

    With `reuse`, a complete benchmark already there with the same config, seed and generator
    version is kept as it is. An incomplete or different synthetic benchmark there is replaced;
    any other non-empty folder is refused (FileExistsError). `workers` processes render in
    parallel (default: all CPUs); the output does not depend on it.
    """
    return write_world(out_dir, build_world(config, seed), progress=progress, reuse=reuse,
                       workers=workers)


def write_world(out_dir, world: World, progress: bool = True, reuse: bool = True,
                workers: int | None = None) -> Path:
    """:func:`generate` for a world :func:`build_world` has already drawn (so a caller that
    also draws pictures from it, as ``reid-export synth --pictures``, builds it once)."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, pid in _scratch_dirs(out):
        if not _process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
    record = _dataset_record(world)
    if reuse and is_complete(out, record):
        if progress:
            print(f"synth: reusing the complete benchmark in {out}", file=sys.stderr, flush=True)
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not _is_synth_benchmark(out):
        raise FileExistsError(
            f"{out} exists and is not a synthetic benchmark made by {GENERATOR_NAME} (no "
            f"{DATASET_FILE} of ours); choose a new or empty folder")

    scratch = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    total_frames = sum(job.num_frames for job in world.jobs)
    meter = _Progress(progress, len(world.jobs), total_frames)
    if progress:
        print(f"synth: generating {len(world.jobs)} tracklets ({total_frames} frames) into {out}",
              file=sys.stderr, flush=True)
    try:
        scratch.mkdir()
        workers = workers or len(os.sched_getaffinity(0))
        if workers <= 1 or total_frames < PARALLEL_MIN_FRAMES:
            for job in world.jobs:
                meter.update(*write_tracklet(world, job, scratch))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_start_worker, initargs=(world, scratch)) as pool:
                chunk = max(1, len(world.jobs) // (workers * 16))
                for result in pool.map(_worker_write, world.jobs, chunksize=chunk):
                    meter.update(*result)
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        (scratch / DATASET_FILE).write_text(text, encoding="utf-8")
        meter.bytes += len(text)
        _move_into_place(scratch, out, record)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if progress:
        print(f"synth: wrote {meter.tracklets} tracklets, {meter.frames} frames, "
              f"{meter.bytes / 1e6:.1f} MB in {meter.seconds:.1f} s "
              f"({meter.frames / max(meter.seconds, 1e-9):.0f} frames/s) to {out}",
              file=sys.stderr, flush=True)
    return out


def _move_into_place(scratch: Path, out: Path, record: dict):
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
    try:
        scratch.rename(out)
    except OSError:
        # Another run finished the same folder meanwhile: keep theirs if it is what we made.
        if not is_complete(out, record):
            raise
        shutil.rmtree(scratch, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
