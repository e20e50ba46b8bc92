"""Task data: the copying generator against the reference layout, MNIST through real files."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.trainables.idx_files import write_idx, write_idx_pair, write_mnist_raw
from trainables.tasks import (
    TASKS,
    DataNotFoundError,
    Split,
    generate_copying,
    load_copying,
    load_mnist,
    load_task,
    transfer_sets,
)
from trainables.tasks.mnist import pixel_permutation, read_idx

# ---------------------------------------------------------------- copying


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T", [1, 5, 100])
def test_copying_layout_matches_the_reference(T):
    split = generate_copying(200, T, _gen(0))
    x, y = split.x, split.y
    assert x.shape == (200, T + 20, 1) and x.dtype == torch.float32
    assert y.shape == (200, T + 20) and y.dtype == torch.int64
    tokens = x[..., 0].long()
    data = tokens[:, :10]
    assert data.min() >= 1 and data.max() <= 8
    assert (tokens[:, 10 : T + 9] == 0).all()  # T - 1 blanks
    assert (tokens[:, T + 9] == 9).all()  # the delimiter, 0-based index T + 9
    assert ((tokens == 9).sum(dim=1) == 1).all()
    assert (tokens[:, T + 10 :] == 0).all()
    assert (y[:, : T + 10] == 0).all()
    assert torch.equal(y[:, T + 10 :], data)


def test_copying_symbols_cover_1_to_8_uniformly():
    tokens = generate_copying(20_000, 3, _gen(1)).x[:, :10, 0].long()
    counts = torch.bincount(tokens.flatten(), minlength=10)
    assert counts[0] == 0 and counts[9] == 0
    freq = counts[1:9].double() / tokens.numel()
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)


def test_copying_one_hot_encodes_the_same_tokens():
    scalar = generate_copying(50, 7, _gen(3))
    one_hot = generate_copying(50, 7, _gen(3), one_hot=True)
    assert one_hot.x.shape == (50, 27, 10)
    assert (one_hot.x.sum(-1) == 1).all()
    assert torch.equal(one_hot.x.argmax(-1), scalar.x[..., 0].long())
    assert torch.equal(one_hot.y, scalar.y)


def test_copying_n_symbols_10_as_the_paper_appendix():
    split = generate_copying(2_000, 4, _gen(0), n_symbols=10, one_hot=True)
    tokens = split.x.argmax(-1)
    assert split.x.shape[-1] == 12
    assert set(tokens[:, :10].unique().tolist()) == set(range(1, 11))
    assert (tokens[:, 4 + 9] == 11).all()
    task = load_copying(4, train_size=10, val_size=5, n_symbols=10)
    assert task.num_classes == 11 and task.input_size == 1


def test_copying_generates_100k_sequences_fast():
    generate_copying(1_000, 100, _gen(0))  # warm-up
    start = time.perf_counter()
    split = generate_copying(100_000, 100, _gen(0))
    elapsed = time.perf_counter() - start
    assert len(split) == 100_000
    # "Well under a second" on an idle core; the bound leaves room for a busy CI machine.
    assert elapsed < 2.0, f"generating 100,000 sequences took {elapsed:.2f} s"


def test_load_copying_task_facts_and_seeding():
    task = load_copying(12, train_size=300, val_size=100, data_seed=4)
    assert task.name == "copying" and task.test is None
    assert (task.input_size, task.num_classes, task.seq_len) == (1, 9, 32)
    assert task.loss_every_step and task.acc_steps == 10
    assert task.sampling == "with_replacement"
    assert task.meta["data_seed"] == 4 and task.meta["T"] == 12
    assert task.train.x.shape == (300, 32, 1) and task.val.x.shape == (100, 32, 1)

    again = load_copying(12, train_size=300, val_size=100, data_seed=4)
    assert torch.equal(task.train.x, again.train.x) and torch.equal(task.val.y, again.val.y)
    other = load_copying(12, train_size=300, val_size=100, data_seed=5)
    assert not torch.equal(task.train.x, other.train.x)
    assert not torch.equal(task.val.x, other.val.x)
    # Train and validation are separate streams, not the same draws twice.
    assert not torch.equal(task.train.x[:100], task.val.x)

    one_hot = load_copying(12, train_size=300, val_size=100, data_seed=4, one_hot=True)
    assert one_hot.input_size == 10
    assert torch.equal(one_hot.train.x.argmax(-1), task.train.x[..., 0].long())


def test_transfer_sets_are_longer_and_independent():
    train = load_copying(100, train_size=500, val_size=50, data_seed=7).train
    sets = transfer_sets(delays=(200, 400), size=500, seed=7)
    assert sorted(sets) == [200, 400]
    for d, split in sets.items():
        assert split.x.shape == (500, d + 20, 1) and split.y.shape == (500, d + 20)
        assert (split.x[:, d + 9, 0] == 9).all()
        assert torch.equal(split.y[:, d + 10 :], split.x[:, :10, 0].long())
        # Same seed as the training data, yet fresh sequences.
        assert not torch.equal(split.x[:, :10], train.x[:, :10])
    assert not torch.equal(sets[200].x[:, :10], sets[400].x[:, :10])
    # One delay at a time gives exactly the set of the full call (memory-saving evaluation).
    alone = transfer_sets(delays=(400,), size=500, seed=7)
    assert torch.equal(alone[400].x, sets[400].x)
    assert not torch.equal(transfer_sets(delays=(200,), size=500, seed=8)[200].x, sets[200].x)


def test_transfer_sets_default_delays_are_table_1():
    sets = transfer_sets(size=2)
    assert sorted(sets) == [200, 400, 500, 1000, 2000, 5000]
    assert sets[5000].x.shape == (2, 5020, 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: generate_copying(10, 0, _gen(0)), "T must be an int >= 1, got 0"),
        (lambda: generate_copying(0, 5, _gen(0)), "n must be an int >= 1, got 0"),
        (lambda: load_copying(5, train_size=-1), "train_size must be an int >= 1, got -1"),
        (lambda: load_copying(5, data_seed=-2), "data_seed must be a non-negative int, got -2"),
        (lambda: transfer_sets(delays=(200, 0)), "delay must be an int >= 1, got 0"),
        (lambda: transfer_sets(delays=()), "delays must name at least one delay"),
    ],
)
def test_copying_rejects_bad_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- shared types and registry


def test_split_rejects_time_major_or_wrong_dtypes():
    with pytest.raises(ValueError, match="float32"):
        Split(torch.zeros(4, 5, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(4, 5, 1), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="does not match"):
        Split(torch.zeros(4, 5, 1), torch.zeros(5, 4, dtype=torch.int64))


def test_task_data_to_moves_every_split():
    task = load_copying(3, train_size=4, val_size=2)
    moved = task.to("meta")
    assert moved.train.x.device.type == "meta" and moved.val.y.device.type == "meta"
    assert moved.test is None and moved.meta == task.meta
    assert task.train.x.device.type == "cpu"  # the original is untouched


def test_load_task_dispatches_and_rejects_unknown_names():
    assert TASKS == ("copying", "seq_mnist", "pmnist")
    task = load_task("copying", T=6, train_size=8, val_size=4, data_seed=1)
    assert task.name == "copying" and task.seq_len == 26
    with pytest.raises(
        ValueError, match=r"unknown task 'x' \(choose from copying, seq_mnist, pmnist\)"
    ):
        load_task("x")
    with pytest.raises(ValueError, match="unknown option 'delay' for task 'copying'"):
        load_task("copying", delay=6)
    with pytest.raises(ValueError, match="task 'pmnist' needs option 'data_dir'"):
        load_task("pmnist")


# ---------------------------------------------------------------- MNIST (torchvision layout)


@pytest.fixture
def mnist_root(tmp_path):
    root = tmp_path / "data"
    written = write_mnist_raw(root, n_train=64, n_test=20)
    return root, written


def _ids(split: Split) -> list[int]:
    """Image ids written into pixels 0 and 1 by idx_files (in the original pixel order)."""
    pixels = torch.round(split.x[:, :2, 0] * 255).long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def test_seq_mnist_splits_and_scaling(mnist_root):
    root, written = mnist_root
    task = load_mnist("seq_mnist", root, train_size=40, val_size=20)
    train_images, train_labels = written["train"]
    test_images, test_labels = written["test"]

    assert task.train.x.shape == (40, 784, 1) and task.train.y.shape == (40,)
    assert task.val.x.shape == (20, 784, 1) and task.test.x.shape == (20, 784, 1)
    assert (task.input_size, task.num_classes, task.seq_len) == (1, 10, 784)
    assert not task.loss_every_step and task.acc_steps == 1 and task.sampling == "shuffle"
    assert task.meta["source"] == "torchvision" and task.meta["permutation"] == "none"

    # Train: the first images; validation: the LAST images of the training file; test: test file.
    assert _ids(task.train) == list(range(40))
    assert _ids(task.val) == list(range(44, 64))
    assert _ids(task.test) == list(range(64, 84))
    assert torch.equal(task.train.y, torch.from_numpy(train_labels[:40]).long())
    assert torch.equal(task.val.y, torch.from_numpy(train_labels[-20:]).long())
    assert torch.equal(task.test.y, torch.from_numpy(test_labels).long())

    # One pixel per step, row-major, raw / 255.
    expected = torch.from_numpy(train_images[:40].reshape(40, 784)).float() / 255
    assert torch.equal(task.train.x[..., 0], expected)
    assert task.train.x[3, 5 * 28 + 7, 0].item() == pytest.approx(train_images[3, 5, 7] / 255)
    assert task.train.x.min() >= 0 and task.train.x.max() <= 1
    assert task.train.x.max() == 1.0  # the pattern reaches 255, so scaling is not by 256
    expected_test = torch.from_numpy(test_images.reshape(20, 784)).float() / 255
    assert torch.equal(task.test.x[..., 0], expected_test)


@pytest.mark.parametrize("name", ["seq_mnist", "pmnist"])
def test_pooled_pixels_average_blocks_one_per_step(mnist_root, name):
    """The smoke presets' pool=4: 49 steps, each the mean of a 4x4 block, still in [0, 1]."""
    root, written = mnist_root
    full = load_mnist("seq_mnist", root, train_size=8, val_size=4)
    pooled = load_mnist(name, root, train_size=8, val_size=4, pool=4)
    assert pooled.seq_len == 49 and pooled.train.x.shape == (8, 49, 1)
    images = full.train.x[..., 0].view(8, 28, 28)
    block = images[:, 4:8, 12:16].mean(dim=(1, 2))  # block (row 1, column 3)
    if name == "seq_mnist":
        assert torch.allclose(pooled.train.x[:, 1 * 7 + 3, 0], block)
    else:  # the permutation is drawn over the 49 pooled positions, fixed by its own seed
        values = pooled.train.x[..., 0]
        assert sorted(values[0].tolist()) == pytest.approx(
            sorted(torch.nn.functional.avg_pool2d(images[:1, None], 4).flatten().tolist())
        )
    with pytest.raises(ValueError, match="pool must divide 28"):
        load_mnist("seq_mnist", root, train_size=8, val_size=4, pool=3)


