"""An in-memory gallery of embeddings with exact top-k search, saved to a checksummed file.

    gallery = Gallery(2048, metric="cosine")
    gallery.add(["cam1/17", "cam2/4"], embeddings, cameras=[0, 1])
    ids, scores = gallery.search(query_embeddings, k=10)     # [Q, min(k, len(gallery))]
    gallery.save("people.gallery")
    gallery = Gallery.load("people.gallery")

Ids are either all integers (stored as int64) or all strings; the first ``add`` decides, and a
gallery never mixes them. Search is exact (no approximation): the scores of each gallery chunk
are computed by BLAS and merged into per-query top-k heaps in Cython (``reid_sdk._ranking``),
so memory stays bounded by the chunk size whatever the gallery size. Results are ordered best
first; equal scores are ordered by gallery position, which is insertion order (``remove`` keeps
the relative order of the remaining items).

File format (version 1): a zip archive that ``numpy.load`` also opens (an npz), stored
uncompressed, holding

* ``embeddings.npy`` float32 [N, D] (L2-normalised rows for the cosine metric),
* ``ids.npy`` int64 [N] or unicode [N],
* ``cameras.npy`` int64 [N] (-1 where unknown),
* ``header.json``: ``{"format": "reid_sdk.gallery", "version": 1, "dim", "metric", "count",
  "id_kind": "int" | "str", "meta": [object | null] * N | null, "sha256"}``, where ``sha256`` is
  the digest of the three ``.npy`` members' bytes, in that order, followed by the header
  itself serialised as canonical JSON (sorted keys, no spaces) without its ``sha256`` field.

Files are written to a temporary file in the same folder, fsynced and renamed over the target,
so a failed save leaves any previous file untouched. ``load`` verifies the format, the shapes
and the checksum, and raises :class:`~reid_sdk.errors.GalleryError` saying what is wrong.
No pickle is ever loaded.

A gallery is not safe to modify from one thread while another searches it.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from reid_sdk import _ranking
from reid_sdk._atomic import atomic_write
from reid_sdk.errors import GalleryError, InputError
from reid_sdk.spec import METRICS

__all__ = ["Gallery", "FILE_FORMAT", "FILE_VERSION"]

FILE_FORMAT = "reid_sdk.gallery"
FILE_VERSION = 1
_ARRAY_MEMBERS = ("embeddings.npy", "ids.npy", "cameras.npy")
_HEADER_MEMBER = "header.json"
_UNKNOWN_CAMERA = -1


def _canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _preview(values: Iterable, limit: int = 5) -> str:
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _positive_int(value, name: str, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer{what}, got {value!r}")
    return int(value)


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, raw, digest):
        self._raw, self._digest = raw, digest

    def write(self, data):
        self._digest.update(data)
        return self._raw.write(data)


class _HashingReader:
    """A read-only file object that hashes what is read from it."""

    def __init__(self, raw, digest):
        self._raw, self._digest = raw, digest

    def read(self, size=-1):
        data = self._raw.read(size)
        self._digest.update(data)
        return data


class Gallery:
    """Embeddings with ids (and optional cameras and metadata), searchable by exact top-k.

    dim: embedding dimension D. metric: "cosine" (similarity of L2-normalised vectors,
    descending; embeddings are normalised on ``add``), "euclidean" or "squared_euclidean"
    (distance of the vectors as given, ascending). chunk_size: gallery rows scored per step of
    a search; working memory is about min(Q, 1024) x chunk_size x 4 bytes. None (default)
    sizes the chunks so that this is 32 MiB.
    """

    def __init__(self, dim: int, metric: str = "cosine", *, chunk_size: int | None = None):
        self._dim = _positive_int(dim, "dim", " (the embedding size)")
        if metric not in METRICS:
            raise InputError(f"metric {metric!r} is not one of {METRICS}; use the "
                             "engine's spec.metric")
        self._metric = metric
        self.chunk_size = None if chunk_size is None else _positive_int(chunk_size, "chunk_size")
        self._count = 0
        self._embeddings = np.empty((0, self._dim), dtype=np.float32)
        # squared norms of the stored rows for the euclidean metrics; the cosine search does not
        # use them, so a cosine gallery keeps none
        self._sq_norms = None if metric == "cosine" else np.empty(0, dtype=np.float32)
        self._cameras = np.empty(0, dtype=np.int64)
        self._ids = None              # numpy int64 or unicode array, capacity-sized
        self._meta: list = []
        self._position: dict = {}     # id -> row

    # -- properties -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def id_kind(self) -> str | None:
        """"int" or "str" once the first item is added, else None."""
        if self._ids is None:
            return None
        return "str" if self._ids.dtype.kind == "U" else "int"

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item_id) -> bool:
        return item_id in self._position

    def __repr__(self):
        return f"Gallery(dim={self._dim}, metric={self._metric!r}, items={self._count})"

    @property
    def ids(self) -> np.ndarray:
        """Ids in gallery order: int64 [N] or unicode [N] (a copy)."""
        if self._ids is None:
            return np.empty(0, dtype=np.int64)
        return self._ids[:self._count].copy()

    @property
    def embeddings(self) -> np.ndarray:
        """Stored embeddings float32 [N, D], read-only view (normalised rows for cosine)."""
        view = self._embeddings[:self._count]
        view.flags.writeable = False
        return view

    @property
    def cameras(self) -> np.ndarray:
        """Camera index per item, int64 [N], -1 where none was given (a copy)."""
        return self._cameras[:self._count].copy()

    @property
    def meta(self) -> list:
        """Metadata per item in gallery order (dicts or None; a shallow copy of the list)."""
        return list(self._meta)

    # -- adding and removing ----------------------------------------------------------------------
    def reserve(self, capacity: int) -> None:
        """Pre-allocates room for ``capacity`` items, so adding a large gallery in pieces does
        not copy it while growing."""
        if capacity > self._embeddings.shape[0]:
            self._grow_to(int(capacity))

    def _grow_to(self, capacity: int) -> None:
        def grown(arr, shape):
            new = np.empty(shape, dtype=arr.dtype)
            new[:self._count] = arr[:self._count]
            return new
        self._embeddings = grown(self._embeddings, (capacity, self._dim))
        if self._sq_norms is not None:
            self._sq_norms = grown(self._sq_norms, (capacity,))
        self._cameras = grown(self._cameras, (capacity,))
        if self._ids is not None:
            self._ids = grown(self._ids, (capacity,))

    def _normalise_ids(self, ids, count: int | None = None) -> list:
        if isinstance(ids, (str, bytes, int, np.integer)):
            raise GalleryError(f"ids must be a sequence (one id per embedding), got a single "
                               f"{type(ids).__name__}: wrap it in a list")
        values = list(np.asarray(ids).tolist()) if isinstance(ids, np.ndarray) else list(ids)
        if count is not None and len(values) != count:
            raise GalleryError(f"got {len(values)} ids for {count} embeddings; give one id per "
                               "embedding row")
        out = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
                raise GalleryError(f"id {value!r} is a {type(value).__name__}; ids must be "
                                   "integers or strings")
            if isinstance(value, (int, np.integer)):
                value = int(value)
                if not -2**63 <= value < 2**63:
                    raise GalleryError(f"integer id {value} does not fit in int64")
            out.append(value)
        kinds = {type(v) for v in out}
        if len(kinds) > 1:
            raise GalleryError("ids mix integers and strings; use one kind for the whole gallery")
        kind = self.id_kind
        if kinds and kind is not None and kinds != ({str} if kind == "str" else {int}):
            raise GalleryError(f"this gallery holds {kind} ids; got {kinds.pop().__name__} ids")
        return out

    def _validate_embeddings(self, embeddings, name: str) -> np.ndarray:
        arr = np.asarray(embeddings)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.dtype.kind not in "iuf":
            raise InputError(f"{name} must be a numeric [N, {self._dim}] array, got shape "
                             f"{arr.shape} and dtype {arr.dtype}")
        if arr.shape[1] != self._dim:
            raise GalleryError(f"{name} have dimension {arr.shape[1]} but the gallery was made "
                               f"for {self._dim}: use embeddings of the same model")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise InputError(f"{name} rows {_preview(np.flatnonzero(bad))} contain NaN or inf; "
                             "check the embedding step")
        return arr

    def _prepare(self, vectors: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Vectors as stored / searched (normalised for cosine) and their squared norms [N],
        or None for cosine, whose search does not use them."""
        sq_norms = np.einsum("nd,nd->n", vectors, vectors)
        if not np.isfinite(sq_norms).all():
            raise InputError(f"{name} have values so large that their squared norm overflows "
                             "float32; rescale them")
        if self._metric != "cosine":
            return vectors, sq_norms
        zero = sq_norms == 0
        if zero.any():
            raise InputError(f"{name} rows {_preview(np.flatnonzero(zero))} are all zero: "
                             "they have no direction for the cosine metric")
        return vectors / np.sqrt(sq_norms)[:, None], None

    def add(self, ids: Sequence, embeddings, cameras: Sequence[int] | None = None,
            meta: Sequence[Any] | None = None) -> None:
        """Appends items. ids: N ints or N strings, new and distinct; embeddings: [N, D]
        (a [D] vector counts as N = 1); cameras: N non-negative ints or None; meta: N
        JSON-serialisable values (dicts, None) or None. All or nothing: on any error the gallery
        is unchanged."""
        vectors = self._validate_embeddings(embeddings, "embeddings")
        count = vectors.shape[0]
        id_list = self._normalise_ids(ids, count)
        if count == 0:
            return
        seen, repeated = set(), []
        for value in id_list:
            if value in seen:
                repeated.append(value)
            seen.add(value)
        if repeated:
            raise GalleryError(f"duplicate ids in this add: {_preview(repeated)}; ids must be "
                               "unique")
        existing = [v for v in id_list if v in self._position]
        if existing:
            raise GalleryError(f"ids already in the gallery: {_preview(existing)}; remove them "
                               "first to replace their embeddings")
        if cameras is None:
            camera_arr = np.full(count, _UNKNOWN_CAMERA, dtype=np.int64)
        else:
            camera_arr = np.asarray(cameras)
            if camera_arr.shape != (count,) or camera_arr.dtype.kind not in "iu" \
                    or (camera_arr < 0).any():
                raise InputError(f"cameras must be {count} non-negative integers (0-based), got "
                                 f"shape {camera_arr.shape} dtype {camera_arr.dtype}")
        if meta is None:
            meta_list = [None] * count
        else:
            meta_list = list(meta)
            if len(meta_list) != count:
                raise InputError(f"got {len(meta_list)} meta entries for {count} embeddings")
            try:
                _canonical_json(meta_list)
            except (TypeError, ValueError) as exc:
                raise InputError(f"meta must be JSON-serialisable (dicts of str, numbers, "
                                 f"lists): {exc}") from None
        vectors, sq_norms = self._prepare(vectors, "embeddings")

        new_ids = np.array(id_list) if isinstance(id_list[0], str) else np.array(id_list, np.int64)
        if self._ids is None:
            self._ids = np.empty(self._embeddings.shape[0], dtype=new_ids.dtype)
        elif self._ids.dtype.kind == "U" and new_ids.dtype.itemsize > self._ids.dtype.itemsize:
            self._ids = self._ids.astype(new_ids.dtype)
        end = self._count + count
        if end > self._embeddings.shape[0]:
            self._grow_to(max(end, int(self._embeddings.shape[0] * 1.5) + 16))
        self._embeddings[self._count:end] = vectors
        if self._sq_norms is not None:
            self._sq_norms[self._count:end] = sq_norms
        self._cameras[self._count:end] = camera_arr
        self._ids[self._count:end] = new_ids
        self._meta.extend(meta_list)
        for offset, value in enumerate(id_list):
            self._position[value] = self._count + offset
        self._count = end

    def remove(self, ids: Sequence) -> None:
        """Removes items by id; the others keep their relative order. All or nothing: unknown
        ids raise GalleryError and nothing is removed."""
        id_list = self._normalise_ids(ids)
        missing = [v for v in id_list if v not in self._position]
        if missing:
            raise GalleryError(f"ids not in the gallery: {_preview(missing)}")
        if not id_list:
            return
        keep = np.ones(self._count, dtype=bool)
        keep[[self._position[v] for v in id_list]] = False
        kept = int(keep.sum())
        for arr in (self._embeddings, self._sq_norms, self._cameras, self._ids):
            if arr is not None:
                arr[:kept] = arr[:self._count][keep]
        self._meta = [m for m, k in zip(self._meta, keep) if k]
        self._count = kept
        self._position = {value: row for row, value in enumerate(self._ids[:kept].tolist())}

    # -- search --------------------------------------------------------------------------------------
    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k best gallery items for each query.

        queries: [Q, D] (or one [D] vector, answered as Q = 1). Returns (ids [Q, m],
        scores float32 [Q, m]) with m = min(k, len(gallery)): when k exceeds the gallery
        size, every item is returned and nothing is padded. Best first: cosine similarity
        descending, or distance ascending; equal scores in gallery (insertion) order.
        """
        k = _positive_int(k, "k")
        vectors = self._validate_embeddings(queries, "queries")
        vectors, _ = self._prepare(vectors, "queries")
        sq_norms = None if self._sq_norms is None else self._sq_norms[:self._count]
        positions, scores = _ranking.topk_search(
            vectors, self._embeddings[:self._count], k, self._metric, sq_norms,
            chunk_size=self.chunk_size)
        ids = self._ids[:self._count] if self._ids is not None else np.empty(0, np.int64)
        return ids[positions], scores

    # -- files ---------------------------------------------------------------------------------------
    def _header(self) -> dict:
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "dim": self._dim,
                "metric": self._metric, "count": self._count, "id_kind": self.id_kind or "int",
                "meta": None if all(m is None for m in self._meta) else self._meta}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the gallery to ``path`` atomically (format in the module docstring)."""
        path = Path(path)
        arrays = {"embeddings.npy": self._embeddings[:self._count],
                  "ids.npy": self.ids, "cameras.npy": self._cameras[:self._count]}
        header = self._header()
        try:
            with atomic_write(path) as raw:
                digest = hashlib.sha256()
                with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                    for name in _ARRAY_MEMBERS:
                        with archive.open(name, "w", force_zip64=True) as member:
                            np.lib.format.write_array(_HashingWriter(member, digest),
                                                      np.ascontiguousarray(arrays[name]),
                                                      allow_pickle=False)
                    digest.update(_canonical_json(header))
                    header["sha256"] = digest.hexdigest()
                    archive.writestr(_HEADER_MEMBER, json.dumps(header, indent=1))
        except OSError as exc:
            raise GalleryError(f"could not save the gallery to {path}: {exc}; any previous "
                               "file there is unchanged") from exc

    @classmethod
    def load(cls, path: str | os.PathLike, *, chunk_size: int | None = None) -> "Gallery":
        """Reads a file written by :meth:`save`, verifying format, shapes and checksum."""
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"no gallery file at {path}")
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if _HEADER_MEMBER not in names:
                    raise GalleryError(f"{path} is not a reid-sdk gallery (no {_HEADER_MEMBER}); "
                                       "write galleries with Gallery.save or `reid-sdk gallery "
                                       "build`")
                header = _parse_header(archive.read(_HEADER_MEMBER), path)
                absent = [n for n in _ARRAY_MEMBERS if n not in names]
                if absent:
                    raise GalleryError(f"{path} is incomplete: missing {', '.join(absent)}")
                count, dim = header["count"], header["dim"]
                expected = {"embeddings.npy": ((count, dim), "f"),
                            "ids.npy": ((count,), "U" if header["id_kind"] == "str" else "i"),
                            "cameras.npy": ((count,), "i")}
                digest = hashlib.sha256()
                arrays = {}
                for name in _ARRAY_MEMBERS:
                    with archive.open(name) as member:
                        arrays[name] = _read_checked_array(_HashingReader(member, digest),
                                                           *expected[name], f"{path}:{name}")
        except GalleryError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError,
                KeyError) as exc:
            raise GalleryError(f"{path} is corrupt, truncated or not a gallery file ({exc}); "
                               "rebuild it or restore a copy") from None
        recorded = header.pop("sha256")
        digest.update(_canonical_json(header))
        if digest.hexdigest() != recorded:
            raise GalleryError(f"{path} fails its checksum: the file is corrupt; rebuild it or "
                               "restore a copy")
        return cls._from_arrays(header, arrays, path, chunk_size)

    @classmethod
    def _from_arrays(cls, header: dict, arrays: dict, path: Path,
                     chunk_size: int | None) -> "Gallery":
        count, dim = header["count"], header["dim"]
        embeddings, ids, cameras = (arrays[n] for n in _ARRAY_MEMBERS)
        if header["meta"] is not None and (not isinstance(header["meta"], list)
                                           or len(header["meta"]) != count):
            raise GalleryError(f"{path}: header meta does not have one entry per item; rebuild "
                               "the gallery")
        gallery = cls(dim, header["metric"], chunk_size=chunk_size)
        if count:
            # the loaded arrays are fresh and contiguous: they become the storage (capacity =
            # count) rather than being copied into a second buffer; add() grows it as usual
            gallery._embeddings, gallery._cameras, gallery._ids = embeddings, cameras, ids
            if gallery._sq_norms is not None:
                gallery._sq_norms = np.einsum("nd,nd->n", embeddings, embeddings)
            gallery._meta = list(header["meta"]) if header["meta"] is not None else [None] * count
            gallery._position = {value: row for row, value in enumerate(ids.tolist())}
            if len(gallery._position) != count:
                raise GalleryError(f"{path} holds duplicate ids; rebuild it")
            gallery._count = count
        return gallery


