import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_fusionnet.data import sources
from tf_fusionnet.data.pipeline import AugmentConfig, BetaCutMix, make_batch_mixer, make_eval_dataset, make_train_dataset, normalization_stats
from tf_fusionnet.data.safe_pickle import UnsafePickleError, safe_load_cifar_pickle
from tf_fusionnet.data.sources import DataError, load_dataset
from tf_fusionnet.data.split import default_val_size, load_split, make_split, save_split


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/tf_fusionnet_pwned",))


def _rng_images(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 3072), dtype=np.uint8)


def _write_cifar10_binary(root, per_batch=4, bad_label=False):
    os.makedirs(root)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = np.arange(per_batch, dtype=np.uint8) % 10
        if bad_label and name == "test_batch.bin":
            labels[0] = 42
        records = np.concatenate([labels[:, None], _rng_images(per_batch)], axis=1)
        records.tofile(os.path.join(root, name))


def _write_cifar10_python(root, per_batch=4, evil=False):
    os.makedirs(root)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": _rng_images(per_batch), b"labels": [i % 10 for i in range(per_batch)],
                 b"batch_label": name.encode(), b"filenames": [b"x.png"] * per_batch}
        if evil and name == "data_batch_1":
            batch[b"payload"] = _Evil()
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def _tar(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(folder))
    return path


def test_safe_pickle_admits_cifar_and_refuses_code():
    data = {b"data": _rng_images(2), b"labels": [1, 2]}
    loaded = safe_load_cifar_pickle(pickle.dumps(data, protocol=2))
    np.testing.assert_array_equal(loaded["data"], data[b"data"])
    with pytest.raises(UnsafePickleError, match="refused"):
        safe_load_cifar_pickle(pickle.dumps({b"data": _Evil()}))
    assert not os.path.exists("/tmp/tf_fusionnet_pwned")


