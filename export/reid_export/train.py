"""`reid-export train`: a minimal trainer for the presets (cross-entropy + batch-hard triplet).

Enough to fine-tune (or train from scratch) the tiny presets on a tracklet folder
(docs/dataset_layout.md), e.g. the synthetic benchmark:

    reid-export synth data/synth --preset train
    reid-export train --arch keyreid --preset tiny --data data/synth --out keyreid_tiny.safetensors

Frames go through the SDK's own preprocessing (the engine spec's resize policy) and the same
in-graph normalisation as the exported engine, so training and inference see identical inputs.
Heads are official-style: HAMoBE a cosine classifier with a CosFace margin on the 2048-d post-BN
feature (its id_head is training-only, not part of the state_dict); KeyRe-ID its own
``classifier`` (global, 768-d) and ``classifier_1..6`` (parts) on the post-BN features, with
label smoothing. A batch-hard triplet loss acts on the clip embedding. Batches are P identities
x K tracklets, one random clip each.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reid_export import models
from reid_export.contracts import COCO17_JOINTS, arch_of, contract_for
from reid_export.onnx_export import EngineModel, build_spec
from reid_sdk import layout
from reid_sdk.preprocess import Preprocessor

# COCO-17 left/right pairs, swapped when a clip is mirrored.
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters (defaults suit the tiny presets on the synthetic benchmark)."""

    steps: int = 1200
    ids_per_batch: int = 8          # P
    clips_per_id: int = 4           # K
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    cosine_scale: float = 16.0      # HAMoBE id head
    cosine_margin: float = 0.1
    label_smoothing: float = 0.1    # KeyRe-ID heads
    flip: bool = True
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    log_every: int = 50
    max_minutes: float = 0.0        # > 0: stop (and save) after this much training time


class TrackletSet:
    """A split held in memory: each tracklet's frames preprocessed once (uint8 [n, H, W, 3]),
    its keypoints [n, 17, 3] and original crop sizes [n, 2], its label (pids relabelled 0..N-1
    in sorted order, as the classifiers need) and camera."""

    def __init__(self, root, spec_input: dict, *, threads: int = 4):
        self.tracklets = [t for t in layout.scan(root) if t.pid is not None and t.pid >= 0]
        if not self.tracklets:
            raise ValueError(f"no labelled tracklets under {root} (docs/dataset_layout.md)")
        preprocess = Preprocessor(spec_input)

        def load(tracklet):
            crops = layout.load_frames(tracklet)
            frames = np.stack([preprocess(c) for c in crops])
            crop_hw = np.array([c.shape[:2] for c in crops], np.int32)
            keypoints = layout.load_keypoints(tracklet)
            if keypoints is None:
                keypoints = np.zeros((len(crops), COCO17_JOINTS, 3), np.float32)
            return frames, keypoints, crop_hw

        with ThreadPoolExecutor(max(1, threads)) as pool:
            loaded = list(pool.map(load, self.tracklets))
        self.frames = [x[0] for x in loaded]
        self.keypoints = [x[1] for x in loaded]
        self.crop_hw = [x[2] for x in loaded]
        label_of = {pid: i for i, pid in enumerate(sorted({t.pid for t in self.tracklets}))}
        self.labels = np.array([label_of[t.pid] for t in self.tracklets], np.int64)
        self.cameras = np.array([t.camid or 0 for t in self.tracklets], np.int64)
        self.num_ids = len(label_of)
        self.by_label = [np.flatnonzero(self.labels == i) for i in range(self.num_ids)]

    def sample_clip(self, index: int, seq_len: int, rng: np.random.Generator):
        """Frame indices of a random clip: random stride 1-2 and start, loop-padded."""
        n = len(self.frames[index])
        stride = int(rng.integers(1, 3)) if n >= 2 * seq_len else 1
        span = (seq_len - 1) * stride + 1
        start = int(rng.integers(0, max(1, n - span + 1)))
        picks = start + stride * np.arange(seq_len)
        return np.where(picks < n, picks, start + (picks - start) % max(1, n - start))


def batch_indices(dataset: TrackletSet, config: TrainConfig, rng) -> np.ndarray:
    """P identities x K tracklets (with replacement when an identity has fewer than K)."""
    ids = rng.choice(dataset.num_ids, size=min(config.ids_per_batch, dataset.num_ids),
                     replace=False)
    picks = [rng.choice(dataset.by_label[i], size=config.clips_per_id,
                        replace=len(dataset.by_label[i]) < config.clips_per_id) for i in ids]
    return np.concatenate(picks)


