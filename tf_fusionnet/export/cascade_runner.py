"""Early-exit classification with a tf_fusionnet bundle: the runtime's entry point.

    python BUNDLE/cascade_runner.py IMAGES_OR_FOLDERS... [--budget MACS] [--precision int8] ...
    python BUNDLE/cascade_runner.py --help

The runtime itself is the package beside this file in a bundle (``BUNDLE/tf_fusionnet_runtime/``,
a copy of ``tf_fusionnet/runtime/``); this file loads it and makes its names this module's
(``import cascade_runner; cascade_runner.CascadeRunner(BUNDLE)``). It needs numpy and
ai-edge-litert (Pillow for image files), never TensorFlow.

In a bundle, every file of that package must match the digest the bundle's manifest lists for it
(and the manifest its ``manifest.sha256``, or the pin ``--expect_manifest_sha256 HEX`` when given
on the command line) before any of it runs. The verified bytes are the ones executed (a
``__pycache__`` is never read), under a module name of their own, so that two bundles in one
process never share code. Outside a bundle (the installed package) it is ``tf_fusionnet.runtime``.
"""

import hashlib
import importlib.abc
import importlib.util
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_FOLDER_NAME = "tf_fusionnet_runtime"


class RuntimeRefused(ImportError):
    """The bundle's runtime files do not match its manifest: none of them was run."""


def _pinned_digest():
    """The pin given on the command line, when this file runs as the script."""
    if __name__ != "__main__":
        return None
    for i, arg in enumerate(sys.argv):
        if arg == "--expect_manifest_sha256" and i + 1 < len(sys.argv):
            return sys.argv[i + 1].lower()
        if arg.startswith("--expect_manifest_sha256="):
            return arg.split("=", 1)[1].lower()
    return None


def _verified_sources(folder):
    """``{file name: bytes}`` of the runtime package in ``folder``, each checked against the manifest."""
    def refuse(what):
        raise RuntimeRefused(f"{what}; none of the bundle's runtime was run (corrupt or modified bundle)")

    def read(path):
        if os.path.islink(path) or not os.path.isfile(path):
            refuse(f"{path}: not a regular file of the bundle")
        with open(path, "rb") as f:
            return f.read()

    raw = read(os.path.join(_HERE, "manifest.json"))
    digest = hashlib.sha256(raw).hexdigest()
    pin = _pinned_digest()
    if pin is not None:
        if digest != pin:
            refuse(f"{os.path.join(_HERE, 'manifest.json')}: sha256 {digest} is not the expected {pin}")
    else:
        digest_file = os.path.join(_HERE, "manifest.sha256")
        if os.path.islink(digest_file) or not os.path.isfile(digest_file):
            refuse(f"{_HERE}: no readable manifest.sha256; the manifest cannot be checked")
        recorded = read(digest_file).split()
        if not recorded or recorded[0].decode(errors="replace") != digest:
            refuse(f"{os.path.join(_HERE, 'manifest.json')}: does not match manifest.sha256")
    try:
        listed = json.loads(raw.decode("utf-8"))["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        refuse(f"{os.path.join(_HERE, 'manifest.json')}: no readable sha256 table")
    sources = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name == "__pycache__" and os.path.isdir(path) and not os.path.islink(path):
            continue  # never read: the verified sources are compiled from their bytes
        data = read(path)
        if not isinstance(listed, dict) or hashlib.sha256(data).hexdigest() != listed.get(f"{_FOLDER_NAME}/{name}"):
            refuse(f"{path}: sha256 does not match the manifest")
        sources[name] = data
    if "__init__.py" not in sources:
        refuse(f"{folder}: no __init__.py")
    return sources


class _VerifiedRuntime(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports one package, and its modules, from bytes already checked."""

    def __init__(self, package, folder, sources):
        self.package, self.folder, self.sources = package, folder, sources

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.package:
            spec = importlib.util.spec_from_loader(fullname, self, origin=os.path.join(self.folder, "__init__.py"),
                                                   is_package=True)
            spec.submodule_search_locations = [self.folder]
            return spec
        if fullname.startswith(self.package + ".") and fullname.count(".") == self.package.count(".") + 1:
            leaf = fullname.rsplit(".", 1)[1] + ".py"
            if leaf in self.sources:
                return importlib.util.spec_from_loader(fullname, self, origin=os.path.join(self.folder, leaf))
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        origin = module.__spec__.origin
        module.__file__ = origin
        exec(compile(self.sources[os.path.basename(origin)], origin, "exec"), module.__dict__)


def _load_runtime():
    folder = os.path.join(_HERE, _FOLDER_NAME)
    if not os.path.isdir(folder):
        import tf_fusionnet.runtime as package  # the installed package: its own runtime

        return package
    sources = _verified_sources(folder)
    identity = hashlib.sha256(os.fsencode(os.path.realpath(folder)) + b"".join(sources[n] for n in sorted(sources)))
    package = "_tf_fusionnet_bundle_runtime_" + identity.hexdigest()[:16]
    if package not in sys.modules:
        sys.meta_path.insert(0, _VerifiedRuntime(package, folder, sources))
    return importlib.import_module(package)


def _flat_names(package):
    """Every name of the runtime's modules, as the one file the runner once was had them."""
    names = {}
    for leaf in ("portable", "manifest", "quantization", "confidence", "stages", "latency", "server", "runner",
                 "cli"):
        module = importlib.import_module(f"{package.__name__}.{leaf}")
        names.update({k: v for k, v in vars(module).items()
                      if not (k.startswith("__") or type(v) is type(sys) or k == "annotations")})
    return names


try:
    _runtime = _load_runtime()
except RuntimeRefused as _error:
    if __name__ != "__main__":
        raise
    print(f"error: {_error}", file=sys.stderr)
    sys.exit(1)
globals().update(_flat_names(_runtime))

if __name__ == "__main__":
    sys.exit(_runtime.cli.main(default_bundle=_HERE))
