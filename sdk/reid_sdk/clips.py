"""Test-time clip sampling of the two official protocols, and per-tracklet aggregation.

A *clip plan* for one tracklet of ``n`` frames is a pair of arrays:

* ``frame_index`` int64 ``[C, T]``: which frame of the tracklet fills each of the T slots of
  each of the C clips;
* ``frame_valid`` bool ``[C, T]``: ``False`` where the slot is padding, i.e. a frame repeated
  to fill the last clip (loop padding). HAMoBE feeds padding frames like real ones; KeyRe-ID's
  official loader gives the padded slots zero-valued heatmaps, which the engine's
  ``frame_valid`` input reproduces.

The functions are pure index arithmetic (no images), written from the official loaders:
HAMoBE ``data/datasets/ccvid.py:_recombination_for_testset`` (MODELS.md 1.5) and KeyRe-ID
``Dataloader.py:VideoDataset.__getitem__`` (MODELS.md 2.4).
"""
from __future__ import annotations

from typing import Mapping, Tuple

import numpy as np

from reid_sdk.errors import InputError, SpecError
from reid_sdk.spec import CLIP_PADDINGS

ClipPlan = Tuple[np.ndarray, np.ndarray]  # (frame_index [C, T] int64, frame_valid [C, T] bool)


def _check_counts(n: int, seq_len: int) -> None:
    if int(n) < 1:
        raise InputError(f"a tracklet needs at least one frame, got {n}; drop empty tracklets "
                         "before embedding")
    if int(seq_len) < 1:
        raise SpecError(f"clip length must be >= 1, got {seq_len}")


def _loop_padded_clip(start: int, stop: int, seq_len: int) -> ClipPlan:
    """One clip of frames ``start..stop-1`` (1 <= stop - start <= seq_len), cycled to seq_len."""
    count = stop - start
    slots = np.arange(seq_len)
    return (start + slots % count)[None, :], (slots < count)[None, :]


def hamobe_recombination(n: int, seq_len: int, stride: int) -> ClipPlan:
    """HAMoBE's test clips for a tracklet of ``n`` frames (MODELS.md 1.5).

    Each full window of ``seq_len * stride`` frames gives ``stride`` interleaved clips (clip j
    takes frames j, j + stride, ...). The remainder r of the last partial window gives
    ``r // seq_len`` clips interleaved with that reduced stride, and the final ``n % seq_len``
    frames, when there are any, one loop-padded clip. Every frame is used exactly once (padding
    aside) and there are ``ceil(n / seq_len)`` clips.

    Returns ``(frame_index [C, seq_len] int64, frame_valid [C, seq_len] bool)``.
    """
    _check_counts(n, seq_len)
    if int(stride) < 1:
        raise SpecError(f"HAMoBE clip stride must be >= 1, got {stride}")
    window = seq_len * stride
    num_windows = n // window
    slots = np.arange(seq_len)

    def interleaved(base: int, count: int, step: int) -> np.ndarray:
        return base + np.arange(count)[:, None] + slots[None, :] * step

    parts = [interleaved(w * window, stride, stride) for w in range(num_windows)]
    tail = num_windows * window
    reduced_stride = (n - tail) // seq_len
    if reduced_stride:
        parts.append(interleaved(tail, reduced_stride, reduced_stride))
    index = np.concatenate(parts, axis=0) if parts else np.zeros((0, seq_len), np.int64)
    valid = np.ones(index.shape, dtype=bool)
    leftover = n % seq_len
    if leftover:
        last_index, last_valid = _loop_padded_clip(n - leftover, n, seq_len)
        index = np.concatenate([index, last_index])
        valid = np.concatenate([valid, last_valid])
    return index.astype(np.int64), valid


