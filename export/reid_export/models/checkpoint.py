"""Loading and saving HAMoBE / KeyRe-ID checkpoints.

    model = load_checkpoint("best_model.pth.tar", backbone_path="ViT-L-14.pt")   # official HAMoBE
    model = load_checkpoint("Marsbest.pth")                                      # official KeyRe-ID
    save_checkpoint(model, "hamobe_tiny.safetensors")                            # ours
    model = load_checkpoint("hamobe_tiny.safetensors")

Accepted files: our safetensors (metadata ``reid_arch``, ``reid_config`` JSON and
``reid_aliases`` JSON for tensors stored once under several names), and ``torch.save`` files
read with ``weights_only=True``: the official HAMoBE container (``ckpt["model"]`` next to
``id_head``, ``clothes_head``, ``optimizer``, ``scheduler``, ``epoch``, ``best_map``), raw
state_dicts, ``"state_dict"`` wrappers, all with an optional ``module.`` prefix. Nothing is
unpickled beyond tensors and plain containers.

The architecture is detected with each arch module's ``matches``; the config comes from our
metadata or from the tensors (``config_from_state_dict``). An arch module may name
``CHECKPOINT_FIELDS``: config fields the checkpoint decides even when the caller names a preset
(HAMoBE: T and the backbone mode). Loading is strict: every missing, unexpected or mis-shaped
tensor is named in one error.

HAMoBE's frozen CLIP backbone is not in official checkpoints: it comes from ``backbone_path``,
an OpenAI CLIP file (the TorchScript archive OpenAI distributes as ``ViT-L-14.pt``, read without
executing anything, or a state_dict in a torch or safetensors file).
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

from reid_export.contracts import arch_of
from reid_export.models import ARCHS, arch_module
from reid_sdk._atomic import atomic_path
from reid_sdk.backends import file_sha256

__all__ = ["CheckpointError", "load_checkpoint", "read_tensors", "save_checkpoint"]

FORMAT = "reid-sdk"
FORMAT_VERSION = "1"
META_FORMAT, META_VERSION = "format", "format_version"
META_ARCH, META_CONFIG, META_ALIASES = "reid_arch", "reid_config", "reid_aliases"
# Containers whose payload is the model's state_dict, outermost first.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_DDP_PREFIX = "module."
_ARCH_NAMES = {"hamobe": "HAMoBE", "keyreid": "KeyRe-ID"}
_LISTED = 12  # keys named per category in an error


class CheckpointError(ValueError):
    """A checkpoint or CLIP file that cannot be used as given; the message says why and what
    to do."""


# ------------------------------------------------------------------------------------------------
# Reading tensor files
# ------------------------------------------------------------------------------------------------
def _file_kind(path: Path) -> str:
    """'safetensors', 'torch' (torch.save zip or legacy pickle), 'torchscript'; raises for an
    empty, truncated or foreign file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    if size == 0:
        raise CheckpointError(f"{path} is empty: not a checkpoint (re-copy or re-save it)")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"{path} is a truncated or corrupt torch.save / TorchScript "
                                  f"archive ({error}); re-copy or re-save the file") from None
        # torch's own test (serialization._is_torchscript_zip): only TorchScript has constants.
        return "torchscript" if any(n.endswith("constants.pkl") for n in names) else "torch"
    if len(head) == 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            raise CheckpointError(f"{path} is a truncated safetensors file (header of "
                                  f"{header_len} bytes, file of {size}); re-copy or re-save it")
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol marker: torch's legacy (pre-1.6) format
        return "torch"
    raise CheckpointError(f"{path} is not a checkpoint: neither safetensors nor a torch.save / "
                          f"TorchScript file")


def _read_safetensors(path: Path, device) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except SafetensorError as error:
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file ({error}); "
                              f"re-copy or re-save it") from None
    aliases = json.loads(metadata.get(META_ALIASES, "{}"))
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]
    return tensors, metadata


def _read_torch(path: Path, map_location):
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(f"{path} is a truncated or corrupt torch.save file ("
                                  f"{str(error).splitlines()[0]}); re-copy or re-save it") from None
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors and plain containers, which "
            f"weights_only loading refuses ({str(error).splitlines()[0]}); reid-export never "
            f"unpickles arbitrary objects: in an environment that trusts the file, re-save the "
            f"state_dict alone, e.g. torch.save(ckpt['model'], 'model.pth')") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is a truncated or corrupt torch.save file "
                              f"({str(error).splitlines()[0]}); re-copy or re-save it") from None


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "DoubleStorage": torch.float64,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for any TorchScript class in an archive's data.pkl: keeps its attributes."""

    def __init__(self, *args):
        self.state = args

    def __setstate__(self, state):
        self.state = state


