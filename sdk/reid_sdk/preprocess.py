"""Geometric preprocessing of person crops, as an engine spec's ``input`` object prescribes.

The official loaders resize with Pillow (antialiased filters), so Pillow is the reference and the
only path: every crop goes through ``PIL.Image.resize`` with the spec's filter. Scaling to
[0, 1], mean/std and the layout change happen inside the engine graph, so the output here is
uint8 ``[H, W, 3]`` in the spec's colour order.

Policies (``spec.input.resize.policy``):

* ``pad_to_square`` (HAMoBE, MODELS.md 1.5): pad to (almost) square with ``pad_value``, as
  the official ``pil_loader`` does: a tall crop (H >= W) gets ceil((H - W) / 2) columns on the
  left and on the right (width H or H + 1); a wide crop (H < W) gets floor((W - H) / 2) rows on
  top and at the bottom. Then resize straight to height x width.
* ``stretch`` (KeyRe-ID, MODELS.md 2.4): resize straight to height x width.

Crop formats accepted (``prepare_crop``): uint8 ``HxWx3`` in ``color`` order (``"RGB"`` or
``"BGR"``); grayscale ``HxW`` / ``HxWx1`` is converted by repeating the channel; ``HxWx4``
(RGBA, or BGRA with ``color="BGR"``) is converted by dropping alpha without compositing. Both
conversions are what ``PIL.Image.convert("RGB")`` does, which the official loaders apply to
every image they read, so a grayscale or RGBA file gives the same pixels here as there. Any
other dtype or shape is refused with :class:`~reid_sdk.errors.InputError`.

Work is spread over a thread pool: Pillow releases the GIL while resizing.
"""
from __future__ import annotations

import os
from concurrent.futures import Executor, Future
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from reid_sdk.errors import InputError, SpecError
from reid_sdk.spec import COLOR_ORDERS, INTERPOLATIONS, RESIZE_POLICIES

_Resampling = getattr(Image, "Resampling", Image)  # Pillow < 9.1 keeps the filters on Image
# spec interpolation name -> Pillow filter ("bicubic" -> BICUBIC)
PIL_FILTERS = {name: getattr(_Resampling, name.upper()) for name in INTERPOLATIONS}


def default_threads() -> int:
    """Preprocessing threads used when none is asked for: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def check_color(color: str) -> str:
    if color not in COLOR_ORDERS:
        raise InputError(f"color must be one of {COLOR_ORDERS}, got {color!r}")
    return color


def check_crop(crop, where: str) -> np.ndarray:
    """Validate one crop (ndarray or PIL image) without converting its pixels.

    Returns it as an ndarray: uint8 ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` with H, W >= 1.
    ``where`` names the crop in the error message (e.g. ``"tracklet 3, frame 7"``).
    """
    arr = np.asarray(crop)
    if arr.dtype != np.uint8:
        hint = (" (scale float crops in [0, 1] with (x * 255).round().astype(np.uint8))"
                if arr.dtype.kind == "f" else "")
        raise InputError(f"{where}: crops must be uint8 arrays (0..255), got dtype "
                         f"{arr.dtype}{hint}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise InputError(f"{where}: a crop must be HxWx3 (or grayscale HxW / HxWx1, or HxWx4 "
                         f"with alpha), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{where}: zero-size crop of shape {arr.shape}; drop empty detections "
                         "from the tracklet before embedding")
    return arr


def prepare_crop(crop: np.ndarray, color: str, model_color: str = "RGB") -> np.ndarray:
    """A checked crop (see :func:`check_crop`) as uint8 ``HxWx3`` in ``model_color`` order.

    Grayscale is repeated to three channels; a fourth (alpha) channel is dropped; the channel
    order is reversed when ``color`` differs from ``model_color``. May return a view.
    """
    if crop.ndim == 2:
        crop = crop[:, :, None]
    channels = crop.shape[2]
    if channels == 1:
        return np.repeat(crop, 3, axis=2)
    if channels == 4:
        crop = crop[:, :, :3]
    return crop[:, :, ::-1] if color != model_color else crop


def pad_to_square_borders(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of the official HAMoBE loader for an HxW crop."""
    if height >= width:
        side = (height - width + 1) // 2  # ceil
        return 0, 0, side, side
    side = (width - height) // 2  # floor
    return side, side, 0, 0


class Preprocessor:
    """Geometric preprocessing of one crop, as a spec's ``input`` object says.

    ``Preprocessor(spec.input)(crop)``: crop uint8 ``[h, w, 3]`` in the model's colour order,
    result uint8 ``[input.height, input.width, 3]``.
    """

    def __init__(self, spec_input: Mapping):
        resize = spec_input["resize"]
        self.policy = resize["policy"]
        if self.policy not in RESIZE_POLICIES:
            raise SpecError(f"unknown resize policy {self.policy!r}; upgrade reid-sdk")
        interpolation = resize["interpolation"]
        if interpolation not in PIL_FILTERS:
            raise SpecError(f"unknown interpolation {interpolation!r}; upgrade reid-sdk")
        self.resample = PIL_FILTERS[interpolation]
        self.pad_value = int(resize.get("pad_value", 0))
        self.model_color = spec_input["color"]
        self.out_hw = (int(spec_input["height"]), int(spec_input["width"]))

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(crop))
        if self.policy == "pad_to_square":
            top, bottom, left, right = pad_to_square_borders(crop.shape[0], crop.shape[1])
            if top or left:
                padded_size = (crop.shape[1] + left + right, crop.shape[0] + top + bottom)
                canvas = Image.new("RGB", padded_size, (self.pad_value,) * 3)
                canvas.paste(image, (left, top))
                image = canvas
        height, width = self.out_hw
        return np.asarray(image.resize((width, height), self.resample))

    def prepare(self, crop: np.ndarray, color: str) -> np.ndarray:
        """Colour conversion (:func:`prepare_crop`) then the geometry: [h, w, C] -> [H, W, 3]."""
        return self(prepare_crop(crop, color, self.model_color))


def submit_frames(executor: Executor | None, crops: Sequence[np.ndarray],
                  preprocessor: Preprocessor, color: str, out: np.ndarray) -> list[Future]:
    """Preprocess checked ``crops`` into ``out[i]`` ([n, H, W, 3] uint8), one task per crop.

    With an executor the tasks run in its threads and their futures are returned (wait on them
    before reading ``out``); without one they run here and the list is empty.
    """
    def work(i: int) -> None:
        out[i] = preprocessor.prepare(crops[i], color)

    if executor is None:
        for i in range(len(crops)):
            work(i)
        return []
    return [executor.submit(work, i) for i in range(len(crops))]


def preprocess_frames(crops: Sequence, spec_input: Mapping, *, color: str = "RGB",
                      executor: Executor | None = None) -> np.ndarray:
    """Preprocess a list of crops as ``spec_input`` says: returns uint8 [n, H, W, 3].

    Crops are checked first (:func:`check_crop`); with an ``executor`` the work is spread over
    its threads.
    """
    check_color(color)
    checked = [check_crop(c, f"crop {i}") for i, c in enumerate(crops)]
    preprocessor = Preprocessor(spec_input)
    out = np.empty((len(checked), *preprocessor.out_hw, 3), dtype=np.uint8)
    for future in submit_frames(executor, checked, preprocessor, color, out):
        future.result()
    return out
