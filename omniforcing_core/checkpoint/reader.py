"""Reading safetensors checkpoints: headers first, then one tensor at a time.

A checkpoint is a single ``.safetensors`` file, a sharded set named by an
``.index.json``, or a folder holding either. Opening one parses and validates every
header (offsets, sizes, dtypes) without touching tensor data, so a truncated file, a
broken index or a pickle is refused before anything large is allocated.

Tensor data is memory-mapped, one tensor at a time. ``read`` copies a tensor straight
to its target device and dtype and unmaps its bytes, so loading a model costs one copy
of its weights, never two.

Pickle-based files (``.pt``, ``.ckpt``, ``.bin``...) are refused: unpickling runs
arbitrary code, and even ``torch.load(weights_only=True)`` is an unpickler we would be
trusting with files from the internet.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from .fp8 import FP8_DTYPES


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of another model, or does not fit the model."""


SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# What users (and node widgets) call the dtypes they choose.
DTYPE_ALIASES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp8": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn,
}
# The dtypes a model computes in (an fp8 file keeps its fp8 weights and computes in one of these).
COMPUTE_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})


def resolve_dtype(dtype: torch.dtype | str, allowed: Collection[torch.dtype] = COMPUTE_DTYPES) -> torch.dtype:
    """``dtype`` as a torch.dtype, given as one or by name ('bf16', 'float16', 'fp8', ...);
    it must be one of ``allowed`` (by default the compute dtypes fp32, bf16 and fp16)."""
    resolved = DTYPE_ALIASES.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if resolved not in allowed:
        names: dict[torch.dtype, str] = {}
        for name, known in DTYPE_ALIASES.items():
            if known in allowed:
                names.setdefault(known, name)
        hint = (
            " (fp8 files keep their fp8 weights and compute in the dtype chosen here)"
            if resolved in FP8_DTYPES and not any(known in allowed for known in FP8_DTYPES) else ""
        )
        raise CheckpointError(f"dtype {dtype!r} cannot be used here; use one of {', '.join(names.values())}{hint}")
    return resolved


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
# The safetensors reference implementation refuses larger headers; so do we, before
# reading one into memory.
MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_SUFFIX = ".index.json"


def _fix_hint(path: Path) -> str:
    return f"re-download or re-export {path.name}"


def _refuse_pickle(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {why}. Pickle files can run arbitrary code when loaded, so OmniForcing only "
        "reads .safetensors. Use the .safetensors release of this checkpoint, or convert this "
        "file yourself on a machine you trust if it comes from a source you trust"
    )


def _sniff_pickle(path: Path) -> bool:
    """True for torch.save's zip archive or a raw pickle stream."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and head[1] in range(2, 6))


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives on disk; built from the header alone."""

    key: str
    dtype_name: str
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute byte offsets in ``file``
    end: int

    @property
    def dtype(self) -> torch.dtype:
        if self.dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{self.file}: tensor '{self.key}' has dtype {self.dtype_name}, which this loader "
                f"does not support (supported: {', '.join(SAFETENSORS_DTYPES)})"
            )
        return SAFETENSORS_DTYPES[self.dtype_name]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def is_floating_point(self) -> bool:
        return self.dtype_name.startswith(("F", "BF"))