def test_mnist_size_prefixes_and_validation(mnist_root):
    root, _ = mnist_root
    small = load_mnist("seq_mnist", root, train_size=10, val_size=5, test_size=3)
    assert _ids(small.train) == list(range(10))
    assert _ids(small.val) == list(range(59, 64))
    assert _ids(small.test) == [64, 65, 66]
    with pytest.raises(ValueError, match=r"train_size \+ val_size must be <= 64"):
        load_mnist("seq_mnist", root)  # the paper's 50,000 + 10,000 do not fit 64 images
    with pytest.raises(ValueError, match="val_size must be an int >= 1, got 0"):
        load_mnist("seq_mnist", root, train_size=10, val_size=0)
    with pytest.raises(ValueError, match="test_size must be <= 20"):
        load_mnist("seq_mnist", root, train_size=10, val_size=5, test_size=21)
    with pytest.raises(ValueError, match="shuffle_seed applies only to an IDX-pair"):
        load_mnist("seq_mnist", root, train_size=10, val_size=5, shuffle_seed=1)
    with pytest.raises(ValueError, match="name must be one of seq_mnist, pmnist, got 'mnist'"):
        load_mnist("mnist", root)
    with pytest.raises(ValueError, match="permutation must be one of fixed, per_seed"):
        load_mnist("pmnist", root, train_size=10, val_size=5, permutation="random")


