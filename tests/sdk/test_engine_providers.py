"""Engine.providers: the execution providers in use, as info() reports them, without the file
hash that info() computes."""
import sys
from pathlib import Path

import pytest

import reid_sdk
import reid_sdk.engine

sys.path.insert(0, str(Path(__file__).parent))
import engine_fixtures as fx  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = fx.build_hamobe_like(tmp_path_factory.mktemp("providers") / "hamobe.onnx", seed=3)
    with reid_sdk.Engine(path, providers=["CPUExecutionProvider"], preprocess_threads=0) as opened:
        yield opened


def test_providers_match_info(engine):
    assert engine.providers == ["CPUExecutionProvider"]
    assert engine.providers == engine.info()["providers"]
    assert f"providers={engine.providers}" in repr(engine)


def test_providers_do_not_hash_the_file(monkeypatch, tmp_path):
    path = fx.build_hamobe_like(tmp_path / "hamobe.onnx", seed=4)

    def no_hash(*args, **kwargs):
        raise AssertionError("Engine.providers must not hash the engine file")
    monkeypatch.setattr(reid_sdk.engine, "file_sha256", no_hash)
    with reid_sdk.Engine(path, providers=["CPUExecutionProvider"]) as opened:
        assert opened.providers == ["CPUExecutionProvider"]
        with pytest.raises(AssertionError, match="must not hash"):
            opened.info()


def test_providers_is_a_copy(engine):
    engine.providers.append("SomethingElse")
    assert engine.providers == ["CPUExecutionProvider"]