class SafetensorsFile:
    """One ``.safetensors`` file: its validated header and a lazily opened mapping."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._handle = None
        self._parse_header()

    def _parse_header(self) -> None:
        path = self.path
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _refuse_pickle(path, f"'{path.suffix}' is a pickle-based PyTorch format")
        size = path.stat().st_size
        if size < 8:
            raise CheckpointError(
                f"{path}: file is truncated ({size} bytes; a safetensors file starts with an "
                f"8-byte header length); {_fix_hint(path)}"
            )
        with open(path, "rb") as handle:
            (header_bytes,) = struct.unpack("<Q", handle.read(8))
            if header_bytes == 0 or header_bytes > MAX_HEADER_BYTES or 8 + header_bytes > size:
                if _sniff_pickle(path):
                    raise _refuse_pickle(path, "this is a pickle/zip file (torch.save), not safetensors")
                if 8 + header_bytes > size and header_bytes <= MAX_HEADER_BYTES:
                    raise CheckpointError(
                        f"{path}: file is truncated: its header claims {header_bytes} bytes but the "
                        f"file has only {size} bytes; {_fix_hint(path)}"
                    )
                raise CheckpointError(
                    f"{path}: not a safetensors file or its header is corrupted (header length "
                    f"{header_bytes} for a file of {size} bytes); {_fix_hint(path)}"
                )
            raw = handle.read(header_bytes)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(
                f"{path}: the safetensors header is corrupted (not valid JSON: {error}); {_fix_hint(path)}"
            ) from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the safetensors header is corrupted (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise CheckpointError(f"{path}: the safetensors __metadata__ must map strings to strings")
        self.metadata = metadata
        data_start = 8 + header_bytes
        spans = []
        for key, entry in header.items():
            info = self._tensor_info(key, entry, data_start)
            self.tensors[key] = info
            spans.append((info.begin, info.end, key))
        self._check_layout(spans, data_start, size)

    def _tensor_info(self, key: str, entry: Any, data_start: int) -> TensorInfo:
        path = self.path
        try:
            dtype_name = entry["dtype"]
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            well_formed = (
                isinstance(dtype_name, str)
                and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(begin, int)
                and isinstance(end, int)
                and 0 <= begin <= end
            )
        except (TypeError, KeyError, ValueError):
            well_formed = False
        if not well_formed:
            raise CheckpointError(
                f"{path}: the header entry of tensor '{key}' is corrupted ({entry!r}); {_fix_hint(path)}"
            )
        info = TensorInfo(key, dtype_name, shape, path, data_start + begin, data_start + end)
        if dtype_name in SAFETENSORS_DTYPES:
            expected = info.numel * SAFETENSORS_DTYPES[dtype_name].itemsize
            if expected != info.nbytes:
                raise CheckpointError(
                    f"{path}: tensor '{key}' is corrupted: shape {list(shape)} of {dtype_name} needs "
                    f"{expected} bytes but the header gives it {info.nbytes}; {_fix_hint(path)}"
                )
        return info

    def _check_layout(self, spans: list[tuple[int, int, str]], data_start: int, size: int) -> None:
        path = self.path
        position = data_start
        for begin, end, key in sorted(spans):
            if begin != position:
                what = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
                raise CheckpointError(f"{path}: the header is corrupted: tensor '{key}' {what}; {_fix_hint(path)}")
            position = end
        if position > size:
            raise CheckpointError(
                f"{path}: file is truncated: its header describes {position} bytes but the file has "
                f"only {size} ({position - size} bytes missing; an incomplete download?); {_fix_hint(path)}"
            )
        if position < size:
            raise CheckpointError(
                f"{path}: file is corrupted: {size - position} unexpected bytes follow the tensor data; "
                f"{_fix_hint(path)}"
            )

    # Data -----------------------------------------------------------------------

    def _map(self, info: TensorInfo) -> tuple[mmap.mmap, int]:
        """A mapping of just this tensor's bytes, and the tensor's offset inside it.

        One small mapping per tensor: unmapping it returns its pages at once, and a
        private mapping of a whole 40 GB file would be charged against the commit limit
        (Windows; Linux refuses one larger than RAM + swap). Private (copy-on-write)
        because torch wants a writable buffer and a write must never reach the file.
        """
        if self._handle is None:
            self._handle = open(self.path, "rb")
        start = info.begin - info.begin % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(self._handle.fileno(), info.end - start, offset=start, access=mmap.ACCESS_COPY)
        return mapping, info.begin - start

    def view(self, info: TensorInfo) -> torch.Tensor:
        """A zero-copy CPU tensor over the file's bytes; it keeps its own mapping alive."""
        dtype = info.dtype
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        mapping, offset = self._map(info)
        return torch.frombuffer(mapping, dtype=dtype, count=info.numel, offset=offset).view(info.shape)

    def read(self, info: TensorInfo, device: torch.device | str, dtype: torch.dtype | None) -> torch.Tensor:
        """A fresh tensor on ``device`` (cast to ``dtype`` when both are floating point)."""
        source = self.view(info)
        target = dtype if dtype is not None and source.is_floating_point() else source.dtype
        # The view (and with it the mapping) dies here: only the copy stays in memory.
        return source.to(device=device, dtype=target, copy=True)

    def close(self) -> None:
        """Close the file; views handed out keep their own mappings."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Checkpoint:
    """A set of safetensors files read as one key space.

    ``metadata`` merges the files' ``__metadata__`` (first file wins on a conflict);
    ``config()`` parses its LTX-style ``config`` JSON. Use as a context manager, or call
    ``close()``; tensors returned by ``read`` stay valid after closing.
    """

    def __init__(self, path: Path, files: list[SafetensorsFile]):
        self.path = path
        self.files = files
        self.metadata: dict[str, str] = {}
        for file in files:
            for key, value in file.metadata.items():
                self.metadata.setdefault(key, value)
        self._where: dict[str, SafetensorsFile] = {}
        for file in files:
            for key in file.tensors:
                if key in self._where:
                    raise CheckpointError(
                        f"{path}: tensor '{key}' is stored twice, in {self._where[key].path.name} and "
                        f"{file.path.name}; the shards do not belong together"
                    )
                self._where[key] = file

    # Header queries -----------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def info(self, key: str) -> TensorInfo:
        try:
            return self._where[key].tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named '{key}'") from None

    def infos(self) -> Iterator[TensorInfo]:
        for key, file in self._where.items():
            yield file.tensors[key]

    def group(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (e.g. ``"vae.decoder."``)."""
        return [key for key in self._where if key.startswith(prefix)]

    def config(self) -> dict[str, Any] | None:
        """The parsed ``config`` metadata JSON, or None if the files carry none."""
        return self.json_metadata("config")

    def config_section(self, name: str) -> dict[str, Any] | None:
        """One section of the ``config`` JSON (``transformer``, ``vae``, ``audio_vae``, ``vocoder``)."""
        section = (self.config() or {}).get(name)
        if section is not None and not isinstance(section, dict):
            raise CheckpointError(f"{self.path}: metadata config section '{name}' must be a JSON object")
        return section

    def json_metadata(self, name: str) -> dict[str, Any] | None:
        """Any other metadata entry holding a JSON object (e.g. ``omniforcing``)."""
        raw = self.metadata.get(name)
        if raw is None:
            return None
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{self.path}: metadata '{name}' is not valid JSON ({error})") from None
        if not isinstance(parsed, dict):
            raise CheckpointError(f"{self.path}: metadata '{name}' must be a JSON object")
        return parsed

    # Data ---------------------------------------------------------------------------

    def read(self, key: str, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, copied straight to ``device``; ``dtype`` applies to floating-point tensors."""
        info = self.info(key)
        return self._where[key].read(info, device, dtype)

    def view(self, key: str) -> torch.Tensor:
        """One tensor as a zero-copy CPU view of the file's bytes (copy-on-write: writes never
        reach the file); it keeps its own mapping, unmapped when the view dies."""
        return self._where[key].view(self.info(key))

    def close(self) -> None:
        for file in self.files:
            file.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.files)} file(s), {len(self)} tensors)"


# Opening ---------------------------------------------------------------------------


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a ``.safetensors`` file, an ``.index.json`` or a folder; headers only.

    A folder uses its single ``*.index.json`` if it has one, else every
    ``*.safetensors`` in it.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _open_folder(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.name.endswith(INDEX_SUFFIX):
        return _open_index(path)
    return Checkpoint(path, [SafetensorsFile(path)])


def _open_folder(folder: Path) -> Checkpoint:
    indexes = sorted(folder.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise CheckpointError(
            f"{folder}: the folder holds several index files ({names}); pass the one to load"
        )
    if indexes:
        return _open_index(indexes[0])
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise _refuse_pickle(folder, f"the folder holds only pickle-based files ({', '.join(pickles[:5])})")
        raise CheckpointError(f"{folder}: the folder holds no .safetensors files and no {INDEX_SUFFIX}")
    return Checkpoint(folder, [SafetensorsFile(shard) for shard in shards])


def _open_index(index_path: Path) -> Checkpoint:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{index_path}: the index is not valid JSON ({error}); {_fix_hint(index_path)}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index_path}: the index has no valid 'weight_map' (tensor name -> shard file)")
    # Not resolved: in a Hugging Face cache the index and the shards are links into a blob folder.
    folder = Path(os.path.abspath(index_path.parent))
    shard_names = list(dict.fromkeys(weight_map.values()))
    shards: dict[str, SafetensorsFile] = {}
    for name in shard_names:
        if not _inside_folder(name):
            raise CheckpointError(
                f"{index_path}: shard '{name}' lies outside the index's folder (an absolute path or '..'); an "
                "index names its shards by paths inside its own folder, so refusing it"
            )
        shard_path = folder / name  # links are followed, wherever they point
        if not shard_path.is_file():
            raise CheckpointError(
                f"{index_path}: the index names shard '{name}', which does not exist in {folder} "
                f"(an incomplete download? the index lists {len(shard_names)} shards)"
            )
        shards[name] = SafetensorsFile(shard_path)
    for key, name in weight_map.items():
        if key not in shards[name].tensors:
            raise CheckpointError(
                f"{index_path}: the index puts tensor '{key}' in shard '{name}', but that shard does not "
                f"hold it; the index and the shards do not belong together"
            )
    return Checkpoint(index_path, list(shards.values()))


def _inside_folder(name: str) -> bool:
    """A shard name that stays in the index's folder: relative, without '..', on any OS."""
    paths = (PurePosixPath(name), PureWindowsPath(name))
    return name != "" and not any(path.is_absolute() or path.anchor or ".." in path.parts for path in paths)


def list_checkpoints(root: str | os.PathLike) -> list[str]:
    """Loadable checkpoints under ``root``, as paths relative to it: single safetensors
    files and shard indexes. Shards named by an index are listed once, as their index;
    pickles are never listed (they cannot be loaded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[str] = []
    visited: set[tuple[int, int]] = set()  # (device, inode): a linked folder is walked once, a loop ends
    for folder, subfolders, files in os.walk(root, followlinks=True):
        folder = Path(folder)
        try:
            status = folder.stat()
        except OSError:
            subfolders[:] = []
            continue
        if (status.st_dev, status.st_ino) in visited:
            subfolders[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        sharded: set[str] = set()
        for name in files:
            if name.endswith(INDEX_SUFFIX):
                found.append((folder / name).relative_to(root).as_posix())
                try:
                    weight_map = json.loads((folder / name).read_text(encoding="utf-8")).get("weight_map", {})
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                    continue
                sharded.update(Path(shard).name for shard in weight_map.values())
        found += [
            (folder / name).relative_to(root).as_posix()
            for name in files
            if name.endswith(".safetensors") and name not in sharded
        ]
    return sorted(found)
