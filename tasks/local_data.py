"""A device's own data: the file named by a SuperNode's ``data-path``, read without the
central data set. No flwr imports.

The on-disk format (``export`` below writes it from a central client split; ``check``
reads a file and summarises it):

``.npz`` (digits, fmnist, cifar10, teacher): a NumPy archive with two arrays, row i of ``x``
going with row i of ``y``, saved without pickles (``np.savez(path, x=inputs, y=targets)``).

- ``x``: the inputs, shape ``(N, *input_shape)`` of the run's task (digits ``(N, 1, 8, 8)``,
  fmnist ``(N, 1, 28, 28)``, cifar10 ``(N, 3, 32, 32)``, teacher ``(N, data.input_dim)``);
  single-channel images may drop the channel axis, ``(N, H, W)``. ``uint8`` images (the
  tasks whose record has ``images_from_uint8``: digits, fmnist, cifar10) get the task's
  8-bit preprocessing, the same function the task's own loader uses: scaled by 1/255, and
  for fmnist and cifar10 then standardised with the training set's mean and std (per
  channel for cifar10) exactly as the server's test images are; multi-channel ``uint8``
  images may also be channels-last, ``(N, H, W, C)`` (cifar10 ``(N, 32, 32, 3)``).
  Floating-point ``x`` is used as is: it must already be what the model takes, in the
  model's layout (``export`` writes that).
- ``y``: classification, integer class labels in ``[0, num_outputs)``, shape ``(N,)``
  (not one-hot); regression (teacher), real targets of shape ``(N, num_outputs)``, or
  ``(N,)`` for one output.
- NaN or infinite values are refused.
- A truncated or damaged archive is refused as such, and so is one whose arrays would
  take more than ``max_device_file_bytes()`` bytes once read (1 GiB; the environment
  variable ``FEDLOCAL_MAX_DEVICE_FILE_BYTES`` raises it), checked from the archive's
  directory and the arrays' headers before anything is decompressed.

``.txt`` (shakespeare): UTF-8 text (a byte-order mark is skipped, ``\\r\\n`` and ``\\r``
read as ``\\n``), encoded with ``tasks.shakespeare.VOCAB`` (characters outside it read as
spaces) and cut from its start into non-overlapping windows of ``data.seq_len + 1``
characters, each giving the input ``w[:-1]`` and the next-character targets ``w[1:]``; a
last, shorter piece is dropped. A file mostly outside the vocabulary (NUL bytes, another
script) is logged as a WARNING naming the file and the fraction, since it trains as
spaces. This is how ``load_shakespeare`` cuts each speaking role's
text; the whole file is the device's text (no speaker lines are parsed).

    python -m tasks.local_data export --task digits --partition-id 0 --num-partitions 2 OUT.npz
    python -m tasks.local_data check OUT.npz --task digits
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import zipfile
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tasks.base import CLASSIFICATION, LANGUAGE, REGRESSION, Split, TaskSpec
from tasks.registry import get_task, names
from tasks.shakespeare import VOCAB, cut_windows, decode, encode, normalise_newlines, window_split

TEXT, ARRAYS = ".txt", ".npz"
MAX_DEVICE_FILE_BYTES = 2**30  # default limit on x and y's size once read (uncompressed)
MAX_BYTES_ENV = "FEDLOCAL_MAX_DEVICE_FILE_BYTES"
UNKNOWN_TEXT_WARNING = 0.5  # warn when more than this fraction of a .txt is outside VOCAB

log = logging.getLogger(__name__)


class LocalDataError(ValueError):
    """A device's data file that cannot be used; the message names the file, the problem
    and the fix."""


def _error(file: Path, problem: str, fix: str = "") -> LocalDataError:
    return LocalDataError(f"{file}: {problem}." + (f" {fix}" if fix else ""))


def suffix_for(spec: TaskSpec) -> str:
    return TEXT if spec.kind == LANGUAGE else ARRAYS


def _format(spec: TaskSpec) -> str:
    if spec.kind == LANGUAGE:
        return f"Task {spec.name!r} reads the device's text from a UTF-8 {TEXT} file"
    return f"Task {spec.name!r} reads a {ARRAYS} file with arrays x and y"


def check_suffix(file: Path, spec: TaskSpec) -> None:
    """The file's extension must be the task's format (.txt: language, .npz: the rest)."""
    suffix, want = file.suffix.lower(), suffix_for(spec)
    if suffix == want:
        return
    if suffix == TEXT:
        language = " or ".join(repr(n) for n in names() if get_task(n).kind == LANGUAGE)
        raise _error(file, f"a {TEXT} file is for the character task {language}",
                     f"{_format(spec)} (np.savez(path, x=inputs, y=targets)).")
    if suffix == ARRAYS:
        raise _error(file, f"a {ARRAYS} file does not fit task {spec.name!r}", f"{_format(spec)}.")
    raise _error(file, f"unsupported extension {file.suffix or '(none)'!r}",
                 f"{_format(spec)}; name the file *{want}.")


def resolve(path: str | os.PathLike) -> Path:
    """The data file as an absolute path; a missing one is a FileNotFoundError saying how
    to fix it."""
    file = Path(path).expanduser()
    absolute = file if file.is_absolute() else Path.cwd() / file
    if not absolute.exists():
        where = "" if file.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(
            f"{absolute}: the device's data file does not exist{where}. Give the absolute "
            "path of an existing file in the SuperNode's --node-config \"data-path='...'\"; "
            "`python -m tasks.local_data export` writes one from the central data set."
        )
    if not absolute.is_file():
        raise _error(absolute, "is not a regular file (a folder?)",
                     "data-path must name one .npz or .txt file.")
    return absolute


def max_device_file_bytes() -> int:
    """The most bytes a device's ``.npz`` may expand to (x and y together, as read):
    ``$FEDLOCAL_MAX_DEVICE_FILE_BYTES`` if set, else ``MAX_DEVICE_FILE_BYTES`` (1 GiB)."""
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return MAX_DEVICE_FILE_BYTES
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ValueError(f"{MAX_BYTES_ENV}={value!r}: give a positive number of bytes, "
                         "e.g. 4e9 for 4 GB.")
    return limit


def load_local(path: str | os.PathLike, spec: TaskSpec) -> Split:
    """A device's own data as a ``Split`` for the task ``spec`` (``tasks.task_spec(cfg)``),
    checked as described above. Cached per process, keyed by the file's path, modification
    time and size, by the spec (task, input shape, outputs) and by the size limit, so a
    rewritten file is read again. The returned tensors are shared: do not modify them."""
    file = resolve(path)
    check_suffix(file, spec)
    limit = max_device_file_bytes() if spec.kind != LANGUAGE else 0
    stat = file.stat()
    return _load_cached(str(file), stat.st_mtime_ns, stat.st_size, spec, limit)


@lru_cache(maxsize=4)
def _load_cached(file: str, mtime_ns: int, size: int, spec: TaskSpec, limit: int) -> Split:
    del mtime_ns, size  # cache key only
    if spec.kind == LANGUAGE:
        return _read_text(Path(file), spec)
    return _read_arrays(Path(file), spec, limit)


# ----------------------------------------------------------------------------- .txt
def _read_text(file: Path, spec: TaskSpec) -> Split:
    seq_len = spec.input_shape[0]
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _error(
            file, f"is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})",
            "Convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`.",
        ) from None
    text = normalise_newlines(text)
    _warn_if_mostly_unknown(file, text)
    windows = cut_windows(encode(text), seq_len)
    if len(windows) == 0:
        raise _error(
            file, f"holds {len(text)} characters, fewer than one sequence of data.seq_len + 1 "
            f"= {seq_len + 1}", "Add text, or lower data.seq_len in the run config.",
        )
    return window_split(windows)


_VOCAB_DELETER = str.maketrans("", "", VOCAB)


def _warn_if_mostly_unknown(file: Path, text: str) -> None:
    """A text mostly outside the vocabulary (NUL bytes, another script) reads as spaces and
    would train silently on nothing: say so."""
    unknown = len(text.translate(_VOCAB_DELETER))
    if text and unknown / len(text) > UNKNOWN_TEXT_WARNING:
        log.warning("%s: %.0f%% of its %d characters (%d) are outside the vocabulary and read "
                    "as spaces; is it the device's text (UTF-8, mostly ASCII)?",
                    file, 100 * unknown / len(text), len(text), unknown)


# ----------------------------------------------------------------------------- .npz
def _read_arrays(file: Path, spec: TaskSpec, limit: int) -> Split:
    x, y = _open_npz(file, limit)
    if x.ndim == 0 or y.ndim == 0:
        raise _error(file, f"x and y must be arrays with one row per example; got shapes "
                     f"{x.shape} and {y.shape}")
    if len(x) != len(y):
        raise _error(file, f"x has {len(x)} rows but y has {len(y)}",
                     "Row i of x must go with row i of y.")
    if len(x) == 0:
        raise _error(file, "holds no examples (x and y have 0 rows)")
    return Split(_inputs(file, x, spec), _targets(file, y, spec))


SAVE_AS = "Save it with np.savez(path, x=inputs, y=targets)."
# what a damaged archive raises while being read: zipfile's CRC and header checks, zlib,
# numpy's short reads and header parser; RuntimeError: encrypted or unknown compression
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, RuntimeError)


def _damaged(file: Path, err: Exception, member: str = "") -> LocalDataError:
    where = f" (array {member!r}: {err})" if member else f" ({err})"
    return _error(file, f"is truncated or not a valid .npz archive{where}", SAVE_AS)


def _open_npz(file: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the archive ``file``, read without pickles. Before anything is
    decompressed, their sizes as the archive's directory states them and as their .npy
    headers state them (shape x itemsize) must agree and stay within ``limit`` bytes
    together: a small file cannot make the node allocate gigabytes."""
    with open(file, "rb") as handle:
        if handle.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
            raise _error(file, "holds a single .npy array, not an .npz archive of x and y",
                         SAVE_AS)
    try:
        archive = zipfile.ZipFile(file)
    except _DAMAGED as err:  # not a zip, or its end (the directory) is cut off
        raise _damaged(file, err) from None
    with archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        missing = [name for name in ("x", "y") if name not in members]
        if missing:
            found = ", ".join(members) or "none"
            raise _error(file, f"has no array {' or '.join(map(repr, missing))} (arrays found: "
                         f"{found})", SAVE_AS)
        infos = {name: archive.getinfo(members[name]) for name in ("x", "y")}
        stored = sum(info.file_size for info in infos.values())
        if stored > limit:
            raise _too_large(file, stored, limit)
        headers = {name: _npy_header(file, archive, info) for name, info in infos.items()}
        declared = sum(size for _, size in headers.values())
        if declared > limit:
            raise _too_large(file, declared, limit)
        for name, (header, size) in headers.items():
            if infos[name].file_size != header + size:
                got = infos[name].file_size - header
                raise _damaged(file, ValueError(f"its header promises {size:,} bytes of data, "
                                                f"the archive holds {got:,}"), name)
        return _read_member(file, archive, infos["x"]), _read_member(file, archive, infos["y"])


