"""Reading the tracklet directory layout of docs/dataset_layout.md (runtime side: numpy and
Pillow only).

    tracklets = scan("bench/query")            # every tracklet folder under a root, sorted
    frames = load_frames(tracklets[0])         # uint8 [H, W, 3] RGB arrays (load_image: one)
    crop = middle_frame(tracklets[0])          # the frame a rank-list picture shows
    keypoints = load_keypoints(tracklets[0])   # float32 [T, 17, 3] (x, y, conf) or None
    embeddings = embed_tracklets(engine, tracklets)   # [N, D] through a reid_sdk.Engine

A tracklet folder is any folder that directly holds image files; frames are taken in sorted
file-name order. Identity and camera come from `tracklet.json` when it has them, else from the
folder name `<pid>C<camera, 1-based>T<n>`; they are None when neither says.
"""
import json
import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reid_sdk.errors import InputError

# Tracklets whose frames are loaded and embedded per engine call: bounds memory on large
# folders while keeping the engine's batches full.
TRACKLETS_PER_CALL = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
KEYPOINTS_FILE = "keypoints.json"
TRACKLET_FILE = "tracklet.json"
KEYPOINT_FORMAT = "coco17"
NUM_JOINTS = 17
_TRACKLET_NAME = re.compile(r"^(\d+|0*-0*1)C(\d+)T(\d+)$")  # MARS writes distractors 00-1


@dataclass
class Tracklet:
    """One tracklet folder. `pid` (-1 marks a distractor) and `camid` (0-based) are None when
    neither tracklet.json nor the folder name gives them; `frames` are in temporal order;
    `keypoints_path` is None when the folder has no keypoints.json; `meta` is the content of
    tracklet.json ({} without one)."""
    path: Path
    pid: int | None
    camid: int | None
    frames: list[Path]
    keypoints_path: Path | None
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def tracklet_name(pid: int, camid: int, number: int) -> str:
    """The folder name of a tracklet: `<pid, 4 digits>C<camid + 1>T<number, 4 digits>`
    (distractors, pid -1, are written `00-1`, as in MARS)."""
    if pid < -1 or camid < 0 or number < 0:
        raise ValueError(f"need pid >= -1, camid >= 0, number >= 0 (got {pid}, {camid}, {number})")
    person = "00-1" if pid == -1 else f"{pid:04d}"
    return f"{person}C{camid + 1}T{number:04d}"


def parse_tracklet_name(name: str) -> tuple[int, int] | None:
    """(pid, camid 0-based) from a folder name `<pid>C<cam 1-based>T<n>`, or None if it does
    not follow the pattern (or names camera 0, which the 1-based rule does not allow)."""
    match = _TRACKLET_NAME.match(name)
    if match is None or int(match.group(2)) < 1:
        return None
    pid = -1 if "-" in match.group(1) else int(match.group(1))
    return pid, int(match.group(2)) - 1


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _read_json(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}; check the file "
                         "exists and is readable") from error
    try:
        return json.loads(text)
    except ValueError as error:
        raise InputError(f"{what} {path} is not valid JSON ({error}); regenerate it or remove it "
                         "(it is optional)") from error


def _tracklet_ids(folder: Path, meta: dict, meta_path: Path):
    from_name = parse_tracklet_name(folder.name)
    pid, camid = from_name if from_name is not None else (None, None)
    if "pid" in meta:
        pid = meta["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < -1:
            raise InputError(f"{meta_path}: 'pid' must be an integer >= -1 (-1 marks a "
                             f"distractor), got {pid!r}")
    if "camid" in meta:
        camid = meta["camid"]
        if isinstance(camid, bool) or not isinstance(camid, int) or camid < 0:
            raise InputError(f"{meta_path}: 'camid' must be a 0-based integer camera index, "
                             f"got {camid!r}")
    return pid, camid


def _tracklet(folder: Path, image_names: list[str], file_names: set[str]) -> Tracklet:
    meta = {}
    meta_path = folder / TRACKLET_FILE
    if TRACKLET_FILE in file_names:
        meta = _read_json(meta_path, TRACKLET_FILE)
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path} must hold a JSON object such as "
                             f'{{"pid": 3, "camid": 0}}, got {type(meta).__name__}')
    pid, camid = _tracklet_ids(folder, meta, meta_path)
    return Tracklet(path=folder, pid=pid, camid=camid,
                    frames=[folder / name for name in sorted(image_names)],
                    keypoints_path=(folder / KEYPOINTS_FILE if KEYPOINTS_FILE in file_names
                                    else None),
                    meta=meta)


