"""The package as a user gets it (issue 34): installed with pip into a fresh virtual environment,
used from a folder outside the checkout by running docs/tutorial.md's code, and its bundle run
where only numpy, ai-edge-litert and Pillow can be imported.

The virtual environments see the packages of the Python that runs the suite (a ``.pth`` file
naming its site-packages: ``--system-site-packages`` would show the base interpreter's instead,
which inside a user's venv has no TensorFlow and no ``wheel``) and install this one with
``--no-deps``: the suite runs offline, and TensorFlow is not downloaded again.
The runtime environment sees no site-packages at all, only links to the three runtime packages and
what they import.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")
# The tutorial's real settings, and the tiny ones the test runs with.
TINY = [("fusionnet-cifar", "fusionnet-tiny"), ("epochs=30", "epochs=1")]
# What `import numpy, PIL, ai_edge_litert` and the runner import, and nothing else.
RUNTIME_MODULES = ["numpy", "PIL", "ai_edge_litert", "flatbuffers", "ml_dtypes", "google", "tqdm", "backports",
                   "typing_extensions"]


def _env(bin_dir=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if bin_dir:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd, cwd, env, timeout=900, shell=False):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=shell,
                            executable="/bin/bash" if shell else None)
    assert result.returncode == 0, f"{cmd}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    return result


def _source_copy(dest):
    """The files pip builds from (a copy: building in the checkout would leave build/ there)."""
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), dest)
    shutil.copytree(os.path.join(ROOT, "tf_fusionnet"), os.path.join(dest, "tf_fusionnet"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _site_packages_of_this_python() -> list[str]:
    import site

    found = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        found.append(site.getusersitepackages())
    return found


def _venv(path, editable_source=None, source=None):
    """A venv that sees this Python's packages (a venv's own, where the suite runs in one)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = os.path.join(path, "bin", "python")
    own = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    with open(os.path.join(own, "outer_environment.pth"), "w") as f:
        f.write("\n".join(_site_packages_of_this_python()) + "\n")
    args = ["-e", editable_source] if editable_source else [source]
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", *args],
         cwd=str(path), env=_env())
    return python