def _read_checked_array(reader: _HashingReader, shape: tuple, kind: str, where: str
                        ) -> np.ndarray:
    """One .npy member, its header checked against the gallery header before anything is
    allocated (a corrupt shape must not trigger a huge allocation)."""
    version = np.lib.format.read_magic(reader)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    found_shape, fortran_order, dtype = read_header(reader)
    allowed = {"f": dtype == np.dtype("<f4"), "i": dtype == np.dtype("<i8"),
               "U": dtype.kind == "U" and dtype.byteorder in ("<", "=")}[kind]
    if tuple(found_shape) != shape or fortran_order or not allowed:
        raise GalleryError(f"{where} holds {dtype} {tuple(found_shape)}, which does not match the "
                           f"gallery header ({shape}); the file is corrupt: rebuild it")
    array = np.empty(shape, dtype=dtype)
    flat = array.reshape(-1).view(np.uint8)
    step = 1 << 24
    for start in range(0, flat.size, step):
        data = reader.read(min(step, flat.size - start))
        if len(data) != min(step, flat.size - start):
            raise GalleryError(f"{where} is truncated; rebuild the gallery or restore a copy")
        flat[start:start + len(data)] = np.frombuffer(data, dtype=np.uint8)
    if reader.read(1):
        raise GalleryError(f"{where} has trailing bytes; the file is corrupt")
    return array


def _parse_header(raw: bytes, path: Path) -> dict:
    try:
        header = json.loads(raw)
    except ValueError:
        raise GalleryError(f"{path}: {_HEADER_MEMBER} is not valid JSON; the file is corrupt"
                           ) from None
    if not isinstance(header, dict) or header.get("format") != FILE_FORMAT:
        raise GalleryError(f"{path} is not a reid-sdk gallery (format "
                           f"{header.get('format') if isinstance(header, dict) else None!r})")
    if header.get("version") != FILE_VERSION:
        raise GalleryError(f"{path} is gallery format version {header.get('version')!r}; this "
                           f"reid-sdk reads version {FILE_VERSION}: upgrade reid-sdk")
    fields = {"dim": int, "count": int, "metric": str, "id_kind": str, "sha256": str}
    for key, typ in fields.items():
        if not isinstance(header.get(key), typ) or isinstance(header.get(key), bool):
            raise GalleryError(f"{path}: header field {key!r} is missing or not {typ.__name__}")
    if header["metric"] not in METRICS or header["id_kind"] not in ("int", "str") \
            or header["dim"] < 1 or header["count"] < 0 or "meta" not in header:
        raise GalleryError(f"{path}: header has invalid values; rebuild the gallery")
    return header