def _too_large(file: Path, size: int, limit: int) -> LocalDataError:
    return _error(file, f"x and y take {size:,} bytes once read, more than the limit of "
                  f"{limit:,}", f"Split the data, or raise the limit with the environment "
                  f"variable {MAX_BYTES_ENV} (bytes) on the node.")


def _npy_header(file: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int]:
    """(header bytes, data bytes) of the .npy member ``info``, from its header alone: the
    data are shape x itemsize."""
    member = info.filename.removesuffix(".npy")
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    try:
        with archive.open(info) as stream:
            version = fmt.read_magic(stream)
            if version not in readers:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here")
            shape, _, dtype = readers[version](stream)
            header = stream.tell()
    except _DAMAGED as err:
        raise _damaged(file, err, member) from None
    if dtype.hasobject:  # object arrays need pickles, which are refused
        raise _error(file, f"holds an array that cannot be read without pickles ({member!r} "
                     f"has dtype {dtype})",
                     "Store plain numeric arrays (uint8/float images, integer labels).")
    return header, int(np.prod(shape, dtype=object)) * dtype.itemsize


def _read_member(file: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    try:
        with archive.open(info) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)
    except _DAMAGED as err:  # a short member, a bad CRC, a broken deflate stream
        raise _damaged(file, err, info.filename.removesuffix(".npy")) from None