def _list_of(*values):
    return list(values[0]) if len(values) == 1 else list(values)


def _identity(value, *unused):
    return value


class _TorchScriptTensorReader(pickle.Unpickler):
    """Reads the tensors of a TorchScript archive without executing anything.

    ``torch.jit.load`` would compile the archive's TorchScript code and run any
    ``__setstate__`` methods in it. Its ``data.pkl`` is an ordinary pickle (protocol 2) of the
    module tree in which every global is a TorchScript class (``__torch__.*``), a storage type,
    ``torch._utils._rebuild_tensor_v2`` or one of TorchScript's list builders. This unpickler
    resolves exactly those names to inert local stand-ins and refuses any other, so the only
    effects of reading are tensors built from the archive's ``data/<key>`` records.
    """

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _identity
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _list_of
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return _identity
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a TorchScript archive")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if key not in self._storages:
            record = f"{self._prefix}data/{key}"
            data = bytearray(self._archive.read(record))
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(data) != numel * itemsize:
                raise pickle.UnpicklingError(f"record {record} holds {len(data)} bytes, expected "
                                             f"{numel} x {itemsize}")
            self._storages[key] = torch.frombuffer(data, dtype=dtype) if data else \
                torch.empty(0, dtype=dtype)
        return self._storages[key]

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                        metadata=None):
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or offset < 0 or any(s < 0 for s in stride):
            raise pickle.UnpicklingError(f"malformed tensor record (offset {offset}, size {size}, "
                                         f"stride {stride})")
        if all(size):
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.numel():
                raise pickle.UnpicklingError(f"tensor of size {size} overruns its storage")
        return storage.as_strided(size, stride, offset)


def _script_module_tensors(obj, prefix: str, out: dict, seen: set) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    state = obj.state if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, Mapping):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, (_ScriptObject, Mapping)):
            _script_module_tensors(value, f"{prefix}{name}.", out, seen)


def _read_torchscript(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a TorchScript archive with {len(pickles)} data.pkl "
                                  f"records; expected one")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in archive.namelist() and \
                archive.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path}: a big-endian TorchScript archive is not supported")
        try:
            root = _TorchScriptTensorReader(archive, prefix).load()
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot read the tensors of this TorchScript archive "
                                  f"({error}); save the model's state_dict with torch.save in an "
                                  f"environment that trusts the file and pass that") from None
    tensors: dict = {}
    _script_module_tensors(root, "", tensors, set())
    return tensors


def read_tensors(path, map_location="cpu"):
    """The content of a tensor file and its safetensors metadata.

    Returns ``(content, metadata)``: for safetensors a flat ``{name: tensor}`` and the
    metadata dict; for torch files what ``torch.load(weights_only=True)`` returns and ``{}``;
    for TorchScript archives the flat tensors of the module tree (``visual.conv1.weight`` ...)
    and ``{"torchscript": "1"}``. Raises :class:`CheckpointError` for truncated, corrupt or
    foreign files and for pickles that hold more than tensors and plain containers.
    """
    path = Path(path)
    kind = _file_kind(path)
    if kind == "safetensors":
        return _read_safetensors(path, map_location)
    if kind == "torchscript":
        return _read_torchscript(path), {"torchscript": "1"}
    return _read_torch(path, map_location), {}


# ------------------------------------------------------------------------------------------------
# From file content to a state_dict
# ------------------------------------------------------------------------------------------------
def _state_dict_of(content, path: Path) -> dict:
    """Unwrap training containers (``model`` / ``state_dict`` entries) and strip ``module.``."""
    while isinstance(content, Mapping) and not _all_tensors(content):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(content.get(k), Mapping)), None)
        if wrapper is None:
            break
        content = content[wrapper]
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path} holds a {type(content).__name__}, not a state_dict")
    if not _all_tensors(content):
        others = [k for k, v in content.items() if not isinstance(v, torch.Tensor)][:_LISTED]
        raise CheckpointError(f"{path} is not a state_dict of tensors (entries {others} are not "
                              f"tensors) and has no 'model' / 'state_dict' entry holding one")
    return {k.removeprefix(_DDP_PREFIX): v for k, v in content.items()}


def _all_tensors(mapping: Mapping) -> bool:
    return len(mapping) > 0 and all(isinstance(v, torch.Tensor) for v in mapping.values())


