"""A deterministic generator of synthetic multi-camera person tracklets for video ReID.

Each identity has a body shape (long-term cue), two outfits (short-term cue; the second is for
clothes-changing evaluation) and a gait (temporal cue). Articulated figures walk past cameras
that differ in scene, illumination, scale, viewpoint, blur, noise and occlusion; every frame is
a detector-like crop with COCO-17 keypoints and the camera index. `generate` writes the
train / query / gallery layout of docs/dataset_layout.md; the same config and seed give the
same bytes.

    from reid_export.synth import SynthConfig, generate
    root = generate("bench", SynthConfig.preset("demo"), seed=0)

See docs/synth.md.
"""
from reid_export.synth.config import GENERATOR_VERSION, PRESETS, SynthConfig
from reid_export.synth.writer import TrackletJob, World, build_world, generate, is_complete

__all__ = ["GENERATOR_VERSION", "PRESETS", "SynthConfig", "TrackletJob", "World", "build_world",
           "generate", "is_complete"]
