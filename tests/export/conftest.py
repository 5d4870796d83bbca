"""Exported tiny models shared by the export tests (each export takes seconds on a CPU)."""
import pytest

from reid_export import models, onnx_export


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """``tiny_export(arch) -> (model, onnx_path, spec)``: the tiny preset of ``arch`` with seeded
    random weights (seed 3), exported once per session into a folder of its own. Tests must not
    change the model or write beside the file."""
    exported = {}

    def get(arch):
        if arch not in exported:
            model = models.create_random(arch, preset="tiny", seed=3)
            path = tmp_path_factory.mktemp(f"{arch}_tiny") / f"{arch}.onnx"
            exported[arch] = (model, path, onnx_export.export_onnx(model, path))
        return exported[arch]
    return get
