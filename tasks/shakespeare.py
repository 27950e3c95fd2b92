"""Tiny Shakespeare next-character prediction, one speaking role per natural client.

The corpus (Karpathy's ``input.txt``, 1,115,394 characters) is a sequence of blocks separated
by blank lines; a block starts with a speaker line such as ``First Citizen:`` followed by what
that speaker says. Following LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated
Settings"), every role is a client's natural unit of data:

1. all blocks of one role name are concatenated, in corpus order, into that role's text;
2. the text is cut into non-overlapping windows of ``seq_len + 1`` characters; a window gives
   the input ``x = w[:-1]`` and the next-character targets ``y = w[1:]``;
3. roles with fewer than 2 windows are dropped;
4. per role, the last ``ceil(test_fraction * n)`` windows (at least 1) form the test set and
   the earlier ones the training set (a time-ordered split, as in LEAF).

Nothing here depends on a random seed except ``assign_roles_to_clients``'s tie-breaking.
Registered here as task ``shakespeare``. No ``flwr`` import here.
"""

from __future__ import annotations

import math
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from tasks.base import LANGUAGE, Split, TaskData
from tasks.registry import Task, register

# A fixed vocabulary, independent of the data: newline, then printable ASCII 32..126.
VOCAB: str = "\n" + "".join(chr(c) for c in range(32, 127))
SPACE_INDEX: int = VOCAB.index(" ")

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CACHE_PATH = Path("~/.cache/fedlocal/tinyshakespeare/input.txt")
DOWNLOAD_TIMEOUT_S = 20


def _lookup_table() -> np.ndarray:
    """Vocabulary index of code points 0..127; anything outside VOCAB maps to space."""
    table = np.full(128, SPACE_INDEX, dtype=np.int64)
    table[[ord(char) for char in VOCAB]] = np.arange(len(VOCAB))
    return table


_LOOKUP = _lookup_table()
_VOCAB_ARRAY = np.array(list(VOCAB))


def encode(text: str) -> np.ndarray:
    """Vocabulary indices (int64) of ``text``'s characters; unknown characters become spaces."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _LOOKUP[np.minimum(codes, 127)]


def decode(ids) -> str:
    """The text whose vocabulary indices are ``ids`` (a sequence, array or tensor)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(VOCAB)):
        raise ValueError(
            f"Character ids must lie in [0, {len(VOCAB)}); got values from {ids.min()} "
            f"to {ids.max()}."
        )
    return "".join(_VOCAB_ARRAY[ids].tolist())


def _role_name(line: str) -> str | None:
    """The role named by ``line`` if it is a speaker line (``Name:``), else None."""
    stripped = line.strip()
    if not stripped.endswith(":") or stripped.count(":") != 1:
        return None
    name = stripped[:-1].strip()
    return name or None


def parse_roles(text: str) -> list[tuple[str, str]]:
    """``(role name, spoken text)`` for every block of ``text``, in corpus order.

    Blocks are separated by blank (or whitespace-only) lines. A block counts when its first
    line ends with ``:`` and holds no other ``:``; its spoken text is the block's other lines
    joined by newlines, plus a trailing newline. Blocks without such a speaker line are
    skipped, and so are speaker lines with nothing spoken under them (tiny Shakespeare has
    125 of those; they would only add a lone newline to the role's text).
    """
    lines = normalise_newlines(text).split("\n")
    roles: list[tuple[str, str]] = []
    block: list[str] = []
    for line in [*lines, ""]:  # the sentinel blank line closes the last block
        if line.strip():
            block.append(line)
            continue
        if len(block) > 1:
            name = _role_name(block[0])
            if name is not None:
                roles.append((name, "\n".join(block[1:]) + "\n"))
        block = []
    return roles


def _how_to_get() -> str:
    return (
        f"Download it from {URL} (for example `curl -L -o input.txt {URL}`) and pass "
        "`data.path=/path/to/input.txt`, or use `data.path=auto data.download=true` to "
        f"fetch it into {CACHE_PATH}."
    )


def _download(target: Path) -> None:
    """Fetch the corpus into ``target``; raise FileNotFoundError saying how to get it."""
    partial = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
        if not payload:
            raise OSError("the server sent an empty file")
        partial.write_bytes(payload)
        os.replace(partial, target)
    except Exception as err:  # any failure ends in the same, actionable message
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"Could not download tiny Shakespeare to {target} ({err}). {_how_to_get()}"
        ) from err


def _resolve_path(path: str, download: bool) -> Path:
    if path == "auto":
        cached = CACHE_PATH.expanduser()
        if cached.is_file():
            return cached
        if not download:
            raise FileNotFoundError(
                f"Tiny Shakespeare is not in {cached} and data.download is false. {_how_to_get()}"
            )
        _download(cached)
        return cached
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"Tiny Shakespeare file {file} does not exist. {_how_to_get()}")
    return file