def test_pmnist_fixed_permutation_is_shared_across_run_seeds(mnist_root):
    root, _ = mnist_root
    sizes = {"train_size": 30, "val_size": 10}
    plain = load_mnist("seq_mnist", root, **sizes)
    a = load_mnist("pmnist", root, permutation_seed=11, run_seed=1, **sizes)
    b = load_mnist("pmnist", root, permutation_seed=11, run_seed=2, **sizes)
    perm = pixel_permutation(11)

    assert sorted(perm.tolist()) == list(range(784))
    assert not torch.equal(perm, torch.arange(784))
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).x, getattr(plain, split).x[:, perm])
        assert torch.equal(getattr(a, split).y, getattr(plain, split).y)
    assert a.meta["permutation"] == "fixed" and a.meta["permutation_seed"] == 11
    assert a.meta["permutation_sha1"] == b.meta["permutation_sha1"]
    other = load_mnist("pmnist", root, permutation_seed=12, **sizes)
    assert not torch.equal(other.train.x, a.train.x)
    assert other.meta["permutation_sha1"] != a.meta["permutation_sha1"]


def test_pmnist_per_seed_permutation_follows_the_run_seed(mnist_root):
    root, _ = mnist_root
    sizes = {"train_size": 30, "val_size": 10}
    plain = load_mnist("seq_mnist", root, **sizes)
    a = load_mnist("pmnist", root, permutation="per_seed", run_seed=1, **sizes)
    b = load_mnist("pmnist", root, permutation="per_seed", run_seed=2, **sizes)
    assert not torch.equal(a.train.x, b.train.x)
    assert a.meta["permutation"] == "per_seed" and a.meta["permutation_seed"] == 1
    # The reference: np.random.seed(seed); order = np.random.permutation(784).
    reference_order = torch.from_numpy(np.random.RandomState(2).permutation(784))
    assert torch.equal(b.train.x, plain.train.x[:, reference_order])
    with pytest.raises(ValueError, match="run_seed is required with permutation='per_seed'"):
        load_mnist("pmnist", root, permutation="per_seed", **sizes)


