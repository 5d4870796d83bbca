"""Parity of an exported engine against PyTorch on the same inputs.

    report = validate("hamobe.onnx", model)                       # random engine inputs
    report = validate("keyreid.onnx", model, frames_dir="data/query", limit=20)  # real tracklets
    print(report.summary()); report.passed

With ``frames_dir`` both sides run through the SDK's own pipeline (``reid_sdk.Engine`` over the
engine file, and over :class:`~reid_export.torch_backend.TorchBackend`), so preprocessing, clip
sampling and batching are identical and only the graph differs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from reid_export.contracts import contract_for
from reid_export.torch_backend import TorchBackend

# Minimum per-sample cosine by engine precision (ARCHITECTURE.md section 6).
MIN_COSINE = {"fp32": 0.99999, "mixed": 0.9995, "fp16": 0.9995, "bf16": 0.999, "int8": 0.99}


@dataclasses.dataclass
class ValidationReport:
    """Per-sample cosine (min, mean), max absolute error, PASS/FAIL against the thresholds."""

    engine: str
    inputs: str
    providers: tuple
    cosine: np.ndarray          # [N] per clip (or per tracklet)
    max_abs_error: float
    reference_max_abs: float
    min_cosine: float
    max_abs_allowed: float | None

    @property
    def passed(self) -> bool:
        ok = bool(self.cosine.size) and float(self.cosine.min()) >= self.min_cosine
        if self.max_abs_allowed is not None:
            ok = ok and self.max_abs_error <= self.max_abs_allowed
        return ok

    def as_dict(self) -> dict:
        return {"engine": self.engine, "inputs": self.inputs, "providers": list(self.providers),
                "samples": int(self.cosine.size), "cosine_min": float(self.cosine.min()),
                "cosine_mean": float(self.cosine.mean()), "max_abs_error": self.max_abs_error,
                "reference_max_abs": self.reference_max_abs, "min_cosine": self.min_cosine,
                "max_abs_allowed": self.max_abs_allowed, "passed": self.passed}

    def summary(self) -> str:
        limit = f"min cosine >= {self.min_cosine}"
        if self.max_abs_allowed is not None:
            limit += f", max |diff| <= {self.max_abs_allowed:g}"
        return "\n".join([
            f"engine    {self.engine}  ({', '.join(self.providers)})",
            f"inputs    {self.inputs}",
            f"cosine    min {self.cosine.min():.8f}  mean {self.cosine.mean():.8f}  "
            f"over {self.cosine.size} samples",
            f"max |diff| {self.max_abs_error:.3e}  (largest |value| of PyTorch "
            f"{self.reference_max_abs:.3e})",
            f"{'PASS' if self.passed else 'FAIL'}      ({limit})",
        ])


def model_from_spec(spec) -> torch.nn.Module:
    """Rebuild the seeded random-weight model an engine was exported from (``reid-export onnx
    --random``): its config and seed are in the spec (``model_config``,
    ``source.random_seed``). An unseen-camera row is added again the same way."""
    from reid_export import models
    from reid_export.models import keyreid

    seed = spec.source.get("random_seed")
    if seed is None:
        raise ValueError("this engine was exported from a checkpoint, not from random weights: "
                         "pass --checkpoint with that checkpoint")
    config = dict(spec.data.get("model_config") or {})
    arch = config.pop("arch", spec.arch)
    unseen = config.get("unseen_camera_index")
    if unseen is not None:  # rebuild the trained rows; the mean row is appended below
        config = keyreid.trained_config(config)
    # model_config holds every field of the config, so the preset is only a starting point.
    model = models.create_random(arch, seed=seed, **config)
    if unseen is not None:
        keyreid.add_unseen_camera_row(model)
    return model


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of ``a`` and ``b`` ([N, D] each) in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), denom, out=np.zeros(len(a)), where=denom > 0)


def validate(engine_path, model: torch.nn.Module, *, frames_dir=None, batch: int = 4,
             seed: int = 0, limit: int | None = None, providers=None,
             min_cosine: float | None = None, max_abs: float | None = None,
             progress: bool = False) -> ValidationReport:
    """Compare ``engine_path`` (.onnx) with ``model`` (PyTorch, CPU) on the same inputs.

    Without ``frames_dir``: ``batch`` random clips (uint8 frames, plausible keypoints, crop
    sizes, validity and cameras from the architecture's contract), compared per clip. With it:
    up to ``limit`` tracklets of that folder (docs/dataset_layout.md), embedded end to end by the
    SDK through both, compared per clip. min_cosine: default by the spec's precision.
    """
    from reid_sdk import Engine

    with Engine(engine_path, providers=providers) as engine:
        spec = engine.spec
        arch = getattr(model, "reid_config", {}).get("arch", spec.arch)
        if arch != spec.arch:
            raise ValueError(f"{engine_path} is a {spec.arch} engine but the PyTorch model is "
                             f"{arch}")
        threshold = MIN_COSINE.get(spec.precision, 0.99999) if min_cosine is None else min_cosine
        reference = TorchBackend(model, spec)
        if frames_dir is None:
            ours, ref, inputs = _random_clips(engine, reference, model, batch, seed)
        else:
            ours, ref, inputs = _tracklet_clips(engine, reference, frames_dir, limit, progress)
        used = tuple(engine.providers)
    return ValidationReport(
        engine=str(engine_path), inputs=inputs, providers=used,
        cosine=cosine_rows(ours, ref), max_abs_error=float(np.abs(ours - ref).max()),
        reference_max_abs=float(np.abs(ref).max()), min_cosine=threshold,
        max_abs_allowed=max_abs)


def _random_clips(engine, reference, model, batch, seed):
    contract = contract_for(model)
    arrays = contract.example_inputs(batch, np.random.default_rng(seed))
    feeds = {spec.name: array for spec, array in zip(contract.inputs, arrays)}
    return (engine._backend.run(feeds), reference.run(feeds),
            f"{batch} random clips (seed {seed})")


def _tracklet_clips(engine, reference, frames_dir, limit, progress):
    from reid_sdk import Engine, layout

    tracklets = layout.scan(frames_dir)[:limit]
    if not tracklets:
        raise ValueError(f"no tracklet folders under {frames_dir} (docs/dataset_layout.md)")
    frames = [layout.load_frames(t) for t in tracklets]
    kwargs = {}
    if "keypoints" in engine.spec.extra_inputs:
        keypoints = [layout.load_keypoints(t) for t in tracklets]
        if any(k is None for k in keypoints):
            raise ValueError(f"{engine.spec.arch} needs keypoints.json in every tracklet folder")
        kwargs["keypoints"] = keypoints
    if "camera" in engine.spec.extra_inputs:
        kwargs["camera"] = [t.camid for t in tracklets]
    ours = engine.embed_clips(frames, progress=progress, **kwargs).embeddings
    with Engine.from_backend(reference) as torch_engine:
        ref = torch_engine.embed_clips(frames, progress=progress, **kwargs).embeddings
    return ours, ref, f"{len(ours)} clips of {len(tracklets)} tracklets from {Path(frames_dir)}"
