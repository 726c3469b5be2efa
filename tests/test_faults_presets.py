"""Issue 47: a preset folder is untrusted input like a bundle, and saving one touches nothing of the user's."""

import json
import os
import stat

import pytest


@pytest.fixture(scope="module")
def model(tiny_run):
    import tf_fusionnet

    return tf_fusionnet.load_model(tiny_run)


@pytest.fixture
def preset(model, tmp_path):
    path = tmp_path / "p"
    model.save_to_preset(str(path))
    return path


def _edit(path, name, change):
    with open(path / name) as f:
        data = json.load(f)
    change(data)
    with open(path / name, "w") as f:
        json.dump(data, f)


def _load_fails(path, pattern):
    import tf_fusionnet

    with pytest.raises(tf_fusionnet.PresetError) as caught:
        tf_fusionnet.load_preset(str(path))
    message = str(caught.value)
    assert "\n" not in message and __import__("re").search(pattern, message), message


def test_saving_twice_leaves_the_user_s_neighbours_alone(model, preset, tmp_path):
    old = tmp_path / "p.old"
    old.mkdir()
    (old / "thesis.txt").write_text("years of work")
    (tmp_path / "p.bak").write_text("a file")
    model.save_to_preset(str(preset))
    model.save_to_preset(str(preset))
    assert (old / "thesis.txt").read_text() == "years of work" and (tmp_path / "p.bak").read_text() == "a file"
    assert sorted(os.listdir(tmp_path)) == ["p", "p.bak", "p.old"]
    assert stat.S_IMODE(os.stat(preset).st_mode) & 0o055  # not 0700: others may read a preset


def test_saving_onto_a_link_replaces_what_it_points_to(model, preset, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(preset)
    model.save_to_preset(str(link))
    assert link.is_symlink() and os.path.isfile(preset / "model.weights.h5")
    assert sorted(os.listdir(tmp_path)) == ["link", "p"]


def test_an_abandoned_temporary_folder_is_cleaned_and_a_live_one_kept(model, preset, tmp_path):
    dead = tmp_path / ".preset-p-999999999-abcd"
    alive = tmp_path / f".preset-p-{os.getpid()}-efgh"
    dead.mkdir()
    alive.mkdir()
    model.save_to_preset(str(preset))
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize("name,change,pattern", [
    ("metadata.json", lambda d: d.update(num_classes=3), r"metadata\.json: num_classes is 3 but config\.json builds 10"),
    ("metadata.json", lambda d: d.update(image_shape=[64, 64, 1]), r"metadata\.json: image_shape"),
    ("config.json", lambda d: d["config"].update(mean=[float("nan"), 1.0, 1.0]), r"config\.json: mean must be 3 finite"),
    ("config.json", lambda d: d["config"].update(class_names=["a", "b"]), r"config\.json: class_names must be 10"),
    ("config.json", lambda d: d["config"]["network"]["config"].update(growth_rate=1000000),
     r"config\.json: growth_rate must be an integer in \[1, 512\]"),
    ("config.json", lambda d: d["config"]["network"]["config"].update(image_shape=[100000, 100000, 3]),
     r"config\.json: image_shape must be"),
    ("config.json", lambda d: d.update(class_name="Dense", config={"units": 3}), r"config\.json: image_shape"),
    ("metadata.json", lambda d: d.update(format_version="2"), r"metadata\.json: format_version must be an integer"),
])
def test_a_preset_that_contradicts_itself_is_refused_in_one_line(preset, name, change, pattern):
    _edit(preset, name, change)
    _load_fails(preset, pattern)


def test_deeply_nested_json_is_one_line(preset):
    (preset / "metadata.json").write_text('{"format": "tf_fusionnet.preset", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    _load_fails(preset, r"nested deeper than 64 levels")


def test_weights_that_link_out_of_the_folder_are_refused(preset, tmp_path):
    outside = tmp_path / "elsewhere.weights.h5"
    os.replace(preset / "model.weights.h5", outside)
    (preset / "model.weights.h5").symlink_to(outside)
    _load_fails(preset, r"link leaving the preset folder")


@pytest.mark.parametrize("value, pattern", [([1, 2, 3], r"metadata\.json: a JSON list, not the object"),
                                            ({"a": 1}, r"metadata\.json: format None, not a tf_fusionnet preset")])
def test_load_model_names_a_preset_s_bad_metadata_not_a_missing_run_file(preset, value, pattern):
    """A preset folder whose metadata.json is a list was taken for a run folder:
    "preprocessing.json: missing; is this a run directory written by train.py?"."""
    import re

    import tf_fusionnet

    (preset / "metadata.json").write_text(json.dumps(value))
    with pytest.raises(tf_fusionnet.LoadError) as caught:
        tf_fusionnet.load_model(str(preset))
    assert "\n" not in str(caught.value) and re.search(pattern, str(caught.value)), str(caught.value)


def test_truncated_weights_are_named_not_taken_for_a_write_error(preset):
    """A preset's model.weights.h5 cut in half was reported by train.py --init_from as "cannot
    write <output> ... the same command resumes"."""
    path = preset / "model.weights.h5"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    _load_fails(preset, r"model\.weights\.h5 unreadable or not this model's weights \(.*truncated")


def test_export_of_a_preset_never_reads_the_data_path_written_in_it(preset, tmp_path):
    """A preset is a stranger's file: export --preset read whatever folder its metadata named in
    train.dataset (another folder of the machine, shown in the report). Only a named dataset or
    the user's --dataset is read."""
    from tf_fusionnet.loading import LoadError, preset_as_run

    private = tmp_path / "private_photos"
    private.mkdir()
    _edit(preset, "metadata.json", lambda d: d.setdefault("train", {}).update(dataset=str(private)))
    with pytest.raises(LoadError, match=r"trained on 'private_photos', a file a preset may not point this tool to"):
        preset_as_run(str(preset), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