def test_cifar10_binary_archive(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar10_binary(str(folder))
    for spec in (str(folder), _tar(str(folder), str(tmp_path / "cifar-10-binary.tar.gz"))):
        data = load_dataset(spec)
        assert data.train_images.shape == (20, 32, 32, 3) and data.test_images.shape == (4, 32, 32, 3)
        assert data.class_names[0] == "airplane" and data.kind == "cifar"
        assert list(data.train_labels[:4]) == [0, 1, 2, 3]
    # The first record's pixels are channel-planar in the file: R plane first.
    raw = np.fromfile(str(folder / "data_batch_1.bin"), dtype=np.uint8)[1:3073]
    np.testing.assert_array_equal(data.train_images[0, :, :, 0].ravel(), raw[:1024])


def test_cifar_label_out_of_range(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar10_binary(str(folder), bad_label=True)
    with pytest.raises(DataError, match="out of range"):
        load_dataset(str(folder))


def test_cifar100_binary(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    os.makedirs(folder)
    for name, n in (("train.bin", 6), ("test.bin", 3)):
        records = np.concatenate([np.full((n, 1), 3, np.uint8), (np.arange(n, dtype=np.uint8) * 17 % 100)[:, None],
                                  _rng_images(n)], axis=1)
        records.tofile(str(folder / name))
    (folder / "fine_label_names.txt").write_text("\n".join(f"c{i}" for i in range(100)))
    data = load_dataset(str(folder))
    assert data.num_classes == 100 and data.class_names[5] == "c5"
    assert list(data.test_labels) == [0, 17, 34]  # the fine label, not the coarse one


def test_cifar10_python_archive_and_malicious_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_python(str(folder))
    data = load_dataset(_tar(str(folder), str(tmp_path / "cifar-10-python.tar.gz")))
    assert data.train_images.shape == (20, 32, 32, 3)
    evil = tmp_path / "evil" / "cifar-10-batches-py"
    _write_cifar10_python(str(evil), evil=True)
    with pytest.raises(DataError, match="refused to unpickle"):
        load_dataset(str(evil))
    assert not os.path.exists("/tmp/tf_fusionnet_pwned")


def _write_folder(root, classes=("cat", "dog"), n=3, size=(20, 24), mode="L", test_classes=None):
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for c in names:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                color = 0 if mode == "L" else (0, 0, 0)
                Image.new(mode, (size[1], size[0]), color=color).save(os.path.join(root, split, c, f"{i}.png"))


def test_image_folder_any_size_and_channels(tmp_path):
    _write_folder(str(tmp_path / "d"))
    data = load_dataset(str(tmp_path / "d"))
    assert data.image_shape == (20, 24, 1) and data.class_names == ["cat", "dog"] and data.kind == "folder"
    assert list(data.train_labels) == [0, 0, 0, 1, 1, 1]
    resized = load_dataset(str(tmp_path / "d"), image_size=(16, 16))
    assert resized.image_shape == (16, 16, 1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="neither a CIFAR archive"):
        load_dataset(str(tmp_path / "empty"))
    _write_folder(str(tmp_path / "mixed"))
    Image.new("L", (30, 30)).save(str(tmp_path / "mixed" / "train" / "cat" / "9.png"))
    with pytest.raises(DataError, match="--image_size"):
        load_dataset(str(tmp_path / "mixed"))
    _write_folder(str(tmp_path / "broken"))
    (tmp_path / "broken" / "train" / "dog" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        load_dataset(str(tmp_path / "broken"))
    _write_folder(str(tmp_path / "unknown"), test_classes=("cat", "emu"))
    with pytest.raises(DataError, match="emu"):
        load_dataset(str(tmp_path / "unknown"))
    with pytest.raises(DataError, match="Unknown|no such"):
        load_dataset("imagenet")


def test_tfds_offline_fails_fast_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_can_reach", lambda host, **kw: False)
    with pytest.raises(DataError, match="cannot be reached.*local copy"):
        load_dataset("cifar10", tfds_data_dir=str(tmp_path))


def test_embedded_sample():
    data = load_dataset("sample")
    assert data.train_images.shape == (500, 32, 32, 3) and data.test_images.shape == (300, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [50] * 10
    assert default_val_size(data) == 50


def test_split_is_disjoint_seeded_and_checked(tmp_path):
    train, val = make_split(100, 10, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(100))
    np.testing.assert_array_equal(make_split(100, 10, seed=3)[1], val)
    assert not np.array_equal(make_split(100, 10, seed=4)[1], val)
    with pytest.raises(DataError):
        make_split(100, 100, seed=0)

    data = load_dataset("sample")
    path = str(tmp_path / "split.json")
    train, val = make_split(len(data.train_labels), 50, seed=0)
    save_split(path, data, val, seed=0)
    loaded_train, loaded_val = load_split(path, data)
    np.testing.assert_array_equal(loaded_train, train)
    np.testing.assert_array_equal(loaded_val, val)
    other = sources.ImageDataset(data.train_images[::-1].copy(), data.train_labels, data.test_images,
                                 data.test_labels, data.class_names, "other", "folder")
    with pytest.raises(DataError, match="other training data"):
        load_split(path, other)


def test_mixer_refuses_integer_labels():
    mix = make_batch_mixer(AugmentConfig())
    with pytest.raises(ValueError, match="one-hot"):
        mix(tf.zeros([4, 8, 8, 3]), tf.zeros([4], tf.int32))


def test_cutmix_ratio_is_beta_1_1():
    layer = BetaCutMix(alpha=1.0, seed=7)
    drawn = np.asarray(layer._generate_mix_weight(10_000, layer.generator))
    assert abs(drawn.mean() - 0.5) <= 0.01
    assert abs(drawn.var() - 1 / 12) <= 0.1 / 12
    # What training uses: the label weight of each image is the share of its own pixels kept.
    transform = layer.get_random_transformation({"images": tf.zeros([10_000, 32, 32, 1])}, training=True)
    kept = 1.0 - np.asarray(transform["batch_masks"], np.float64).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(transform["mix_weight"]), kept, atol=1e-6)
    assert abs(kept.mean() - 0.5) <= 0.01 and abs(kept.var() - 1 / 12) <= 0.1 / 12
    # Keras's own layer with factor=1 draws alpha ~ U(0, 1) per batch first: a wider mixture
    # (variance ln(3)/8 = 0.137 over many batches).
    keras_layer = tf.keras.layers.CutMix(factor=1.0, seed=7)
    keras_weights = np.concatenate(
        [np.asarray(keras_layer._generate_mix_weight(50, keras_layer.generator)) for _ in range(200)]
    )
    assert keras_weights.var() > 1.2 / 12


def test_cutmix_mixes_labels_by_pixel_share():
    images = tf.concat([tf.zeros([8, 16, 16, 3]), tf.ones([8, 16, 16, 3])], axis=0)
    labels = tf.one_hot(tf.concat([tf.zeros(8, tf.int32), tf.ones(8, tf.int32)], 0), 2)
    out = BetaCutMix(alpha=1.0, seed=1)({"images": images, "labels": labels}, training=True)
    share_of_ones = np.asarray(out["images"]).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(out["labels"])[:, 1], share_of_ones, atol=1e-6)


def test_train_and_eval_pipelines():
    images = np.random.RandomState(0).randint(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    mean, std = normalization_stats(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(0), rtol=1e-6)
    ds = make_train_dataset(images, labels, num_classes=4, num_exits=3, batch_size=16, mean=mean, std=std,
                            augment=AugmentConfig(), seed=0)
    batches = list(ds)
    assert len(batches) == 2  # the partial batch is dropped
    x, ys = batches[0]
    assert x.shape == (16, 16, 16, 3) and len(ys) == 3 and ys[0].shape == (16, 4)
    np.testing.assert_allclose(ys[0].numpy().sum(1), 1.0, rtol=1e-5)
    plain = make_train_dataset(images, labels, num_classes=4, num_exits=1, batch_size=16, mean=mean, std=std,
                               augment=AugmentConfig(random_crop=False, flip=False, mix_prob=0), seed=0)
    x, (y,) = next(iter(plain))
    assert set(np.unique(y.numpy())) == {0.0, 1.0}
    ev = make_eval_dataset(images, None, batch_size=32, mean=mean, std=std)
    first = next(iter(ev)).numpy()
    np.testing.assert_allclose(first[0], (images[0] - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="--batch_size"):
        make_train_dataset(images, labels, num_classes=4, num_exits=1, batch_size=64, mean=mean, std=std,
                           augment=AugmentConfig())