def test_pmnist_per_seed_gives_each_member_its_own_order(mnist_root):
    root, _ = mnist_root
    sizes = {"train_size": 30, "val_size": 10}
    plain = load_mnist("seq_mnist", root, **sizes)
    task = load_mnist("pmnist", root, permutation="per_seed", run_seeds=(1, 2), **sizes)
    assert torch.equal(task.train.x, plain.train.x)  # orders are applied per member
    orders = torch.stack([pixel_permutation(1), pixel_permutation(2)])
    assert torch.equal(task.member_orders, orders)
    assert task.meta["permutation_seed"] == [1, 2]
    x = plain.train.x[:3].transpose(0, 1).unsqueeze(1).expand(-1, 2, -1, -1)  # (T, K, B, I)
    member_x = task.in_member_order(x)
    for k, seed in enumerate((1, 2)):
        alone = load_mnist("pmnist", root, permutation="per_seed", run_seed=seed, **sizes)
        assert alone.member_orders is None
        assert torch.equal(member_x[:, k], alone.train.x[:3].transpose(0, 1))
    fixed = load_mnist("pmnist", root, run_seeds=(1, 2), permutation_seed=4, **sizes)
    assert fixed.member_orders is None  # one order for all members: applied to the data once


def test_load_task_reaches_mnist(mnist_root):
    root, _ = mnist_root
    task = load_task("pmnist", data_dir=root, train_size=8, val_size=4, permutation_seed=3)
    assert task.name == "pmnist" and len(task.train) == 8 and len(task.test) == 20