def consecutive_chunks(n: int, seq_len: int, max_clips: int | None) -> ClipPlan:
    """KeyRe-ID's test clips for a tracklet of ``n`` frames (MODELS.md 2.4).

    Consecutive non-overlapping chunks of ``seq_len`` frames are taken while more than
    ``seq_len`` frames remain; the rest (1 to ``seq_len`` frames) forms the last chunk, loop
    padded. Only the first ``max_clips`` chunks are kept (the official loader stops at 41
    clips = 164 frames); ``None`` keeps all.

    Returns ``(frame_index [C, seq_len] int64, frame_valid [C, seq_len] bool)``.
    """
    _check_counts(n, seq_len)
    if max_clips is not None and int(max_clips) < 1:
        raise SpecError(f"max_clips must be >= 1 or None, got {max_clips}")
    num_full = (n - 1) // seq_len  # chunks taken while more than seq_len frames remain
    index = np.arange(num_full)[:, None] * seq_len + np.arange(seq_len)[None, :]
    valid = np.ones(index.shape, dtype=bool)
    last_index, last_valid = _loop_padded_clip(num_full * seq_len, n, seq_len)
    index = np.concatenate([index, last_index])[:max_clips]
    valid = np.concatenate([valid, last_valid])[:max_clips]
    return index.astype(np.int64), valid


def plan_clips(clips_spec: Mapping, n: int) -> ClipPlan:
    """The clip plan of the policy named in a spec's ``clips`` object for ``n`` frames."""
    policy = clips_spec["policy"]
    if policy == "hamobe_recombination":
        return hamobe_recombination(n, clips_spec["seq_len"], clips_spec["stride"])
    if policy == "consecutive_chunks":
        if clips_spec.get("pad", "loop") not in CLIP_PADDINGS:
            raise SpecError(f"clip padding {clips_spec['pad']!r} is unknown to this reid-sdk "
                            "(it loop-pads); upgrade reid-sdk or re-export the model")
        return consecutive_chunks(n, clips_spec["seq_len"], clips_spec.get("max_clips"))
    raise SpecError(f"unknown clip policy {policy!r}; upgrade reid-sdk or re-export the model")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` [N, D] divided by max(||row||_2, eps) (as torch.nn.functional.normalize)."""
    x = np.asarray(x)
    norms = np.sqrt(np.einsum("nd,nd->n", x.astype(np.float64), x.astype(np.float64)))
    return (x / np.maximum(norms, eps)[:, None]).astype(np.float32)


def aggregate_clips(clip_embeddings: np.ndarray, tracklet_index: np.ndarray, num_tracklets: int,
                    *, how: str = "mean", l2: bool = False) -> np.ndarray:
    """Per-tracklet embeddings from per-clip ones.

    clip_embeddings: [C, D] float; tracklet_index: [C] int, the tracklet of each clip (every
    tracklet 0..num_tracklets-1 must own at least one clip). ``how``: ``"mean"`` (accumulated
    in float64) or ``"max"`` over each tracklet's clips; ``l2``: L2-normalise the result.
    Returns [num_tracklets, D] float32.
    """
    emb = np.asarray(clip_embeddings)
    owner = np.asarray(tracklet_index, dtype=np.int64)
    if emb.ndim != 2 or owner.shape != (emb.shape[0],):
        raise InputError(f"clip embeddings {emb.shape} and tracklet index {owner.shape} must be "
                         "[C, D] and [C]")
    counts = np.bincount(owner, minlength=num_tracklets)
    if counts.shape[0] != num_tracklets or (counts == 0).any():
        raise InputError("every tracklet needs at least one clip and no clip may name a tracklet "
                         f"outside 0..{num_tracklets - 1}")
    if how == "mean":
        total = np.zeros((num_tracklets, emb.shape[1]), dtype=np.float64)
        np.add.at(total, owner, emb)
        out = (total / counts[:, None]).astype(np.float32)
    elif how == "max":
        out = np.full((num_tracklets, emb.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, owner, emb.astype(np.float32))
    else:
        raise SpecError(f"unknown aggregate {how!r}: expected 'mean' or 'max'")
    return l2_normalize(out) if l2 else out
