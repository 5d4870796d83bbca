"""`reid-export synth` (reid_export.synth.cli.main): writes a benchmark, overrides fields,
refuses bad arguments with a message."""
import json

import pytest
from PIL import Image

from reid_export.synth.cli import main
from reid_sdk.layout import scan


def test_cli_writes_the_benchmark(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main([str(out), "--preset", "tiny", "--seed", "2", "--set", "num_train_ids=1",
                 "--set", "occlusion_rate=0.5", "--workers", "1", "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out.absolute())
    record = json.loads((out / "dataset.json").read_text())
    assert record["generator"]["seed"] == 2
    assert record["generator"]["config"]["num_train_ids"] == 1
    assert record["generator"]["config"]["occlusion_rate"] == 0.5
    assert len({t.pid for t in scan(out / "train")}) == 1


def test_cli_prints_the_config(capsys):
    assert main(["unused", "--preset", "demo", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_train_ids"] == 0 and printed["num_test_ids"] == 80


@pytest.mark.parametrize("argv, message", [
    (["--set", "num_test_idz=3"], "FIELD one of"),
    (["--set", "num_test_ids=three"], "is not a number"),
    (["--set", "num_cameras=1"], "num_cameras must be >= 2"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--preset", "huge"], "invalid choice"),
])
def test_cli_refuses_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "b")] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_foreign_folders(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main([str(tmp_path), "--preset", "tiny", "--quiet"]) == 1
    assert "not a synthetic benchmark" in capsys.readouterr().err


def test_cli_writes_the_docs_pictures(tmp_path):
    pictures = tmp_path / "pictures"
    argv = [str(tmp_path / "b"), "--preset", "tiny", "--quiet", "--pictures", str(pictures)]
    assert main(argv) == 0
    names = sorted(p.name for p in pictures.iterdir())
    assert names == ["synth_contact_sheet.png", "synth_keypoints.png", "synth_part_labels.png"]
    for path in pictures.iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 150 and image.height >= 100
        assert path.stat().st_size < 300_000
