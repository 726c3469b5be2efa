"""Issue 47: data checked at the roots: types of CIFAR pickles, declared sizes before reading, a fixed
16-bit scale, flags against the data, and nothing left by a run refused before its first epoch."""

import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from tf_fusionnet.data.sources import DataError, load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "fusionnet-tiny", "--batch_size", "64", "--warmup_epochs", "0", "--epochs", "1"]


def _cifar_folder(root, data, labels, n=20):
    root.mkdir()
    rng = np.random.default_rng(0)
    good = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), "labels": [int(v) for v in rng.integers(0, 10, n)]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = dict(good)
        if name == "data_batch_1":
            batch = {"data": data if data is not None else good["data"],
                     "labels": labels if labels is not None else good["labels"]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return str(root)


@pytest.mark.parametrize("data,labels,pattern", [
    (np.random.default_rng(1).random((20, 3072)), None, r"data are float64, expected uint8"),
    (np.zeros((20, 3072), np.int16), None, r"data are int16, expected uint8"),
    (None, [5.7] * 20, r"labels are float64, expected integers"),
    (None, list(range(10)) * 1 + [0] * 5, r"15 labels for 20 images"),
    (None, [-1] + [0] * 19, r"label -1 out of range"),
])
def test_cifar_pickles_of_the_wrong_types_are_refused(tmp_path, data, labels, pattern):
    with pytest.raises(DataError, match=pattern):
        load_dataset(_cifar_folder(tmp_path / "cifar", data, labels))


def test_a_sparse_giant_archive_member_is_refused_before_it_is_read(tmp_path):
    """A few kilobytes of archive holding a sparse 4 GB member (GNU tar -S) is refused from its
    header, not read into memory."""
    import shutil

    if shutil.which("tar") is None:
        pytest.skip("no tar command to write a sparse archive with")
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tree / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tree / split / cls / "0.png")
    with open(tree / "train" / "a" / "1.png", "wb") as f:
        f.truncate(4 * 2**30)
    path = tmp_path / "huge.tgz"
    subprocess.run(["tar", "-cSzf", str(path), "-C", str(tree), "train", "test"], check=True)
    assert os.path.getsize(path) < 100_000
    with pytest.raises(DataError, match=r"declares 4,294,967,296 bytes"):
        load_dataset(str(path))


def test_an_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / "d" / split / cls / "0.png")
    Image.new("1", (12000, 12000)).save(tmp_path / "d" / "train" / "a" / "big.png")
    assert os.path.getsize(tmp_path / "d" / "train" / "a" / "big.png") < 200_000
    with pytest.raises(DataError, match=r"declares 12000x12000 pixels"):
        load_dataset(str(tmp_path / "d"))


def test_16_bit_grey_is_scaled_by_one_factor_whatever_else_the_image_holds():
    from tf_fusionnet.runtime.portable import image_to_array

    dark = Image.fromarray(np.full((4, 4), 200 * 257, np.uint16))
    bright = np.full((4, 4), 200 * 257, np.uint16)
    bright[0, 0] = 65535
    a, _ = image_to_array(dark, 1)
    b, _ = image_to_array(Image.fromarray(bright), 1)
    assert a[1, 1, 0] == b[1, 1, 0] == 200 and b[0, 0, 0] == 255


def _train(out, *flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--output", out, *TINY, *flags],
                          capture_output=True, text=True, timeout=600)


def test_a_run_refused_before_its_first_epoch_leaves_nothing_and_the_fix_then_works(tmp_path):
    out = str(tmp_path / "run")
    refused = _train(out, "--batch_size", "100000")
    assert refused.returncode != 0 and "larger than the" in refused.stderr and not os.path.exists(out)
    padded = _train(out, "--pad", "3000")
    assert padded.returncode != 0 and "--pad 3000 is more than half" in padded.stderr and not os.path.exists(out)
    fixed = _train(out)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