def _shape(dims) -> str:
    return f"(N, {', '.join(map(str, dims))})"


def _inputs(file: Path, x: np.ndarray, spec: TaskSpec) -> torch.Tensor:
    want = tuple(spec.input_shape)
    from_uint8 = get_task(spec.name).images_from_uint8
    channel_free = want[1:] if len(want) == 3 and want[0] == 1 else None
    channels_last = (*want[1:], want[0]) if from_uint8 and len(want) == 3 and want[0] > 1 else None
    if x.dtype == np.uint8 and channels_last not in (None, want) and x.shape[1:] == channels_last:
        return from_uint8(x.transpose(0, 3, 1, 2))
    allowed = _shape(want) + (f" or {_shape(channel_free)}" if channel_free else "") + (
        f", or uint8 images {_shape(channels_last)}" if channels_last else "")
    if x.shape[1:] not in (want, channel_free):
        raise _error(file, f"x has shape {x.shape}; task {spec.name!r} takes inputs of shape "
                     f"{allowed}", "Check task.name and the task's data.* keys in the run config.")
    if x.dtype == np.uint8 and from_uint8 is not None:
        return from_uint8(x.reshape(len(x), *want))
    if not np.issubdtype(x.dtype, np.floating):
        images = " 8-bit images as uint8, or" if from_uint8 is not None else ""
        raise _error(file, f"x has dtype {x.dtype}", f"Store{images} floating-point inputs "
                     "already preprocessed as the task's are (what export writes).")
    _check_finite(file, "x", x)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), *want)