def scan(root) -> list[Tracklet]:
    """Every tracklet folder at or under `root` (a split folder, a dataset root, or one
    tracklet folder), in sorted path order. Hidden files and folders are skipped.

    Raises InputError when `root` is not a folder or holds no tracklet folder, and when a
    tracklet.json is malformed."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; pass a folder of tracklet folders (see "
                         "docs/dataset_layout.md)")
    tracklets = []
    for current, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        images = [name for name in files if _is_image(name)]
        if images:
            tracklets.append(_tracklet(Path(current), images, set(files)))
    if not tracklets:
        raise InputError(f"no tracklet folders under {root}: a tracklet folder directly holds "
                         f"frames ({', '.join(IMAGE_SUFFIXES)}); see docs/dataset_layout.md")
    return tracklets


def load_image(path) -> np.ndarray:
    """One frame as a uint8 [H, W, 3] RGB array (grey, palette and RGBA images are converted
    as PIL's convert("RGB") does). Raises InputError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(f"cannot read frame {path}: {error}; replace or remove the "
                         "file") from error


def load_frames(tracklet: Tracklet) -> list[np.ndarray]:
    """The tracklet's frames as uint8 [H, W, 3] RGB arrays (sizes may differ between frames)."""
    return [load_image(path) for path in tracklet.frames]