def make_batch(dataset: TrackletSet, indices, contract, rng, flip: bool):
    """Engine inputs (numpy, the contract's order) for one clip of each tracklet in
    ``indices``, plus labels."""
    seq_len = contract.inputs[0].shape[0]
    frames, keypoints, crop_hw = [], [], []
    for index in indices:
        picks = dataset.sample_clip(int(index), seq_len, rng)
        clip = dataset.frames[index][picks]
        points = dataset.keypoints[index][picks].copy()
        sizes = dataset.crop_hw[index][picks]
        if flip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
            visible = points[..., 2] > 0
            points[..., 0] = np.where(visible, sizes[:, None, 1] - 1 - points[..., 0], 0)
            for a, b in FLIP_PAIRS:
                points[:, [a, b]] = points[:, [b, a]]
        frames.append(clip)
        keypoints.append(points)
        crop_hw.append(sizes)
    arrays = {"frames": np.ascontiguousarray(np.stack(frames)),
              "keypoints": np.stack(keypoints).astype(np.float32),
              "crop_hw": np.stack(crop_hw).astype(np.int32),
              "frame_valid": np.ones((len(indices), seq_len), bool),
              "camera": dataset.cameras[indices]}
    return [arrays[i.name] for i in contract.inputs], dataset.labels[indices]


def batch_hard_triplet(embeddings: torch.Tensor, labels: torch.Tensor, margin: float):
    """Batch-hard triplet loss on Euclidean distances of ``embeddings`` [B, D]."""
    dist = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    hardest_positive = (dist * same).max(dim=1).values
    hardest_negative = dist.masked_fill(same, float("inf")).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