def _targets(file: Path, y: np.ndarray, spec: TaskSpec) -> torch.Tensor:
    n, k = len(y), spec.num_outputs
    if spec.kind == CLASSIFICATION:
        if y.dtype.kind not in "iu":
            raise _error(file, f"y has dtype {y.dtype}; task {spec.name!r} needs integer class "
                         "labels", "Store them with y.astype(np.int64).")
        if y.shape != (n,):
            raise _error(file, f"y has shape {y.shape}; task {spec.name!r} needs one class "
                         f"label per example, shape ({n},) (not one-hot)",
                         "For one-hot rows use y.argmax(1).")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= k:
            bad = int(((y < 0) | (y >= k)).sum())
            raise _error(file, f"y holds labels from {low} to {high} ({bad} outside 0..{k - 1}); "
                         f"task {spec.name!r} has {k} classes", f"Labels must lie in 0..{k - 1}.")
        return torch.from_numpy(y.astype(np.int64))
    if spec.kind == REGRESSION:
        if y.dtype.kind not in "iuf":
            raise _error(file, f"y has dtype {y.dtype}; task {spec.name!r} needs real-valued "
                         "targets", "Store them as float32.")
        if y.shape == (n,) and k == 1:
            y = y.reshape(n, 1)
        if y.shape != (n, k):
            one = f" (or ({n},))" if k == 1 else ""
            raise _error(file, f"y has shape {y.shape}; task {spec.name!r} needs targets of "
                         f"shape ({n}, {k}){one}")
        _check_finite(file, "y", y)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    raise _error(file, f"task {spec.name!r} ({spec.kind}) has no .npz format")  # pragma: no cover


def _check_finite(file: Path, name: str, values: np.ndarray) -> None:
    if np.issubdtype(values.dtype, np.floating):
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise _error(file, f"{name} holds {bad} NaN or infinite value(s)",
                         "Drop or repair those examples.")


# ----------------------------------------------------------------------------- writing
def write_local(path: str | os.PathLike, split: Split, spec: TaskSpec) -> Path:
    """Write ``split`` in the format above (atomically); ``load_local`` reads back the
    same tensors."""
    file = Path(path).expanduser()
    check_suffix(file, spec)
    partial = file.with_name(file.name + ".part")
    try:
        if spec.kind == LANGUAGE:
            # a window is the input plus the last target: y[:, :-1] == x[:, 1:]
            windows = torch.cat([split.x, split.y[:, -1:]], dim=1)
            partial.write_bytes(decode(windows.reshape(-1)).encode("utf-8"))
        else:
            with open(partial, "wb") as handle:
                np.savez_compressed(handle, x=split.x.numpy(), y=split.y.numpy())
        os.replace(partial, file)
    finally:
        partial.unlink(missing_ok=True)
    return file