def _detect_arch(state: dict, path: Path) -> str:
    found = [arch for arch in ARCHS if arch_module(arch).matches(state)]
    if len(found) == 1:
        return found[0]
    if not found:
        sample = list(state)[:8]
        raise CheckpointError(f"{path} is neither a HAMoBE nor a KeyRe-ID checkpoint (first keys: "
                              f"{sample}); pass a checkpoint saved by the official code or by "
                              f"reid-export")
    raise CheckpointError(f"{path} matches several architectures {found}; pass arch=")


def _shape_problems(expected: dict, state: dict) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {list(state[k].shape)}, model {list(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    return missing, unexpected, mismatched


def _listing(label: str, items: list) -> str:
    more = f" ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return f"{label} ({len(items)}): {', '.join(items[:_LISTED])}{more}"


def _expected_state(module, model) -> dict:
    full = getattr(module, "checkpoint_state_dict", None)
    return full(model) if full else model.state_dict()


def _config_for(module, arch: str, state: dict, metadata: dict, preset, overrides, path):
    if META_CONFIG in metadata:
        config = json.loads(metadata[META_CONFIG])
    else:
        try:
            config = module.config_from_state_dict(state)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from None
    if preset is not None:
        if preset not in module.PRESETS:
            raise CheckpointError(f"unknown preset {preset!r} for {_ARCH_NAMES[arch]}: choose one "
                                  f"of {', '.join(module.PRESETS)} or pass preset=None to infer "
                                  f"the configuration from the checkpoint")
        decided = getattr(module, "CHECKPOINT_FIELDS", ())
        candidate = {**module.PRESETS[preset], **{k: config[k] for k in decided if k in config}}
        with torch.device("meta"):
            probe = module.build(**candidate)
        missing, unexpected, mismatched = _shape_problems(_expected_state(module, probe), state)
        problems = mismatched + [f"{k}: not in the checkpoint" for k in missing
                                 if not _is_optional(module, k)]
        problems += [f"{k}: not in the preset's model" for k in unexpected]
        if problems:
            raise CheckpointError(f"preset {preset!r} does not fit {path}: "
                                  + _listing("tensors that differ", problems)
                                  + "; pass preset=None to infer the configuration from the "
                                    "checkpoint")
        config = candidate
    if overrides:
        unknown = set(overrides) - set(config)
        if unknown:
            raise CheckpointError(f"unknown {_ARCH_NAMES[arch]} config fields {sorted(unknown)}; "
                                  f"known: {sorted(config)}")
        config = {**config, **overrides}
    return config


def _is_optional(module, key: str) -> bool:
    """Keys a checkpoint may leave out because they come from elsewhere (HAMoBE's backbone)."""
    return getattr(module, "BACKBONE_PREFIX", None) is not None and \
        key.startswith(module.BACKBONE_PREFIX)


def _hamobe_backbone(module, model, state: dict, backbone_path, map_location, path, source):
    """``state`` plus the CLIP backbone from ``backbone_path`` when the checkpoint lacks it."""
    carried = [k for k in module.backbone_keys(model) if k in state]
    if carried:
        if backbone_path is not None:
            raise CheckpointError(f"{path} already carries the backbone ({len(carried)} "
                                  f"backbone.* tensors); drop backbone_path")
        return state
    if backbone_path is None:
        raise CheckpointError(
            f"{path}: official HAMoBE checkpoints do not contain the frozen CLIP ViT-L/14; pass "
            f"backbone_path=... (the OpenAI CLIP file ViT-L-14.pt)")
    backbone_path = Path(backbone_path)
    content, _ = read_tensors(backbone_path, map_location)
    if not isinstance(content, Mapping) or not _all_tensors(content):
        raise CheckpointError(f"{backbone_path} is not a CLIP model file (expected the OpenAI "
                              f"TorchScript archive or a state_dict of tensors)")
    try:
        backbone = module.clip_backbone_state(dict(content), model.reid_config)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"{backbone_path}: {error}") from None
    source.update(backbone=backbone_path.name, backbone_sha256=file_sha256(backbone_path))
    return {**state, **backbone}


def load_checkpoint(path, arch=None, preset=None, *, backbone_path=None, map_location="cpu",
                    overrides=None):
    """Load a checkpoint into a model in eval mode.

    Args:
        path: our ``.safetensors``, an official container or a raw state_dict (torch file).
        arch: ``"hamobe"`` / ``"keyreid"`` to insist on; None detects it from the keys.
        preset: a preset the checkpoint must fit (HAMoBE's T and backbone mode still come
            from the checkpoint); None infers the configuration from the tensors.
        backbone_path: HAMoBE only: the OpenAI CLIP file when the checkpoint does not carry
            the backbone (official checkpoints never do).
        map_location: where tensors are read to (the model is built on the default device).
        overrides: config fields to change that do not alter tensor shapes (e.g. HAMoBE
            ``{"backbone_dtype": "float32"}``).

    Returns:
        The model, with ``model.reid_source = {"checkpoint": name, "checkpoint_sha256": hex}``
        (plus ``backbone`` / ``backbone_sha256`` when a CLIP file was loaded).

    Raises:
        CheckpointError (a ValueError) naming the problem: missing, truncated or foreign
        file; checkpoint of the other architecture; unknown arch or preset; preset that does
        not fit; missing backbone; missing / unexpected / mis-shaped tensors.
    """
    path = Path(path)
    if arch is not None and arch not in ARCHS:
        raise CheckpointError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    content, metadata = read_tensors(path, map_location)
    if metadata.get("torchscript"):
        raise CheckpointError(f"{path} is a TorchScript archive (such as the OpenAI CLIP file), "
                              f"not a model checkpoint; a CLIP file goes to backbone_path=")
    state = _state_dict_of(content, path)
    if META_ARCH in metadata:
        detected = metadata[META_ARCH]
        if detected not in ARCHS:
            raise CheckpointError(f"{path} is for arch {detected!r}, which this version does not "
                                  f"know ({', '.join(ARCHS)}); upgrade reid-export")
    elif arch is not None and not arch_module(arch).matches(state):
        # Name the other architecture if it is one; otherwise the arch's own config inference
        # reports which of its keys are missing.
        others = [a for a in ARCHS if a != arch and arch_module(a).matches(state)]
        detected = others[0] if others else arch
    else:
        detected = _detect_arch(state, path)
    if arch is not None and arch != detected:
        raise CheckpointError(f"{path}: this is a {_ARCH_NAMES[detected]} checkpoint, not "
                              f"{_ARCH_NAMES[arch]}; pass arch={detected!r} or the right file")
    module = arch_module(detected)
    config = _config_for(module, detected, state, metadata, preset, overrides, path)
    source = {"checkpoint": path.name, "checkpoint_sha256": file_sha256(path)}
    try:
        model = getattr(module, "build_empty", module.build)(**config)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if detected == "hamobe":
        state = _hamobe_backbone(module, model, state, backbone_path, map_location, path, source)
    elif backbone_path is not None:
        raise CheckpointError("backbone_path is for HAMoBE's CLIP backbone; KeyRe-ID checkpoints "
                              "carry their whole model")
    missing, unexpected, mismatched = _shape_problems(_expected_state(module, model), state)
    if missing or unexpected or mismatched:
        parts = [_listing(label, items) for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)) if items]
        raise CheckpointError(f"{path} does not fit the {_ARCH_NAMES[detected]} model it "
                              f"describes: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    model.reid_source = source
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Saving ours
# ------------------------------------------------------------------------------------------------
def _storage_key(tensor: torch.Tensor):
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def save_checkpoint(model, path) -> Path:
    """Write ``model`` as our safetensors checkpoint, atomically (a failed write never leaves a
    partial file at ``path``).

    Holds every tensor (HAMoBE: the backbone too, under the official ``backbone.*`` names),
    the arch and the config as metadata; tensors that are one object under several names
    (KeyRe-ID's ``block1`` / ``b2.0``) are stored once and listed in ``reid_aliases``.
    """
    import safetensors.torch

    path = Path(path)
    arch = arch_of(model)
    config = dict(getattr(model, "reid_config", None) or {})
    config.pop("arch", None)
    if not config:
        raise CheckpointError(f"{type(model).__name__} has no reid_config: build it with "
                              "reid_export.models.create() or load_checkpoint()")
    module = arch_module(arch)
    tensors, aliases, first_of = {}, {}, {}
    seen_storages = set()
    for name, tensor in _expected_state(module, model).items():
        tensor = tensor.detach()
        key = _storage_key(tensor)
        if key in first_of:
            aliases[name] = first_of[key]
            continue
        first_of[key] = name
        storage = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors that overlap in memory: store partial views as copies.
        shared = storage in seen_storages and tensor.numel() > 0
        seen_storages.add(storage)
        tensors[name] = tensor.to("cpu", copy=shared).contiguous()
    metadata = {META_FORMAT: FORMAT, META_VERSION: FORMAT_VERSION, META_ARCH: arch,
                META_CONFIG: json.dumps(config, sort_keys=True),
                META_ALIASES: json.dumps(aliases, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # save_file streams: no second copy of the tensors in memory
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
    return path