class HAMoBEHead(torch.nn.Module):
    """Cosine classifier with an additive (CosFace) margin, as HAMoBE's id_head."""

    def __init__(self, dim: int, num_ids: int, scale: float, margin: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(num_ids, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embedding, labels):
        logits = F.normalize(embedding, dim=1) @ F.normalize(self.weight, dim=1).t()
        margin = F.one_hot(labels, logits.shape[1]) * self.margin
        return F.cross_entropy(self.scale * (logits - margin), labels), logits


class KeyReIDHead(torch.nn.Module):
    """KeyRe-ID's own classifiers on its post-BN features: the 19200-d output is
    [feat_bn (768), fbn_1/6, ..., fbn_6/6 (3072 each)]."""

    def __init__(self, model, smoothing: float):
        super().__init__()
        self.model = model
        self.smoothing = smoothing
        embed = model.reid_config["embed_dim"]
        self.split = [embed] + [4 * embed] * 6

    def forward(self, embedding, labels):
        parts = torch.split(embedding, self.split, dim=1)
        logits = self.model.classifier(parts[0])
        loss = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        part_losses = [F.cross_entropy(getattr(self.model, f"classifier_{i}")(6 * part), labels,
                                       label_smoothing=self.smoothing)
                       for i, part in enumerate(parts[1:], start=1)]
        return loss + sum(part_losses) / len(part_losses), logits


def train(model, dataset: TrackletSet, config: TrainConfig, *, log=print):
    """Train ``model`` in place on ``dataset``; returns the per-step loss history."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    arch = arch_of(model)
    contract = contract_for(model)
    wrapper = EngineModel(model, contract.mean, contract.std).to(device)
    if arch == "hamobe":
        head = HAMoBEHead(model.reid_config["embedding_dim"], dataset.num_ids,
                          config.cosine_scale, config.cosine_margin).to(device)
    else:
        classes = model.classifier.weight.shape[0]
        if classes != dataset.num_ids:
            raise ValueError(f"KeyRe-ID classifiers have {classes} classes but the data has "
                             f"{dataset.num_ids} identities: build with classes="
                             f"{dataset.num_ids}")
        head = KeyReIDHead(model, config.label_smoothing).to(device)
    params = list({id(p): p for p in list(model.parameters()) + list(head.parameters())
                   if p.requires_grad}.values())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step):
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    history, start, running = [], time.perf_counter(), []
    for step in range(config.steps):
        if config.max_minutes and time.perf_counter() - start > 60 * config.max_minutes:
            log(f"stopping at step {step}: --max-minutes {config.max_minutes} reached")
            break
        arrays, labels = make_batch(dataset, batch_indices(dataset, config, rng), contract, rng,
                                    config.flip)
        inputs = [torch.from_numpy(a).to(device) for a in arrays]
        labels = torch.from_numpy(labels).to(device)
        embedding = wrapper(*inputs)
        id_loss, logits = head(embedding, labels)
        metric_space = F.normalize(embedding, dim=1) if arch == "hamobe" else embedding
        triplet = batch_hard_triplet(metric_space, labels, config.triplet_margin)
        loss = id_loss + config.triplet_weight * triplet
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        scheduler.step()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        running.append((loss.item(), id_loss.item(), triplet.item(), accuracy))
        history.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = np.mean(running, axis=0)
            running = []
            rate = (step + 1) / (time.perf_counter() - start)
            log(f"step {step + 1:5d}/{config.steps}  loss {mean[0]:.3f} (id {mean[1]:.3f}, "
                f"triplet {mean[2]:.3f})  acc {mean[3]:.2f}  lr {scheduler.get_last_lr()[0]:.2e}"
                f"  {rate:.2f} steps/s")
    model.eval()
    return history


def evaluate_split(model, root, *, max_batch: int = 16, progress: bool = False) -> dict:
    """Rank-1/5/10, mAP, mINP of ``model`` (PyTorch through the SDK pipeline) on
    ``root/query`` vs ``root/gallery``: the standard protocol and, where tracklet.json records
    outfits, the same-clothes and clothes-changing ones."""
    from reid_export.demo import evaluate_splits, scan_splits
    from reid_export.torch_backend import TorchBackend
    from reid_sdk import Engine

    engine = Engine.from_backend(TorchBackend(model, build_spec(model, contract_for(model),
                                                                opset=0), max_batch=max_batch))
    return evaluate_splits(engine, scan_splits(root), progress=progress).metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="reid-export train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=models.ARCHS, required=True)
    parser.add_argument("--preset", default="tiny", help="preset to build (default tiny)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this checkpoint instead of random weights")
    parser.add_argument("--data", type=Path, required=True,
                        help="benchmark root (with train/ query/ gallery/) or a train folder")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("device",):
            continue
        kind = type(getattr(defaults, field.name)) if getattr(defaults, field.name) is not None \
            else int
        if kind is bool:
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=lambda s: s == "1",
                                default=getattr(defaults, field.name), metavar="0|1")
        else:
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind,
                                default=getattr(defaults, field.name))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-eval", action="store_true", help="skip the query/gallery evaluation")
    args = parser.parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if config.threads:
        torch.set_num_threads(config.threads)

    train_root = args.data / "train" if (args.data / "train").is_dir() else args.data
    torch.manual_seed(config.seed)
    if args.init:
        model = models.load_checkpoint(args.init, arch=args.arch)
    else:
        num_ids = len({t.pid for t in layout.scan(train_root) if t.pid is not None and t.pid >= 0})
        overrides = {"classes": num_ids} if args.arch == "keyreid" else {}
        model = models.create(args.arch, preset=args.preset, **overrides)
    spec_input = build_spec(model, contract_for(model), opset=0).input
    t0 = time.perf_counter()
    dataset = TrackletSet(train_root, spec_input)
    print(f"loaded {len(dataset.tracklets)} tracklets of {dataset.num_ids} identities from "
          f"{train_root} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    model.to(config.device)
    train(model, dataset, config, log=lambda line: print(line, file=sys.stderr))
    model.to("cpu")
    from reid_export.models.checkpoint import save_checkpoint
    save_checkpoint(model, args.out)
    from reid_sdk.backends import file_sha256
    report = {"checkpoint": str(args.out), "sha256": file_sha256(args.out),
              "arch": args.arch, "preset": args.preset, "train": dataclasses.asdict(config),
              "data": str(args.data), "command": "reid-export train " + " ".join(
                  argv if argv is not None else sys.argv[1:])}
    if not args.no_eval and (args.data / "query").is_dir():
        report["metrics"] = evaluate_split(model, args.data)
        print(json.dumps(report["metrics"], indent=2), file=sys.stderr)
    Path(str(args.out) + ".json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} (sha256 {report['sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
