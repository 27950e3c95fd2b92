"""Tiny Shakespeare loader: vocabulary, role parsing, windows, per-role split, client assignment."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.base import LANGUAGE
from tasks.shakespeare import (
    VOCAB,
    assign_roles_to_clients,
    decode,
    encode,
    load_shakespeare,
    parse_roles,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_file(), reason=f"tiny Shakespeare corpus not found at {CORPUS}"
)

# Golden numbers for the 1,115,394-character corpus, computed once with this loader.
CORPUS_BLOCKS = 7097  # blocks with a speaker line and something spoken under it
CORPUS_ROLE_NAMES = 299  # distinct speaker names
ROLES_SEQ80 = 232  # roles with at least 2 windows of 81 characters
TRAIN_SEQ80, TEST_SEQ80 = 11161, 1364  # windows for seq_len=80, test_fraction=0.1


def exact_num_test(test_fraction, n):
    """ceil(test_fraction * n) in exact arithmetic, at least 1."""
    return max(1, math.ceil(Fraction(str(test_fraction)) * n))


@pytest.fixture(scope="module")
def data80():
    if not CORPUS.is_file():
        pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
    return load_shakespeare(str(CORPUS), seq_len=80, test_fraction=0.1, seed=0)


def test_vocab_is_fixed():
    assert len(VOCAB) == 96
    assert VOCAB[0] == "\n"
    assert VOCAB[1:] == "".join(chr(c) for c in range(32, 127))


def test_encode_decode_roundtrip():
    text = "First Citizen:\nBefore we proceed, hear me ~speak~!\n{[0-9]} @#$%^&*()_+`|\\\"'"
    ids = encode(text)
    assert ids.dtype == np.int64
    assert ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < len(VOCAB)
    assert decode(ids) == text
    assert decode(torch.from_numpy(ids)) == text
    assert decode(ids.tolist()) == text
    assert encode("\n").tolist() == [0]
    assert encode(" ~").tolist() == [1, 95]


def test_unknown_characters_become_space():
    space = VOCAB.index(" ")
    assert (encode("\t\u00e9\u20ac\U0001f600\x7f\r") == space).all()
    ids = encode("a\tb\u00e9c\u20ac\U0001f600d\x7f\r")
    assert ids.tolist() == encode("a b c  d  ").tolist()
    assert decode(ids) == "a b c  d  "
    assert encode("").shape == (0,)


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="96"):
        decode([0, 96])
    with pytest.raises(ValueError):
        decode([-1])


def test_parse_roles_small_text():
    text = (
        "First Citizen:\n"
        "Before we proceed any further, hear me speak.\n"
        "\n"
        "This block has no speaker line.\n"
        "Note: it is skipped.\n"
        "\n"
        "All:\n"
        "Speak, speak.\n"
        "Resolved. resolved.\n"
        "\n"
        "MENENIUS: not a role line, text follows the colon\n"
        "skipped too\n"
        "\n"
        "  First Citizen:  \n"
        "You are all resolved rather to die than to famish?"
    )
    assert parse_roles(text) == [
        ("First Citizen", "Before we proceed any further, hear me speak.\n"),
        ("All", "Speak, speak.\nResolved. resolved.\n"),
        ("First Citizen", "You are all resolved rather to die than to famish?\n"),
    ]


def test_parse_roles_edge_cases():
    assert parse_roles("") == []
    assert parse_roles("no roles here\njust text\n") == []
    # Several blank lines in a row, and a speaker line with nothing spoken under it.
    assert parse_roles("\n\nA:\nx\n\n\n\nB:\n\nA:\ny\n") == [("A", "x\n"), ("A", "y\n")]
    assert parse_roles("A:\r\nx\r\n\r\nB:\r\ny\r\n") == [("A", "x\n"), ("B", "y\n")]


@needs_corpus
def test_corpus_role_count():
    blocks = parse_roles(CORPUS.read_text(encoding="utf-8"))
    assert len(blocks) == CORPUS_BLOCKS
    assert len({name for name, _ in blocks}) == CORPUS_ROLE_NAMES
    assert blocks[0] == ("First Citizen", "Before we proceed any further, hear me speak.\n")
    assert blocks[1] == ("All", "Speak, speak.\n")


def test_load_shapes_and_golden_counts(data80):
    d = data80
    assert d.kind == LANGUAGE
    assert d.num_outputs == len(VOCAB) == 96
    assert d.input_shape == (80,)
    for split in (d.train, d.test):
        assert split.x.dtype == torch.int64 and split.y.dtype == torch.int64
        assert split.x.shape == split.y.shape
        assert split.x.shape[1] == 80
        assert int(split.x.min()) >= 0 and int(split.x.max()) < len(VOCAB)
    assert len(d.train) == TRAIN_SEQ80
    assert len(d.test) == TEST_SEQ80
    assert d.labels.dtype == np.int64 and d.groups.dtype == np.int64
    assert np.array_equal(d.labels, d.groups)
    assert len(np.unique(d.labels)) == ROLES_SEQ80
    assert d.labels.min() == 0 and d.labels.max() == ROLES_SEQ80 - 1
    # Rows are grouped by role, roles numbered by first appearance.
    assert (np.diff(d.labels) >= 0).all()


def test_targets_are_inputs_shifted_by_one(data80):
    for split in (data80.train, data80.test):
        assert torch.equal(split.y[:, :-1], split.x[:, 1:])


def test_windows_reproduce_the_first_role_text(data80):
    """Role 0 is First Citizen: its windows, train then test, are its text cut in 81s."""
    blocks = parse_roles(CORPUS.read_text(encoding="utf-8"))
    role_text = "".join(text for name, text in blocks if name == "First Citizen")
    n_train = int((data80.labels == 0).sum())
    n = len(role_text) // 81
    n_test = n - n_train
    assert n_test == exact_num_test(0.1, n)
    train_windows = torch.cat([data80.train.x[:n_train], data80.train.y[:n_train, -1:]], dim=1)
    test_windows = torch.cat([data80.test.x[:n_test], data80.test.y[:n_test, -1:]], dim=1)
    rebuilt = decode(torch.cat([train_windows, test_windows]))
    assert rebuilt == role_text[: n * 81]


def reference_split(seq_len, test_fraction):
    """A plain, slow re-statement of the rule: per role (in first-appearance order) the
    windows of seq_len + 1 characters, then (train windows, test windows)."""
    texts = {}
    for name, text in parse_roles(CORPUS.read_text(encoding="utf-8")):
        texts[name] = texts.get(name, "") + text
    width = seq_len + 1
    result = []
    for text in texts.values():
        windows = [text[i : i + width] for i in range(0, len(text) - width + 1, width)]
        if len(windows) >= 2:
            n_test = exact_num_test(test_fraction, len(windows))
            result.append((windows[: len(windows) - n_test], windows[len(windows) - n_test :]))
    return result


@pytest.mark.parametrize("test_fraction", [0.1, 0.3, 0.5])
@needs_corpus
def test_per_role_split_follows_ceil_rule(test_fraction):
    d = load_shakespeare(str(CORPUS), seq_len=40, test_fraction=test_fraction, seed=0)
    reference = reference_split(40, test_fraction)
    train_counts = [len(train) for train, _ in reference]
    test_counts = [len(test) for _, test in reference]
    assert min(train_counts) >= 1 and min(test_counts) >= 1  # every role in both splits
    assert np.bincount(d.labels).tolist() == train_counts
    assert len(d.test) == sum(test_counts)
    train_windows = torch.cat([d.train.x, d.train.y[:, -1:]], dim=1)
    test_windows = torch.cat([d.test.x, d.test.y[:, -1:]], dim=1)
    assert [decode(row) for row in train_windows] == [w for train, _ in reference for w in train]
    assert [decode(row) for row in test_windows] == [w for _, test in reference for w in test]


@needs_corpus
def test_load_is_deterministic_and_ignores_seed(data80):
    again = load_shakespeare(str(CORPUS), seq_len=80, test_fraction=0.1, seed=0)
    other_seed = load_shakespeare(str(CORPUS), seq_len=80, test_fraction=0.1, seed=123)
    for d in (again, other_seed):
        assert torch.equal(d.train.x, data80.train.x) and torch.equal(d.train.y, data80.train.y)
        assert torch.equal(d.test.x, data80.test.x) and torch.equal(d.test.y, data80.test.y)
        assert np.array_equal(d.labels, data80.labels)


def test_load_rejects_bad_arguments(tmp_path):
    missing = tmp_path / "nope" / "input.txt"
    with pytest.raises(FileNotFoundError, match="data.path") as err:
        load_shakespeare(str(missing), seq_len=80, test_fraction=0.1, seed=0)
    assert str(missing) in str(err.value)
    assert "raw.githubusercontent.com/karpathy/char-rnn" in str(err.value)

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        load_shakespeare(str(empty), seq_len=80, test_fraction=0.1, seed=0)

    no_roles = tmp_path / "prose.txt"
    no_roles.write_text("Just some prose.\nWithout any speaker.\n")
    with pytest.raises(ValueError, match="prose.txt"):
        load_shakespeare(str(no_roles), seq_len=80, test_fraction=0.1, seed=0)

    short = tmp_path / "short.txt"
    short.write_text("A:\nhello there\n\nB:\nhi\n")
    with pytest.raises(ValueError, match="seq_len"):
        load_shakespeare(str(short), seq_len=80, test_fraction=0.1, seed=0)

    with pytest.raises(ValueError, match="test_fraction"):
        load_shakespeare(str(short), seq_len=2, test_fraction=0.0, seed=0)
    with pytest.raises(ValueError, match="seq_len"):
        load_shakespeare(str(short), seq_len=0, test_fraction=0.1, seed=0)


def test_load_small_file_exact_windows(tmp_path):
    # A: "abcdefgh\n" (9 chars) -> 3 windows of 3; B: "xy\n" -> 1 window, dropped;
    # C: "0123456\n" + "789\n" (12 chars) -> 4 windows.
    corpus = tmp_path / "input.txt"
    corpus.write_text("A:\nabcdefgh\n\nB:\nxy\n\nC:\n0123456\n\nA:\n\nC:\n789\n")
    d = load_shakespeare(str(corpus), seq_len=2, test_fraction=0.3, seed=0)
    # A: 3 windows, ceil(0.9) = 1 test; C: 4 windows, ceil(1.2) = 2 test.
    assert d.labels.tolist() == [0, 0, 1, 1]
    assert [decode(row) for row in d.train.x] == ["ab", "de", "01", "34"]
    assert [decode(row) for row in d.train.y] == ["bc", "ef", "12", "45"]
    assert [decode(row) for row in d.test.x] == ["gh", "6\n", "89"]
    assert [decode(row) for row in d.test.y] == ["h\n", "\n7", "9\n"]


def test_auto_path_without_download_says_how_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.path") as err:
        load_shakespeare("auto", seq_len=80, test_fraction=0.1, seed=0, download=False)
    assert "raw.githubusercontent.com/karpathy/char-rnn" in str(err.value)


def test_failed_download_says_how_to_get_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError, match="data.path") as err:
        load_shakespeare("auto", seq_len=80, test_fraction=0.1, seed=0, download=True)
    assert "network is unreachable" in str(err.value)
    assert "raw.githubusercontent.com/karpathy/char-rnn" in str(err.value)
    cache = tmp_path / ".cache/fedlocal/tinyshakespeare"
    assert list(cache.iterdir()) == []  # no partial file left behind


def test_assign_roles_balances_corpus_roles(data80):
    sizes = np.bincount(data80.labels)
    for num_clients in (2, 10, 20):
        owner = assign_roles_to_clients(sizes, num_clients, seed=0)
        assert owner.shape == sizes.shape and owner.dtype == np.int64
        assert owner.min() == 0 and owner.max() == num_clients - 1
        roles_per_client = np.bincount(owner, minlength=num_clients)
        assert (roles_per_client >= 1).all()
        totals = np.bincount(owner, weights=sizes, minlength=num_clients)
        assert totals.sum() == TRAIN_SEQ80
        # Greedy LPT guarantee: the client that ends largest received its last role while it
        # was the smallest, so max - min <= that role's size <= the largest role (417 here).
        assert totals.max() - totals.min() <= sizes.max()
        # With 20 clients the mean load is 558 windows, over the largest role (417), and 110+
        # roles of fewer than 10 windows fill the last gaps, so loads end within 1% of each
        # other (observed: a spread of a single window).
        assert totals.max() / totals.min() < 1.01


def test_assign_roles_small_example_and_determinism():
    sizes = np.array([5, 1, 5, 3, 2, 2])
    owner = assign_roles_to_clients(sizes, 2, seed=0)
    totals = np.bincount(owner, weights=sizes, minlength=2)
    assert sorted(totals.tolist()) == [9.0, 9.0]
    for seed in (0, 1, 7):
        assert np.array_equal(
            assign_roles_to_clients(sizes, 3, seed), assign_roles_to_clients(sizes, 3, seed)
        )
    # Only ties are random: with distinct sizes every seed gives the same answer.
    distinct = np.array([10, 7, 5, 4, 1])
    expected = assign_roles_to_clients(distinct, 2, seed=0)
    assert expected.tolist() == [0, 1, 1, 0, 1]  # loads 10+4=14, 7+5+1=13
    assert all(np.array_equal(assign_roles_to_clients(distinct, 2, s), expected) for s in range(5))
    # Equal sizes: the permutation decides who goes first, so seeds can differ.
    ties = np.ones(6, dtype=np.int64)
    results = {tuple(assign_roles_to_clients(ties, 6, s)) for s in range(10)}
    assert len(results) > 1
    assert all(sorted(r) == list(range(6)) for r in results)


def test_assign_roles_keeps_clients_non_empty_with_empty_roles():
    owner = assign_roles_to_clients(np.array([0, 0, 0]), 3, seed=0)
    assert sorted(owner.tolist()) == [0, 1, 2]


def test_assign_roles_rejects_too_many_clients():
    with pytest.raises(ValueError, match="4 speaking roles") as err:
        assign_roles_to_clients(np.array([3, 2, 2, 1]), 5, seed=0)
    assert "data.partition=iid" in str(err.value)
    with pytest.raises(ValueError):
        assign_roles_to_clients(np.array([3, 2]), 0, seed=0)
    with pytest.raises(ValueError):
        assign_roles_to_clients(np.array([3, -1]), 1, seed=0)
