"""Official-compatible HAMoBE and KeyRe-ID model definitions (inference only).

    from reid_export import models
    model = models.create("hamobe", preset="tiny")          # random weights
    model = models.create_random("keyreid", seed=3)         # seeded, stamped for export
    model = models.load_checkpoint("best_model.pth.tar", backbone_path="ViT-L-14.pt")

Each architecture module (``hamobe``, ``keyreid``) provides:

* ``PRESETS``: ``{"official": {...}, "tiny": {...}}``, the keyword arguments of ``build``.
* ``build(**config) -> torch.nn.Module`` in eval mode. The module's ``state_dict()`` keys and
  shapes equal the official ones (MODELS.md 1.1 / 2.1) for the same configuration; its
  ``forward`` takes the engine inputs *after* in-graph normalisation is applied by the
  export wrapper (see ``reid_export.onnx_export``) and returns ``[B, D]`` clip embeddings.
  ``model.reid_config`` holds the config it was built with (JSON-serialisable).
* ``matches(state_dict) -> bool``: whether a state_dict is of this architecture.
* ``config_from_state_dict(state_dict) -> dict``: the build config implied by the tensors
  (T for HAMoBE, cameras / classes for KeyRe-ID ...), starting from the closest preset.
"""
from __future__ import annotations

from importlib import import_module

ARCHS = ("hamobe", "keyreid")


def arch_module(arch: str):
    """The module implementing ``arch`` (``"hamobe"`` or ``"keyreid"``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return import_module(f"reid_export.models.{arch}")


def create(arch: str, preset: str = "official", **overrides):
    """Build ``arch`` with random weights from ``preset`` (``"official"`` or ``"tiny"``),
    with keyword ``overrides`` of the preset's fields."""
    module = arch_module(arch)
    if preset not in module.PRESETS:
        raise ValueError(f"unknown preset {preset!r} for {arch}: choose one of "
                         f"{', '.join(module.PRESETS)}")
    config = dict(module.PRESETS[preset])
    unknown = set(overrides) - set(config)
    if unknown:
        raise ValueError(f"unknown {arch} config fields {sorted(unknown)}; known: {sorted(config)}")
    config.update(overrides)
    return module.build(**config)


def create_random(arch: str, preset: str = "tiny", seed: int = 0, **overrides):
    """:func:`create` with the global torch RNG seeded with ``seed`` first, so the same call
    gives the same weights; the model (eval mode) is stamped ``model.reid_source =
    {"random_seed": seed, "checkpoint_sha256": None}``, which goes into the engine spec's
    ``source`` on export and lets ``reid-export validate --random`` rebuild it."""
    import torch

    torch.manual_seed(seed)
    model = create(arch, preset=preset, **overrides)
    model.reid_source = {"random_seed": seed, "checkpoint_sha256": None}
    return model


def load_checkpoint(path, arch=None, preset=None, **kwargs):
    """Load a checkpoint (official container, raw state_dict, or ours in safetensors) into a
    model; see :func:`reid_export.models.checkpoint.load_checkpoint`."""
    from reid_export.models.checkpoint import load_checkpoint as _load
    return _load(path, arch=arch, preset=preset, **kwargs)


__all__ = ["ARCHS", "arch_module", "create", "create_random", "load_checkpoint"]
