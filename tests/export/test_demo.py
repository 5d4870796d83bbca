"""The main job end to end (`reid-sdk demo`), and the calibration of the synthetic benchmark:
the default (trained) models score within the issue's band, random weights do not."""
import json

import pytest
from PIL import Image

from reid_export import demo, models
from reid_sdk.backends import file_sha256
from reid_sdk import cli as sdk_cli

SAME_CLOTHES_MAP_BAND = (0.6, 0.95)
RANDOM_WEIGHTS_MAX_MAP = 0.2


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert sdk_cli.main(["demo", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_demo_writes_report_pictures_and_models(demo_run):
    out, report = demo_run
    assert [m["arch"] for m in report["models"]] == ["hamobe", "keyreid"]
    for model in report["models"]:
        picture = Image.open(model["rank_list"])
        assert picture.format == "PNG" and picture.width > 400 and picture.height > 400
        assert (out / "models" / f"{model['arch']}_tiny.onnx").is_file()
        assert model["throughput"]["clips"] > 0 and model["throughput"]["clips_per_s"] > 0
        assert set(model["metrics"]) == {"standard", "same_clothes", "clothes_changing"}
        for values in model["metrics"].values():
            assert set(values) >= {"Rank-1", "Rank-5", "mAP", "mINP"}


def test_demo_engines_match_pytorch(demo_run):
    _, report = demo_run
    for model in report["models"]:
        parity = model["torch_vs_onnxruntime"]
        assert parity["min_cosine"] >= 0.99999, model["arch"]
        assert max(abs(d) for d in parity["mAP_delta"].values()) <= 1e-3, model["arch"]


def test_default_models_are_calibrated(demo_run):
    # Trained tiny presets: same-clothes mAP inside the band the issue asks for.
    _, report = demo_run
    low, high = SAME_CLOTHES_MAP_BAND
    for model in report["models"]:
        value = model["metrics"]["same_clothes"]["mAP"]
        assert low <= value <= high, f"{model['arch']} same-clothes mAP {value:.3f}"


def test_random_weights_score_low_on_the_benchmark(demo_run):
    from reid_export.train import evaluate_split

    out, report = demo_run
    for arch in ("hamobe", "keyreid"):
        model = models.create_random(arch, preset="tiny", seed=0)
        result = evaluate_split(model, report["benchmark"]["path"])
        assert result["same_clothes"]["mAP"] <= RANDOM_WEIGHTS_MAX_MAP, arch


def test_demo_reuses_benchmark_and_exports(demo_run, capsys):
    out, _ = demo_run
    onnx_files = sorted((out / "models").glob("*.onnx"))
    before = {p: p.stat().st_mtime_ns for p in onnx_files}
    assert sdk_cli.main(["demo", "--out", str(out), "--no-progress", "--no-torch",
                         "--models", "keyreid"]) == 0
    assert {p: p.stat().st_mtime_ns for p in onnx_files} == before
    assert "keyreid" in capsys.readouterr().out


def test_default_checkpoints_match_their_recorded_sha256():
    for arch, entry in demo.load_defaults().items():
        assert file_sha256(demo.ASSETS / entry["file"]) == entry["sha256"], arch
        assert "tools/train_defaults.sh" in entry["command"]


def test_demo_refuses_a_damaged_default(monkeypatch, tmp_path):
    damaged = tmp_path / "hamobe_tiny.safetensors"
    damaged.write_bytes((demo.ASSETS / "hamobe_tiny.safetensors").read_bytes()[:-10] + b"0" * 10)
    monkeypatch.setattr(demo, "ASSETS", tmp_path)
    with pytest.raises(ValueError, match="damaged"):
        demo.default_checkpoint("hamobe")


def test_demo_rejects_unknown_models(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--models", "resnet"])
    assert "hamobe and/or keyreid" in capsys.readouterr().err
