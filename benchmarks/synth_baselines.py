"""Hand-made baselines on the synthetic benchmark: how far each cue gets without learning.

    python benchmarks/synth_baselines.py BENCH_DIR        # a folder written by reid-export synth
    python benchmarks/synth_baselines.py --preset demo    # generate one first (into a temp dir)

Prints mAP and Rank-1 under the same-clothes and clothes-changing protocols (dataset.json) for:
  colour histogram   global RGB histogram of the whole crop (the "single global colour statistic")
  centre histogram   the same on the central half of the crop (mostly the person)
  tiny pixels        the crop resized to 16x8, raw RGB (close to what a random-weight network sees)
  limb colour        mean colour at the middle of torso sides, thighs and shins, found through the
                     keypoints (the clothing cue, read where it is; log-RGB, Euclidean)
  body keypoints     limb-length ratios from the keypoints (long-term cue, no colour)
  gait keypoints     cadence and stride from the ankle keypoints (temporal cue, no colour)
A random-weight model is expected near "tiny pixels"; the benchmark is meant to keep the colour
baselines low while trained models learn shape, clothes and gait together.
"""
import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from reid_sdk.layout import evaluate_tracklets, load_frames, load_keypoints, scan

# COCO-17 indices.
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16
VISIBLE = 0.5


def colour_histogram(frames, centre=False):
    bins = []
    for frame in frames:
        if centre:
            w = frame.shape[1]
            frame = frame[:, w // 4: w - w // 4]
        levels = (frame // 32).astype(np.int64)
        codes = levels[..., 0] * 64 + levels[..., 1] * 8 + levels[..., 2]
        bins.append(np.bincount(codes.ravel(), minlength=512) / codes.size)
    return np.sqrt(np.mean(bins, axis=0))  # Hellinger: cosine of square roots


def tiny_pixels(frames):
    small = [np.asarray(Image.fromarray(f).resize((8, 16), Image.BILINEAR), np.float64).ravel()
             for f in frames]
    return np.mean(small, axis=0) - 128.0


def limb_colours(frames, keypoints):
    """Mean 3x3 colour at the midpoints of torso sides, thighs and shins, median over frames."""
    samples = []
    for frame, k in zip(frames, keypoints):
        row = []
        for a, b in ((L_SHOULDER, L_HIP), (R_SHOULDER, R_HIP), (L_HIP, L_KNEE), (R_HIP, R_KNEE),
                     (L_KNEE, L_ANKLE), (R_KNEE, R_ANKLE)):
            if k[a, 2] >= VISIBLE and k[b, 2] >= VISIBLE:
                x, y = ((k[a, :2] + k[b, :2]) / 2).astype(int)
                x, y = np.clip(x, 1, frame.shape[1] - 2), np.clip(y, 1, frame.shape[0] - 2)
                row.append(frame[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0))
            else:
                row.append(np.full(3, np.nan))
        samples.append(np.concatenate(row))
    return np.log1p(_nan_filled(np.nanmedian(np.array(samples), axis=0), 128.0))


def _nan_filled(values, fallback):
    finite = np.isfinite(values)
    return np.where(finite, values, values[finite].mean() if finite.any() else fallback)


def _length(keypoints, a, b):
    ok = (keypoints[:, a, 2] >= VISIBLE) & (keypoints[:, b, 2] >= VISIBLE)
    d = np.linalg.norm(keypoints[:, a, :2] - keypoints[:, b, :2], axis=-1)
    return np.where(ok, d, np.nan)


def body_ratios(keypoints):
    """Limb lengths relative to the torso (shoulder centre to hip centre), median over frames."""
    k = keypoints
    ok = np.all(k[:, [L_SHOULDER, R_SHOULDER, L_HIP, R_HIP], 2] >= VISIBLE, axis=1)
    shoulders, hips = k[:, [L_SHOULDER, R_SHOULDER], :2].mean(1), k[:, [L_HIP, R_HIP], :2].mean(1)
    torso = np.linalg.norm(shoulders - hips, axis=-1)
    torso = np.where(ok & (torso > 1), torso, np.nan)
    parts = [(L_SHOULDER, L_ELBOW), (R_SHOULDER, R_ELBOW), (L_ELBOW, L_WRIST), (R_ELBOW, R_WRIST),
             (L_HIP, L_KNEE), (R_HIP, R_KNEE), (L_KNEE, L_ANKLE), (R_KNEE, R_ANKLE)]
    ratios = np.stack([_length(k, a, b) / torso for a, b in parts], axis=1)
    return _nan_filled(np.nanmedian(ratios, axis=0), 0.0)


def gait_features(keypoints):
    """Dominant period of the ankle separation (frames) and its amplitude over leg length."""
    k = keypoints
    both = (k[:, L_ANKLE, 2] > 0) & (k[:, R_ANKLE, 2] > 0)
    distance = np.linalg.norm(k[:, L_ANKLE, :2] - k[:, R_ANKLE, :2], axis=-1)
    separation = np.where(both, distance, np.nan)
    legs = np.nanmedian(np.concatenate([_length(k, L_HIP, L_ANKLE), _length(k, R_HIP, R_ANKLE)]))
    if np.sum(np.isfinite(separation)) < 6 or not np.isfinite(legs):
        return np.zeros(2)
    series = np.nan_to_num(separation - np.nanmean(separation))
    spectrum = np.abs(np.fft.rfft(series, n=1024))[1:]
    period = 1.0 / np.fft.rfftfreq(1024)[1:][np.argmax(spectrum)]
    return np.array([min(period, 40.0) / 20.0, np.nanstd(separation) / legs * 4.0])


FEATURES = {
    "colour histogram": ("frames", colour_histogram),
    "centre histogram": ("frames", lambda f: colour_histogram(f, centre=True)),
    "tiny pixels": ("frames", tiny_pixels),
    "limb colour": ("both", lambda item: limb_colours(*item)),
    "body keypoints": ("keypoints", body_ratios),
    "gait keypoints": ("keypoints", gait_features),
}


def main(argv=None):
    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # frames without keypoints
    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", nargs="?", help="benchmark folder (with query/ and gallery/)")
    parser.add_argument("--preset", help="generate this preset first (into a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.bench is None) == (args.preset is None):
        parser.error("give a benchmark folder or --preset")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.bench) if args.bench else None
        if root is None:
            from reid_export.synth import SynthConfig, generate
            config = SynthConfig.preset(args.preset)
            root = generate(Path(scratch) / "bench", config, seed=args.seed)
        queries, gallery = scan(root / "query"), scan(root / "gallery")
        print(f"{root}: {len(queries)} queries, {len(gallery)} gallery tracklets")
        data = {"frames": [load_frames(t) for t in queries + gallery],
                "keypoints": [load_keypoints(t) for t in queries + gallery]}
        data["both"] = list(zip(data["frames"], data["keypoints"]))
    print(f"{'baseline':18s} {'SC mAP':>7s} {'SC R1':>6s} {'CC mAP':>7s} {'CC R1':>6s}")
    for name, (source, feature) in FEATURES.items():
        vectors = np.stack([feature(item) for item in data[source]])
        q, g = vectors[:len(queries)], vectors[len(queries):]
        metric = "cosine" if source == "frames" else "euclidean"
        scores = evaluate_tracklets(queries, q, gallery, g, metric)
        sc, cc = scores["same_clothes"], scores["clothes_changing"]
        print(f"{name:18s} {sc['mAP']:7.3f} {sc['Rank-1']:6.3f} {cc['mAP']:7.3f} "
              f"{cc['Rank-1']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