def test_missing_mnist_without_download_names_the_directory(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as caught:
        load_mnist("seq_mnist", root)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert str(root / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "--download" in message
    assert "\n" not in message
    assert not root.exists()  # nothing created, nothing fetched


def test_partial_mnist_lists_the_missing_files(tmp_path):
    root = tmp_path / "data"
    write_mnist_raw(root, n_train=12, n_test=4)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_mnist("seq_mnist", root, train_size=8, val_size=4)


# ---------------------------------------------------------------- MNIST (IDX pair)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pair_is_shuffled_and_split(tmp_path, gz):
    images, labels = write_idx_pair(tmp_path, n=50, gz=gz)
    task = load_mnist("seq_mnist", tmp_path, train_size=40, val_size=10, shuffle_seed=3)
    assert task.test is None
    assert len(task.train) == 40 and len(task.val) == 10
    assert task.meta["source"] == "idx_pair" and task.meta["shuffle_seed"] == 3

    train_ids, val_ids = _ids(task.train), _ids(task.val)
    assert sorted(train_ids + val_ids) == list(range(50))  # a partition, nothing lost
    assert train_ids != list(range(40))  # shuffled: the file is sorted by label
    assert len(set(task.train.y.tolist())) > 5  # so train is not a few digits only
    for split, ids in ((task.train, train_ids), (task.val, val_ids)):
        assert split.y.tolist() == labels[ids].tolist()
        expected = torch.from_numpy(images[ids].reshape(len(ids), 784)).float() / 255
        assert torch.equal(split.x[..., 0], expected)

    again = load_mnist("seq_mnist", tmp_path, train_size=40, val_size=10, shuffle_seed=3)
    assert _ids(again.train) == train_ids
    other = load_mnist("seq_mnist", tmp_path, train_size=40, val_size=10, shuffle_seed=4)
    assert _ids(other.train) != train_ids


def test_idx_pair_pmnist_permutes_the_same_images(tmp_path):
    write_idx_pair(tmp_path, n=20, gz=True)
    options = {"train_size": 16, "val_size": 4, "shuffle_seed": 0}
    plain = load_mnist("seq_mnist", tmp_path, **options)
    permuted = load_mnist("pmnist", tmp_path, permutation_seed=5, **options)
    assert torch.equal(permuted.train.x, plain.train.x[:, pixel_permutation(5)])


def test_idx_pair_errors(tmp_path):
    write_idx_pair(tmp_path, n=20, gz=False)
    with pytest.raises(ValueError, match="shuffle_seed is required for the IDX pair"):
        load_mnist("seq_mnist", tmp_path, train_size=16, val_size=4)
    with pytest.raises(ValueError, match=r"train_size \+ val_size must be <= 20"):
        load_mnist("seq_mnist", tmp_path, shuffle_seed=0)  # default 50,000 + 10,000
    (tmp_path / "labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match="labels-idx1-ubyte"):
        load_mnist("seq_mnist", tmp_path, train_size=16, val_size=4, shuffle_seed=0)


def test_read_idx_checks_magic_and_length(tmp_path):
    labels = write_idx(tmp_path / "labels.gz", np.arange(5, dtype=np.uint8))
    assert read_idx(labels, 1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="magic 2049, expected 2051"):
        read_idx(labels, 3)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(ValueError, match="shorter than a header"):
        read_idx(truncated, 1)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01" + (9).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ValueError, match="holds 3 data bytes, its header"):
        read_idx(short, 1)