def describe(file: Path, split: Split, spec: TaskSpec) -> str:
    """A few lines on a device's data: examples, shapes, label histogram."""
    lines = [f"{file}: task {spec.name!r} ({spec.kind}), N = {len(split)} "
             + ("sequences" if spec.kind == LANGUAGE else "examples"),
             f"  x: {tuple(split.x.shape)} {str(split.x.dtype).removeprefix('torch.')}",
             f"  y: {tuple(split.y.shape)} {str(split.y.dtype).removeprefix('torch.')}"]
    if spec.kind == CLASSIFICATION:
        counts = torch.bincount(split.y, minlength=spec.num_outputs).tolist()
        lines.append("  labels: " + " ".join(f"{c}:{n}" for c, n in enumerate(counts)))
    elif spec.kind == REGRESSION:
        y = split.y.double()
        std = float(y.std()) if y.numel() > 1 else 0.0
        lines.append(f"  targets: mean {float(y.mean()):.4g}, std {std:.4g}, "
                     f"min {float(y.min()):.4g}, max {float(y.max()):.4g}")
    else:
        used = len(split) * (spec.input_shape[0] + 1)
        common = Counter(decode(split.y.reshape(-1))).most_common(10)
        lines.append(f"  characters used: {used} (windows of data.seq_len + 1 = "
                     f"{spec.input_shape[0] + 1}); most common targets: "
                     + " ".join(f"{c!r}:{n}" for c, n in common))
        if file.suffix.lower() == TEXT:
            text = normalise_newlines(file.read_text(encoding="utf-8-sig"))
            unknown = sum(1 for ch in text if ch not in VOCAB)
            if unknown:
                lines.append(f"  {unknown} character(s) outside the vocabulary read as spaces")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def _config(task: str | None, run_config: str):
    from conf.load import ConfigError, load_config, parse_run_config

    overrides = parse_run_config(run_config)
    if task is not None:
        if overrides.get("task.name", task) != task:
            raise ConfigError(f"--task {task} contradicts task.name = "
                              f"{overrides['task.name']!r} in --run-config.")
        overrides["task.name"] = task
    return load_config(overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.local_data",
        description="Write or check a device's own data file (the SuperNode's data-path).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--task", default=None,
                        help=f"task.name ({', '.join(names())}); default: the config's")
    common.add_argument("--run-config", default="",
                        help="the run's overrides, e.g. \"data.seq_len=40\" (what shapes the data)")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", parents=[common],
        help="write client PARTITION-ID's slice of the central data set as a device file")
    export.add_argument("--partition-id", type=int, required=True)
    export.add_argument("--num-partitions", type=int, required=True)
    export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    export.add_argument("out", help="the file to write: .npz, or .txt for a character task "
                        "(shakespeare)")
    check = commands.add_parser("check", parents=[common],
                                help="load a device file as the ClientApp would and summarise it")
    check.add_argument("file")
    args = parser.parse_args(argv)

    import tasks
    from conf.load import ConfigError

    try:
        cfg = _config(args.task, args.run_config)
        spec = tasks.task_spec(cfg)
        if args.command == "export":
            out = Path(args.out).expanduser()
            check_suffix(out, spec)
            if out.exists() and not args.force:
                raise FileExistsError(f"{out} exists; pass --force to overwrite it.")
            split = tasks.client_split(cfg, args.partition_id, args.num_partitions)
            file = write_local(out, split, spec)
            print(f"wrote partition {args.partition_id} of {args.num_partitions} "
                  f"({len(split)} examples, data.partition = {cfg.data.partition!r}, "
                  f"run.seed = {cfg.run.seed}) to {file}")
        else:
            file = resolve(args.file)
        print(describe(file, load_local(file, spec), spec))  # export: what was written
    except (ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
