"""``reid_sdk.Engine``: tracklets of person crops in, one embedding per tracklet out.

    engine = reid_sdk.Engine("hamobe.onnx")              # or .plan / .engine (TensorRT)
    emb = engine.embed([crops_a, crops_b])               # [2, D] float32

The engine carries the whole preprocessing contract from its spec (ARCHITECTURE.md 3, 4.1):
clip sampling and aggregation of the official test protocol (:mod:`reid_sdk.clips`), the
geometric preprocessing with Pillow (:mod:`reid_sdk.preprocess`); colour scaling and mean/std run
inside the graph. Clips of many tracklets are batched together up to the engine's batch limit,
and the crops of the next batches are preprocessed in a thread pool while the engine runs.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from reid_sdk.backends import Backend, extra_input_name, file_sha256, open_backend
from reid_sdk.clips import aggregate_clips, plan_clips
from reid_sdk.errors import BackendError, InputError
from reid_sdk.preprocess import (Preprocessor, check_color, check_crop, default_threads,
                                 submit_frames)
from reid_sdk.progress import ProgressBar
from reid_sdk.spec import EngineSpec

# Batches whose crops are queued for preprocessing ahead of the one the engine runs.
PREFETCH_BATCHES = 2
# Inputs of at least this many clips show a progress bar when stderr is a terminal.
PROGRESS_MIN_CLIPS = 64


@dataclasses.dataclass(frozen=True)
class ClipEmbeddings:
    """The per-clip level of an embed call (C clips of T frames, N tracklets).

    frame_index: [C, T] int64, the frame of its tracklet in each slot of each clip;
    frame_valid: [C, T] bool, False for loop-padding slots;
    tracklet_index: [C] int64, the tracklet each clip belongs to (clips are in tracklet order);
    embeddings: [C, D] float32, the engine output per clip;
    num_tracklets: N.
    """

    frame_index: np.ndarray
    frame_valid: np.ndarray
    tracklet_index: np.ndarray
    embeddings: np.ndarray
    num_tracklets: int


@dataclasses.dataclass
class _Request:
    """One embed call's validated input, flattened over tracklets (F frames in all)."""

    crops: list            # F checked crops, tracklet after tracklet
    crop_hw: np.ndarray    # [F, 2] int32 (height, width) of each original crop
    lengths: np.ndarray    # [N] frames per tracklet
    keypoints: np.ndarray | None  # [F, J, 3] float32
    cameras: np.ndarray | None    # [N] int64

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


