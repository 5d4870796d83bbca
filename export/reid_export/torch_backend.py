"""PyTorch as a reid_sdk backend: the reference every exported engine is compared against.

``Engine.from_backend(TorchBackend(model, spec))`` embeds through exactly the SDK's pipeline
(preprocessing, clip sampling, batching, aggregation), with the graph replaced by the PyTorch
model behind the same uint8 input contract. So ``reid-export validate --frames`` and the demo
compare PyTorch and an engine on identical clips, not on two hand-made pipelines.
"""
from __future__ import annotations

import threading
from typing import Mapping

import numpy as np
import torch

from reid_export.contracts import contract_for
from reid_export.onnx_export import EngineModel
from reid_sdk.backends import Backend, io_contract
from reid_sdk.spec import EngineSpec


class TorchBackend(Backend):
    """Runs ``model`` (an arch module's nn.Module) on the engine feeds of ``spec``.

    device: ``"cpu"``, ``"cuda"`` or a torch.device. max_batch: clips per run (default 8 on the
    CPU, 32 on a GPU).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, spec: EngineSpec, *, device="cpu",
                 max_batch: int | None = None):
        contract = contract_for(model)
        self.device = torch.device(device)
        self.module = EngineModel(model, contract.mean, contract.std).eval().to(self.device)
        self.spec = spec
        self.path = f"<torch {type(model).__name__}>"
        inputs, output = io_contract(spec)
        self.inputs, self.outputs = inputs, (output,)
        self._input_names = [t.name for t in inputs]
        expected = [i.name for i in contract.inputs]
        if self._input_names != expected:
            raise ValueError(f"spec inputs {self._input_names} do not match the model's "
                             f"{expected}: is the spec from another architecture?")
        self.providers = (f"torch {torch.__version__} on {self.device}",)
        self.min_batch = 1
        self.max_batch = max_batch or (32 if self.device.type == "cuda" else 8)
        self._lock = threading.Lock()  # one forward at a time keeps CPU threads predictable

    @torch.no_grad()
    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
                   for name in self._input_names]
        with self._lock:
            out = self.module(*tensors)
        return out.float().cpu().numpy()
