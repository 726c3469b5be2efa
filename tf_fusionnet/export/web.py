"""The web runtime of a bundle (``export/to_tflite.py --web``): the page, its JavaScript and the
LiteRT.js files it loads, copied into ``BUNDLE/web/`` beside the web stages.

Opt-in, not in every bundle: LiteRT.js's three WebAssembly builds (single-threaded with relaxed
SIMD, threaded, and the compatible one for browsers without relaxed SIMD) weigh about 28 MB, ten
times a CIFAR bundle's stages; a Raspberry Pi running the Python runner should not carry them.
They are copied from the npm package pinned in ``tf_fusionnet/runtime/web/package-lock.json``
(``npm ci --prefix tf_fusionnet/runtime/web``), so the page fetches nothing from a CDN.
"""

from __future__ import annotations

import json
import os
import shutil

WEB_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime", "web")
WEB_FOLDER = "web"
PAGE_FILES = ("index.html", "page.js", "cascade.js")
LITERTJS_VERSION = "2.5.3"
# bundle name under web/ -> path inside node_modules
LITERTJS_FILES = {
    "litert/core/index.js": "@litertjs/core/dist/index.js",
    "litert/wasm-utils/index.js": "@litertjs/wasm-utils/dist/index.js",
    **{f"litert/wasm/litert_wasm_{flavour}internal.{ext}": f"@litertjs/core/wasm/litert_wasm_{flavour}internal.{ext}"
       for flavour in ("", "threaded_", "compat_") for ext in ("js", "wasm")},
}
ENV_LITERTJS = "TF_FUSIONNET_LITERTJS"
# The web stages' precisions: int8 stages with float32 inputs and outputs (LiteRT.js's JavaScript
# API refuses int8 tensors: "Element type INT8 is not supported"), float16 left out (not measured).
WEB_PRECISIONS = ("float32", "int8")


def find_litertjs(node_modules: str | None = None) -> str:
    """The ``node_modules`` folder holding LiteRT.js |version|: ``node_modules``, else
    ``$TF_FUSIONNET_LITERTJS``, else the checkout's ``tf_fusionnet/runtime/web/node_modules``.
    Raises ValueError (one line for the user) when none holds the pinned version."""
    where = node_modules or os.environ.get(ENV_LITERTJS) or os.path.join(WEB_SOURCE, "node_modules")
    install = f"npm ci --prefix {os.path.relpath(WEB_SOURCE)}"
    try:
        with open(os.path.join(where, "@litertjs", "core", "package.json")) as f:
            version = json.load(f).get("version")
    except (OSError, ValueError):
        raise ValueError(f"--web needs LiteRT.js {LITERTJS_VERSION} and {where} has none: run `{install}` "
                         f"(or name a node_modules folder with --litertjs)") from None
    if version != LITERTJS_VERSION:
        raise ValueError(f"{where} has LiteRT.js {version}, the web runtime is tested with {LITERTJS_VERSION}: "
                         f"run `{install}`")
    missing = [src for src in LITERTJS_FILES.values() if not os.path.isfile(os.path.join(where, src))]
    if missing:
        raise ValueError(f"{where}: LiteRT.js is incomplete ({missing[0]} missing): run `{install}`")
    return where


def write_web_runtime(bundle: str, node_modules: str) -> list[str]:
    """Copies the page and LiteRT.js into ``bundle/web/``; returns the bundle names written."""
    written = []
    for name in PAGE_FILES:
        shutil.copy(os.path.join(WEB_SOURCE, name), _target(bundle, name))
        written.append(f"{WEB_FOLDER}/{name}")
    for name, source in LITERTJS_FILES.items():
        shutil.copy(os.path.join(node_modules, source), _target(bundle, name))
        written.append(f"{WEB_FOLDER}/{name}")
    return written


def _target(bundle: str, name: str) -> str:
    path = os.path.join(bundle, WEB_FOLDER, *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path