def _runtime_env(path):
    """A Python with no site-packages but links to the runtime packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    links = os.path.join(path, "runtime_packages")
    os.makedirs(links)
    for name in RUNTIME_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{name} is not installed here"
        location = (os.path.dirname(spec.origin) if spec.origin and spec.origin.endswith("__init__.py")
                    else spec.origin or list(spec.submodule_search_locations)[0])
        os.symlink(location, os.path.join(links, os.path.basename(location)))
        libs = location + ".libs"  # manylinux wheels keep their shared libraries beside the package
        for extra in (libs, os.path.join(os.path.dirname(location), ("pillow" if name == "PIL" else name) + ".libs")):
            if os.path.isdir(extra) and not os.path.exists(os.path.join(links, os.path.basename(extra))):
                os.symlink(extra, os.path.join(links, os.path.basename(extra)))
    site = next(p for p in subprocess.run([os.path.join(path, "bin", "python"), "-c",
                                           "import site; print('\\n'.join(site.getsitepackages()))"],
                                          capture_output=True, text=True, check=True).stdout.split() if p)
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "runtime.pth"), "w") as f:
        f.write(links + "\n")
    return os.path.join(path, "bin")


def _tutorial_blocks():
    with open(TUTORIAL) as f:
        text = f.read()
    for old, new in TINY:
        assert old in text, f"the tutorial no longer says {old!r}; update TINY"
        text = text.replace(old, new)
    return re.findall(r"```(python|bash)\n(.*?)```", text, flags=re.S)


def test_pip_install_then_the_tutorial_runs_outside_the_checkout_and_its_bundle_runs_without_tensorflow(tmp_path):
    python = _venv(tmp_path / "venv", source=_source_copy(str(tmp_path / "src")))
    bin_dir = os.path.dirname(python)
    runtime_bin = _runtime_env(tmp_path / "device")
    work = tmp_path / "work"
    work.mkdir()

    # Installed, not the checkout: the package, its data and its tools come from the venv.
    where = _run([python, "-c", "import tf_fusionnet, tf_fusionnet.data.sources as s, os; "
                  "print(tf_fusionnet.__file__); print(len(os.listdir(os.path.join(s.SAMPLE_DIR, 'train'))))"],
                 cwd=str(work), env=_env(bin_dir)).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv")) and where[1] == "10"
    for tool in ("tf-fusionnet-train", "tf-fusionnet-evaluate", "tf-fusionnet-export", "tf-fusionnet-cascade",
                 "tf-fusionnet-summary"):
        assert os.access(os.path.join(bin_dir, tool), os.X_OK), tool
    helped = subprocess.run([os.path.join(bin_dir, "tf-fusionnet-train"), "--help"], cwd=str(work), env=_env(bin_dir),
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "Train a multi-exit classifier" in helped.stdout and "--batch_size" in helped.stdout
    no_tf = subprocess.run([os.path.join(runtime_bin, "python"), "-c", "import tensorflow"], capture_output=True,
                           env=_env())
    assert no_tf.returncode != 0  # the device environment really has no TensorFlow

    blocks = _tutorial_blocks()
    assert [kind for kind, _ in blocks].count("python") >= 4
    from PIL import Image

    # A photo as a phone gives it: 640x480, not the model's 32x32 (the runner fits it to the input).
    with Image.open(os.path.join(ROOT, "tf_fusionnet", "data", "cifar10_sample", "test", "bird", "0014.jpg")) as bird:
        bird.convert("RGB").resize((640, 480), Image.BICUBIC).save(work / "photo.jpg", quality=92)
    script = "\n\n".join(code for kind, code in blocks if kind == "python")
    with open(work / "tutorial.py", "w") as f:
        f.write(script)
    out = _run([python, "tutorial.py"], str(work), _env(bin_dir)).stdout
    assert "reloaded preset gives identical logits: True" in out
    assert os.path.exists(work / "presets" / "tutorial" / "model.weights.h5")
    ran_on_device = False
    from tf_fusionnet.export.web import find_litertjs

    litertjs = find_litertjs()  # the checkout's, which .ci/run installs: the suite does not reach npm
    for kind, code in blocks:
        if kind != "bash" or "pip install" in code:
            continue
        code = "\n".join(line for line in code.splitlines() if not line.startswith("npm "))
        code = code.replace("--litertjs litertjs/node_modules", f"--litertjs {litertjs}")
        device = "on the device" in code
        result = _run(code, str(work), _env(runtime_bin if device else bin_dir), shell=True)
        if device:
            ran_on_device = True
            assert re.search(r"photo\.jpg: \S+ \(\d\.\d+\) exit \d", result.stdout), result.stdout
    assert ran_on_device and os.path.exists(work / "bundle" / "int8" / "stage_1.tflite")
    # The last step: the tutorial's serve command (shell, not run above: it serves until stopped)
    # on a free port, and the page it names.
    serve = re.findall(r"```shell\n(python -m tf_fusionnet.runtime.serve \S+)\n```", open(TUTORIAL).read())
    assert serve, "the tutorial no longer ends with serving the page"
    server = subprocess.Popen(serve[-1].split() + ["--port", "0"], cwd=str(work), env=_env(bin_dir),
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"at (http://\S+)", line).group(1)
        import urllib.request

        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"page.js" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_editable_install_imports_the_source_folder(tmp_path):
    source = _source_copy(str(tmp_path / "src"))
    python = _venv(tmp_path / "venv", editable_source=source)
    out = _run([python, "-c", "import tf_fusionnet; print(tf_fusionnet.__file__)"], str(tmp_path), _env()).stdout
    assert out.strip().startswith(source)


@pytest.mark.parametrize("name", ["FusionNet", "MSDNet", "RANet", "load_model", "PixelClassifier", "TrainConfig",
                                  "export_bundle", "CascadeRunner", "paired_estimate"])
def test_public_names_are_reachable_from_the_package(name):
    import tf_fusionnet

    assert name in tf_fusionnet.__all__ and getattr(tf_fusionnet, name) is not None