def normalise_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` become ``\\n`` (the vocabulary has no ``\\r``)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def cut_windows(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """``(n, seq_len + 1)``: ``ids`` cut into consecutive non-overlapping windows from the
    start; the ``len(ids) % (seq_len + 1)`` ids left at the end are dropped."""
    window = seq_len + 1
    n = len(ids) // window
    return np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)


def window_split(windows: np.ndarray) -> Split:
    """Inputs ``w[:-1]`` and next-character targets ``w[1:]`` of every window."""
    rows = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))
    return Split(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())


def _num_test(test_fraction: float, n: int) -> int:
    """``ceil(test_fraction * n)``, at least 1, leaving at least 1 training window.

    The product is rounded to 9 decimals first so that float noise (0.1 * 30 is
    3.0000000000000004) does not add a window.
    """
    return min(n - 1, max(1, math.ceil(round(test_fraction * n, 9))))


def load_shakespeare(
    path: str, seq_len: int, test_fraction: float, seed: int, download: bool = False
) -> TaskData:
    """Tiny Shakespeare as ``TaskData``: windows of ``seq_len`` characters, split by role.

    ``path`` is the corpus file, or ``auto`` for ``~/.cache/fedlocal/tinyshakespeare/input.txt``
    (downloaded there when missing and ``download`` is true). Training and test rows are
    ordered by role (roles numbered 0..R-1 by first appearance), then by position in the
    role's text. ``labels`` and ``groups`` both hold each training row's role index.
    ``seed`` is accepted for a uniform loader signature and not used: the result is the same
    for every seed. Where ``test_fraction`` would leave a role with no training window, one
    window is kept for training (never the case for ``test_fraction <= 0.5``).
    """
    del seed  # the split is time-ordered, nothing is random
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"data.seq_len must be a positive integer, got {seq_len!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must lie in (0, 1), got {test_fraction!r}.")
    file = _resolve_path(path, download)
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"Tiny Shakespeare file {file} is empty.")
    blocks = parse_roles(text)
    if not blocks:
        raise ValueError(
            f"No speaking roles found in {file}: expected blocks separated by blank lines, "
            "each starting with a line such as `First Citizen:`."
        )

    role_texts: dict[str, list[str]] = {}  # dicts keep first-appearance order
    for name, spoken in blocks:
        role_texts.setdefault(name, []).append(spoken)

    window = seq_len + 1
    train_parts, test_parts, train_roles, test_roles = [], [], [], []
    for pieces in role_texts.values():
        windows = cut_windows(encode("".join(pieces)), seq_len)
        n = len(windows)
        if n < 2:
            continue
        n_test = _num_test(test_fraction, n)
        role = len(train_parts)
        train_parts.append(windows[: n - n_test])
        test_parts.append(windows[n - n_test :])
        train_roles.append(np.full(n - n_test, role, dtype=np.int64))
        test_roles.append(np.full(n_test, role, dtype=np.int64))
    if not train_parts:
        raise ValueError(
            f"No role in {file} has at least 2 windows of data.seq_len + 1 = {window} "
            "characters; lower data.seq_len."
        )

    roles = np.concatenate(train_roles)
    return TaskData(
        train=window_split(np.concatenate(train_parts)),
        test=window_split(np.concatenate(test_parts)),
        kind=LANGUAGE,
        num_outputs=len(VOCAB),
        input_shape=(seq_len,),
        labels=roles,
        groups=roles.copy(),
    )


def assign_roles_to_clients(role_sizes: np.ndarray, num_clients: int, seed: int) -> np.ndarray:
    """Client id in ``[0, num_clients)`` for every role, balancing training windows.

    Greedy longest-processing-time: roles in decreasing size (equal sizes in the order of a
    permutation drawn from ``np.random.default_rng(seed)``) each go to the client with the
    fewest windows so far (ties: lowest client id). The first ``num_clients`` roles go to
    clients 0, 1, ... in turn, which is what the greedy rule does for positive sizes and
    keeps every client non-empty even when some roles are empty. Afterwards the largest and
    smallest client totals differ by at most the largest role's size.
    """
    sizes = np.asarray(role_sizes)
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(
            f"role_sizes must be a 1-D integer array, got {sizes.dtype} {sizes.shape}."
        )
    if (sizes < 0).any():
        raise ValueError("role_sizes must not be negative.")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise TypeError(f"num_clients must be an integer, got {num_clients!r}.")
    num_roles = len(sizes)
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}.")
    if num_clients > num_roles:
        raise ValueError(
            f"tiny Shakespeare has {num_roles} speaking roles with enough text; use at most "
            f"{num_roles} clients or data.partition=iid (got {num_clients} clients)."
        )

    tie_rank = np.random.default_rng(seed).permutation(num_roles)
    order = np.lexsort((tie_rank, -sizes.astype(np.int64)))  # last key sorts first
    owner = np.empty(num_roles, dtype=np.int64)
    totals = np.zeros(num_clients, dtype=np.int64)
    for rank, role in enumerate(order):
        client = rank if rank < num_clients else int(np.argmin(totals))  # argmin: lowest id
        owner[role] = client
        totals[client] += sizes[role]
    return owner


register(Task(
    name="shakespeare", kind=LANGUAGE, num_outputs=len(VOCAB),
    input_shape=lambda data: (data.seq_len,),
    load=lambda key: load_shakespeare(key.path, key.seq_len, key.test_fraction, key.seed,
                                      key.download),
    default_model="lstm", models=("lstm", "rnn"), partitions=("natural", "iid"),
    groups="speaking role",
))