def middle_frame(tracklet: Tracklet) -> np.ndarray:
    """The tracklet's middle frame (index T // 2) as a uint8 [H, W, 3] RGB array: the crop that
    represents a tracklet in a rank-list picture."""
    if not tracklet.frames:
        raise InputError(f"{tracklet.path} has no frames; a tracklet folder must hold at least "
                         f"one image ({', '.join(IMAGE_SUFFIXES)})")
    return load_image(tracklet.frames[len(tracklet.frames) // 2])


class MiddleFrames(Sequence):
    """A read-only sequence of the middle frames of ``tracklets`` (:func:`middle_frame`), each
    read from disk when indexed and not kept: ``len(frames) == len(tracklets)`` and
    ``frames[i]`` is uint8 [H, W, 3]. For rank-list pictures, which show a few of many
    tracklets (``reid_sdk.visualize.rank_list_picture(..., MiddleFrames(gallery), ...)``)."""

    def __init__(self, tracklets: Sequence):
        self._tracklets = tracklets

    def __len__(self) -> int:
        return len(self._tracklets)

    def __getitem__(self, index) -> np.ndarray:
        return middle_frame(self._tracklets[operator.index(index)])


def load_keypoints(tracklet: Tracklet) -> np.ndarray | None:
    """COCO-17 keypoints of every frame, float32 [T, 17, 3] (x, y in that frame's crop pixels,
    confidence in [0, 1]), in frame order; None when the tracklet has no keypoints.json.

    Raises InputError, naming the file, when the JSON is malformed, a frame has no entry, an
    entry is not 17 rows of [x, y, conf], a value is not finite, or a confidence is outside [0, 1].
    """
    path = tracklet.keypoints_path
    if path is None:
        return None
    document = _read_json(path, KEYPOINTS_FILE)
    fix = f"regenerate {path} or remove it (keypoints are optional)"
    if not isinstance(document, dict) or not isinstance(document.get("frames"), dict):
        raise InputError(f'{path} must be an object with a "frames" object mapping frame file '
                         f'names to 17 [x, y, conf] rows; {fix}')
    if document.get("format", KEYPOINT_FORMAT) != KEYPOINT_FORMAT:
        raise InputError(f"{path} has format {document['format']!r}; only {KEYPOINT_FORMAT!r} "
                         f"(COCO-17 joint order) is supported; {fix}")
    entries = document["frames"]
    missing = [frame.name for frame in tracklet.frames if frame.name not in entries]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        shown = ", ".join(missing[:3]) + more
        raise InputError(f"{path} has no keypoints for {len(missing)} of {len(tracklet.frames)} "
                         f"frames ({shown}); every frame needs an entry; {fix}")
    keypoints = np.empty((len(tracklet.frames), NUM_JOINTS, 3), np.float32)
    for index, frame in enumerate(tracklet.frames):
        entry = entries[frame.name]
        try:
            values = np.asarray(entry, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.shape != (NUM_JOINTS, 3):
            got = "non-numeric values" if values is None else f"shape {list(values.shape)}"
            raise InputError(f"{path}: the entry for {frame.name} must be {NUM_JOINTS} rows of "
                             f"[x, y, conf], got {got}; {fix}")
        if not np.all(np.isfinite(values)):
            joint = int(np.argwhere(~np.isfinite(values))[0, 0])
            raise InputError(f"{path}: the entry for {frame.name} has a non-finite value at joint "
                             f"{joint}; write undetected joints as [0, 0, 0]; {fix}")
        confidence = values[:, 2]
        if np.any((confidence < 0) | (confidence > 1)):
            joint = int(np.argmax((confidence < 0) | (confidence > 1)))
            raise InputError(f"{path}: the entry for {frame.name} has confidence "
                             f"{confidence[joint]:g} at joint {joint}, outside [0, 1]; {fix}")
        keypoints[index] = values
    return keypoints


def embed_tracklets(engine, tracklets: list, *, camera: int | None = None,
                    progress: bool | None = None) -> np.ndarray:
    """[N, D] embeddings of layout tracklets through ``engine`` (a reid_sdk.Engine), loading
    frames, keypoints.json and cameras as the engine's spec needs them, TRACKLETS_PER_CALL
    tracklets per engine call (memory stays bounded on large folders, batches stay full).

    camera: one camera index for every tracklet instead of each tracklet's own.
    """
    from reid_sdk.backends import extra_input_name
    from reid_sdk.progress import ProgressBar

    spec = engine.spec
    wants_keypoints = extra_input_name(spec, "keypoints") is not None
    wants_camera = extra_input_name(spec, "camera") is not None
    out = np.empty((len(tracklets), spec.embedding_dim), dtype=np.float32)
    with ProgressBar(len(tracklets), desc=f"embed {spec.arch}", unit="tracklets",
                     enabled=progress) as bar:
        for start in range(0, len(tracklets), TRACKLETS_PER_CALL):
            group = tracklets[start:start + TRACKLETS_PER_CALL]
            frames = [load_frames(t) for t in group]
            keypoints = None
            if wants_keypoints:
                keypoints = []
                for t in group:
                    points = load_keypoints(t)
                    if points is None:
                        raise InputError(
                            f"{t.path} has no keypoints.json, and this {spec.arch} engine needs "
                            "COCO-17 keypoints per frame (docs/dataset_layout.md)")
                    keypoints.append(points)
            cameras = [tracklet_camera(spec, t, camera) for t in group] if wants_camera else None
            out[start:start + len(group)] = engine.embed(frames, keypoints=keypoints,
                                                         camera=cameras, progress=False)
            bar.update(len(group))
    return out


def tracklet_camera(spec, tracklet: "Tracklet", camera: int | None = None) -> int | None:
    """The camera index to embed ``tracklet`` with, checked here so that errors name the
    folder."""
    chosen = tracklet.camid if camera is None else camera
    unseen = spec.unseen_camera_index
    if chosen is None and unseen is None:
        raise InputError(f"{tracklet.path} has no camera (neither tracklet.json nor a "
                         f"<pid>C<cam>T<n> folder name gives one) and this {spec.arch} engine "
                         "needs one: pass a camera index (reid-sdk: --camera N)")
    if chosen is not None and not (0 <= chosen < spec.num_cameras or chosen == unseen):
        raise InputError(f"{tracklet.path} has camera {chosen} (0-based), but this {spec.arch} "
                         f"engine knows cameras 0..{spec.num_cameras - 1}: pass a camera it knows "
                         "(reid-sdk: --camera N)" + ("" if unseen is None else
                                              f", or {unseen} for its unseen-camera row"))
    return chosen


def evaluate_tracklets(q_tracklets, q_embeddings, g_tracklets, g_embeddings,
                       metric: str) -> dict:
    """Retrieval figures of embedded layout tracklets: {protocol: {"Rank-1", "Rank-5",
    "Rank-10", "mAP", "mINP"}} for the standard protocol and, when every tracklet.json records
    an ``outfit``, the same-clothes and clothes-changing protocols
    (:func:`reid_sdk.metrics.evaluate_protocols`). metric: the engine spec's metric."""
    from reid_sdk.metrics import cmc_summary, distance_matrix, evaluate_protocols

    def column(tracklets, key):
        values = [getattr(t, key) if key in ("pid", "camid") else t.meta.get(key)
                  for t in tracklets]
        return None if any(v is None for v in values) else np.array(values)

    q_outfits, g_outfits = column(q_tracklets, "outfit"), column(g_tracklets, "outfit")
    if q_outfits is None or g_outfits is None:
        q_outfits = g_outfits = None
    results = evaluate_protocols(distance_matrix(q_embeddings, g_embeddings, metric),
                                 column(q_tracklets, "pid"), column(g_tracklets, "pid"),
                                 column(q_tracklets, "camid"), column(g_tracklets, "camid"),
                                 q_outfits, g_outfits)
    return {name: cmc_summary(result) for name, result in results.items()}