def _check_threads(preprocess_threads) -> None:
    if preprocess_threads is not None and (not _is_int(preprocess_threads)
                                           or preprocess_threads < 0):
        raise InputError(f"preprocess_threads must be an int >= 0 or None, got "
                         f"{preprocess_threads!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class Engine:
    """A re-identification engine: an ``.onnx`` model (ONNX Runtime) or a ``.plan`` /
    ``.engine`` file (TensorRT), with the engine spec it carries.

    path: the engine file. backend: ``"onnxruntime"`` / ``"tensorrt"``, or None to choose by
    suffix. providers: ONNX Runtime execution providers in order of preference (names, or
    ``(name, options)`` pairs as onnxruntime takes them); None takes the
    first of TensorRT EP, CUDA EP, CPU EP that is available and starts (a listed provider that
    fails to start is skipped with a RuntimeWarning). device: CUDA device index. max_batch: clips
    per engine run (default: 8 on CPU, 32 on a GPU provider, the profile maximum for TensorRT, or
    the graph's fixed batch). preprocess_threads: threads for the Pillow preprocessing (default:
    CPU count, at most 8; 0 preprocesses in the calling thread, without overlap).

    ``embed`` may be called from several threads at once on one Engine; results equal those of
    sequential calls.
    """

    def __init__(self, path: str | os.PathLike, *, backend: str | None = None,
                 providers: Sequence | str | None = None, device: int = 0,
                 max_batch: int | None = None, preprocess_threads: int | None = None):
        _check_threads(preprocess_threads)
        self._attach(open_backend(path, backend=backend, providers=providers, device=device,
                                  max_batch=max_batch), preprocess_threads)

    @classmethod
    def from_backend(cls, backend: Backend, *, preprocess_threads: int | None = None) -> "Engine":
        """An Engine over an already opened :class:`~reid_sdk.backends.Backend` (for example
        reid-export's PyTorch reference backend), with the same preprocessing, clip sampling,
        batching and aggregation as a file-backed Engine."""
        if not isinstance(backend, Backend):
            raise InputError(f"from_backend needs a reid_sdk.backends.Backend, got "
                             f"{type(backend).__name__}")
        _check_threads(preprocess_threads)
        engine = cls.__new__(cls)
        engine._attach(backend, preprocess_threads)
        return engine

    def _attach(self, backend: Backend, preprocess_threads: int | None) -> None:
        self._backend = backend
        self._preprocessor = Preprocessor(self.spec.input)
        self._threads = default_threads() if preprocess_threads is None else preprocess_threads
        self._executor = None
        self._executor_lock = threading.Lock()
        self._sha256 = getattr(self._backend, "sha256", None)
        self._closed = False

    # -- description ---------------------------------------------------------------------------
    @property
    def spec(self) -> EngineSpec:
        """The engine spec (:class:`reid_sdk.spec.EngineSpec`)."""
        return self._backend.spec

    @property
    def max_batch(self) -> int:
        return self._backend.max_batch

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def providers(self) -> list[str]:
        """What actually runs the graph: the ONNX Runtime execution providers in use, in order
        (e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``), or ``["TensorRT <version>"]``
        for a TensorRT engine. Cheap, unlike :meth:`info`, which hashes the engine file."""
        return list(self._backend.providers)

    def info(self) -> dict:
        """What this engine is and how it runs: path, backend, providers in use, device, a spec
        summary, graph inputs / outputs with shapes (None = dynamic), batch range, sha256 of the
        file."""
        backend = self._backend
        if self._sha256 is None:
            self._sha256 = file_sha256(backend.path)
        spec = self.spec
        return {
            "path": backend.path,
            "backend": backend.name,
            "providers": self.providers,
            "device": backend.device,
            "spec": {
                "arch": spec.arch, "preset": spec.data.get("preset"),
                "frames_per_clip": spec.frames_per_clip,
                "input": {"height": spec.height, "width": spec.width,
                          "color": spec.input["color"], "resize": spec.resize},
                "clips": spec.clips, "aggregate": spec.aggregate, "output_l2": spec.output_l2,
                "embedding_dim": spec.embedding_dim, "metric": spec.metric,
                "precision": spec.precision, "custom_ops": spec.custom_ops,
                "extra_inputs": sorted(spec.extra_inputs), "source": spec.source,
            },
            "inputs": [t.as_dict() for t in backend.inputs],
            "outputs": [t.as_dict() for t in backend.outputs],
            "min_batch": backend.min_batch,
            "max_batch": backend.max_batch,
            "preprocess_threads": self._threads,
            "sha256": self._sha256,
        }

    def __repr__(self) -> str:
        return (f"Engine({self._backend.path!r}, backend={self._backend.name!r}, "
                f"providers={self.providers}, spec={self.spec!r})")

    # -- embedding -----------------------------------------------------------------------------
    def embed(self, tracklets, *, keypoints=None, camera=None, color: str = "RGB",
              batch_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """One embedding per tracklet: ``[N, D]`` float32.

        tracklets: a list of N tracklets, each a sequence of uint8 crops ``HxWx3`` of any size
            (or a uint8 array ``[T, H, W, 3]``), or one uint8 array ``[N, T, H, W, 3]``.
            Grayscale crops (``HxW``, ``HxWx1``) are converted by repeating the channel and
            4-channel crops by dropping alpha, as ``PIL.Image.convert("RGB")`` in the official
            loaders does; other dtypes and shapes, empty tracklets and zero-size crops raise
            :class:`~reid_sdk.errors.InputError`.
        keypoints: for engines whose spec has a keypoints input (KeyRe-ID), per tracklet one
            ``[J, 3]`` array per frame (COCO-17: x, y, confidence in pixels of that crop;
            undetected joints [0, 0, 0]) as a ``[T_i, J, 3]`` array or a list of them, or one
            ``[N, T, J, 3]`` array. None for engines without that input.
        camera: for engines with a camera input, an index in ``0..num_cameras-1`` for all
            tracklets or a sequence of N of them; None (also per tracklet) only where the spec
            has an unseen-camera row, which is then used.
        color: ``"RGB"`` or ``"BGR"``: channel order of the crops.
        batch_size: clips per engine run, at most the engine's ``max_batch`` (default).
        progress: show a progress bar on stderr (None: only on a terminal and for long inputs).

        Clips are sampled as the spec's official test protocol says; the clip embeddings of each
        tracklet are averaged (``spec.aggregate``) and L2-normalised when ``spec.output_l2``.
        """
        clips = self.embed_clips(tracklets, keypoints=keypoints, camera=camera, color=color,
                                 batch_size=batch_size, progress=progress)
        return aggregate_clips(clips.embeddings, clips.tracklet_index, clips.num_tracklets,
                               how=self.spec.aggregate, l2=self.spec.output_l2)

    def embed_clips(self, tracklets, *, keypoints=None, camera=None, color: str = "RGB",
                    batch_size: int | None = None,
                    progress: bool | None = None) -> ClipEmbeddings:
        """Like :meth:`embed`, but returns the per-clip level (:class:`ClipEmbeddings`): which
        frames form each clip, which tracklet it belongs to, and its embedding."""
        if self._closed:
            raise BackendError("this Engine was closed; create a new one")
        check_color(color)
        size = self._batch_size(batch_size)
        request = self._request(tracklets, keypoints, camera)
        plans = [plan_clips(self.spec.clips, int(n)) for n in request.lengths]
        seq_len = self.spec.frames_per_clip
        frame_index = (np.concatenate([p[0] for p in plans]) if plans
                       else np.zeros((0, seq_len), np.int64))
        frame_valid = (np.concatenate([p[1] for p in plans]) if plans
                       else np.zeros((0, seq_len), bool))
        owner = np.repeat(np.arange(len(plans), dtype=np.int64), [len(p[0]) for p in plans])
        embeddings = self._run_clips(request, frame_index, frame_valid, owner, size, color,
                                     progress)
        return ClipEmbeddings(frame_index, frame_valid, owner, embeddings, len(plans))

    # -- validation ----------------------------------------------------------------------------
    def _batch_size(self, batch_size) -> int:
        if batch_size is None:
            return self.max_batch
        if not _is_int(batch_size) or not 1 <= batch_size <= self.max_batch:
            raise InputError(f"batch_size must be an int in 1..{self.max_batch} (this engine's "
                             f"max_batch), got {batch_size!r}")
        return int(batch_size)

    def _request(self, tracklets, keypoints, camera) -> _Request:
        frames = _collect_tracklets(tracklets)
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        crops = [crop for tracklet in frames for crop in tracklet]
        crop_hw = np.array([c.shape[:2] for c in crops], dtype=np.int32).reshape(-1, 2)
        return _Request(crops, crop_hw, lengths, self._collect_keypoints(keypoints, lengths),
                        self._collect_cameras(camera, len(frames)))

    def _collect_keypoints(self, keypoints, lengths: np.ndarray) -> np.ndarray | None:
        spec = self.spec
        if extra_input_name(spec, "keypoints") is None:
            if keypoints is not None:
                raise InputError(f"this {spec.arch} engine takes no keypoints; pass "
                                 "keypoints=None")
            return None
        joints = spec.extra_inputs["keypoints"]["num_joints"]
        layout = (f"per tracklet one [{joints}, 3] array per frame (x, y, confidence in pixels "
                  "of that crop; undetected joints [0, 0, 0])")
        if keypoints is None:
            raise InputError(f"this {spec.arch} engine needs keypoints: {layout}")
        if isinstance(keypoints, np.ndarray) and keypoints.ndim != 4:
            raise InputError(f"keypoints as one array must be [N, T, {joints}, 3], got shape "
                             f"{keypoints.shape}; or give {layout}")
        per_tracklet = list(keypoints)
        if len(per_tracklet) != len(lengths):
            raise InputError(f"got keypoints for {len(per_tracklet)} tracklets but "
                             f"{len(lengths)} tracklets: {layout}")
        arrays = []
        for i, (points, n) in enumerate(zip(per_tracklet, lengths)):
            try:
                array = np.asarray(points, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InputError(f"keypoints of tracklet {i} are not numeric arrays ({exc}): "
                                 f"{layout}") from None
            if array.ndim != 3 or array.shape[1:] != (joints, 3):
                raise InputError(f"keypoints of tracklet {i} have shape {array.shape}, expected "
                                 f"[{n}, {joints}, 3]: {layout}")
            if array.shape[0] != n:
                raise InputError(f"tracklet {i} has {n} frames but {array.shape[0]} keypoint "
                                 f"arrays: {layout}")
            bad = ~np.isfinite(array).all(axis=(1, 2))
            if bad.any():
                raise InputError(f"keypoints of tracklet {i} hold NaN or infinite values at "
                                 f"frame(s) {np.flatnonzero(bad)[:8].tolist()}: write undetected "
                                 "joints as [0, 0, 0]")
            arrays.append(array)
        if not arrays:
            return np.zeros((0, joints, 3), np.float32)
        return np.concatenate(arrays)

    def _collect_cameras(self, camera, count: int) -> np.ndarray | None:
        spec = self.spec
        if extra_input_name(spec, "camera") is None:
            if camera is not None:
                raise InputError(f"this {spec.arch} engine takes no camera; pass camera=None")
            return None
        num, unseen = spec.num_cameras, spec.unseen_camera_index
        if camera is None or isinstance(camera, (str, bytes)) or np.ndim(camera) == 0:
            values = [camera] * count
        else:
            values = list(camera)
            if len(values) != count:
                raise InputError(f"got {len(values)} cameras for {count} tracklets: pass one "
                                 "camera index, or one per tracklet")
        allowed = f"0..{num - 1}" + ("" if unseen is None else f" (or {unseen} / None for an "
                                                                "unseen camera)")
        cameras = np.empty(count, dtype=np.int64)
        for i, value in enumerate(values):
            if value is None:
                if unseen is None:
                    raise InputError(
                        f"tracklet {i} has no camera, and this {spec.arch} engine has no "
                        f"unseen-camera row: pass a camera index in 0..{num - 1}, or re-export "
                        "the model with reid-export's unseen-camera option")
                value = unseen
            if not _is_int(value) or not (0 <= value < num or value == unseen):
                raise InputError(f"camera {value!r} of tracklet {i} is out of range: this engine "
                                 f"knows cameras {allowed} (0-based)")
            cameras[i] = value
        return cameras

    # -- execution -----------------------------------------------------------------------------
    def _pool(self) -> ThreadPoolExecutor | None:
        if self._threads == 0:
            return None
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._threads,
                                                    thread_name_prefix="reid-preprocess")
            return self._executor

    def _run_clips(self, request: _Request, frame_index, frame_valid, owner, size: int, color,
                   progress) -> np.ndarray:
        count = len(frame_index)
        dim = self.spec.embedding_dim
        result = np.empty((count, dim), dtype=np.float32)
        if count == 0:
            return result
        global_index = request.offsets[owner][:, None] + frame_index  # [C, T] into request.crops
        starts = list(range(0, count, size))
        executor = self._pool()

        def submit(start: int):
            """Queue the distinct crops of the batch starting at ``start``."""
            unique, inverse = np.unique(global_index[start:start + size], return_inverse=True)
            out = np.empty((len(unique), *self._preprocessor.out_hw, 3), dtype=np.uint8)
            futures = submit_frames(executor, [request.crops[g] for g in unique],
                                    self._preprocessor, color, out)
            return start, out, inverse.reshape(-1, frame_index.shape[1]), futures

        pending = collections.deque(submit(s) for s in starts[:PREFETCH_BATCHES])
        next_start = PREFETCH_BATCHES
        bar = ProgressBar(count, desc=f"embed {self.spec.arch}", unit="clips", enabled=progress,
                          min_total=PROGRESS_MIN_CLIPS)
        try:
            while pending:
                start, unique_frames, inverse, futures = pending.popleft()
                for future in futures:
                    future.result()
                if next_start < len(starts):
                    pending.append(submit(starts[next_start]))
                    next_start += 1
                stop = start + len(inverse)
                feeds = self._feeds(request, unique_frames[inverse], global_index[start:stop],
                                    frame_valid[start:stop], owner[start:stop])
                result[start:stop] = self._run_batch(feeds, stop - start)
                bar.update(stop - start)
        finally:
            bar.close()
            for *_, futures in pending:
                for future in futures:
                    future.cancel()
        return result

    def _feeds(self, request: _Request, frames, global_index, frame_valid, owner) -> dict:
        """Engine inputs for one batch of B clips: frames [B, T, H, W, 3] uint8 and the extra
        inputs the spec declares."""
        spec = self.spec
        feeds = {spec.input_name: frames}
        name = extra_input_name(spec, "keypoints")
        if name is not None:
            points = request.keypoints[global_index]
            points[~frame_valid] = 0.0  # padded slots carry no keypoints (heatmap value 0)
            feeds[name] = points
        name = extra_input_name(spec, "crop_hw")
        if name is not None:
            feeds[name] = request.crop_hw[global_index]
        name = extra_input_name(spec, "frame_valid")
        if name is not None:
            feeds[name] = np.ascontiguousarray(frame_valid)
        name = extra_input_name(spec, "camera")
        if name is not None:
            feeds[name] = request.cameras[owner]
        return feeds

    def _run_batch(self, feeds: dict, count: int) -> np.ndarray:
        """Run ``count`` clips, padding the batch up to the engine's min_batch by repeating the
        last clip (fixed-batch graphs), and check the output."""
        missing = self._backend.min_batch - count
        if missing > 0:
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], missing, axis=0)])
                     for k, v in feeds.items()}
        out = np.asarray(self._backend.run(feeds))
        expected = (max(count, self._backend.min_batch), self.spec.embedding_dim)
        if out.shape != expected:
            raise BackendError(f"{self._backend.path} returned embeddings of shape {out.shape}, "
                               f"expected {expected}: the graph does not match its spec; "
                               "re-export it")
        out = out[:count].astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise BackendError(f"{self._backend.path} produced NaN or infinite embeddings: the "
                               "model or engine is broken; check it with `reid-export validate`")
        return out

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend and the preprocessing threads. Idempotent."""
        self._closed = True
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        self._backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _collect_tracklets(tracklets: Any) -> list[list[np.ndarray]]:
    """Checked crops per tracklet (see :meth:`Engine.embed` for the accepted forms)."""
    if isinstance(tracklets, np.ndarray):
        if tracklets.ndim != 5:
            raise InputError(f"tracklets as one array must be [N, T, H, W, C] uint8, got shape "
                             f"{tracklets.shape}; for a single tracklet [T, H, W, C] pass "
                             "[array] or array[None]")
        tracklets = list(tracklets)
    elif isinstance(tracklets, (str, bytes)) or not hasattr(tracklets, "__iter__"):
        raise InputError(f"tracklets must be a list of tracklets (each a sequence of crops) or "
                         f"an array [N, T, H, W, C], got {type(tracklets).__name__}")
    result = []
    for i, tracklet in enumerate(tracklets):
        if isinstance(tracklet, np.ndarray) and tracklet.ndim != 4:
            raise InputError(f"tracklet {i} is an array of shape {tracklet.shape}: a tracklet "
                             "must be a sequence of crops or an array [T, H, W, C]; to embed one "
                             "tracklet given as a list of crops, pass [crops]")
        if not hasattr(tracklet, "__iter__") or isinstance(tracklet, (str, bytes)) \
                or hasattr(tracklet, "getbands"):  # a PIL image is one crop, not a tracklet
            raise InputError(f"tracklet {i} is a {type(tracklet).__name__}, not a sequence of "
                             "crops; to embed one tracklet, pass [crops]")
        crops = [check_crop(crop, f"tracklet {i}, frame {j}") for j, crop in enumerate(tracklet)]
        if not crops:
            raise InputError(f"tracklet {i} is empty: every tracklet needs at least one crop; "
                             "drop empty tracklets before embedding")
        result.append(crops)
    return result
