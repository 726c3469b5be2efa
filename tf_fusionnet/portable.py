"""The image-mode rule and file checks shared by the training loader and the runner; it lives in
the runtime package (:mod:`tf_fusionnet.runtime.portable`), which every bundle carries."""

from tf_fusionnet.runtime.portable import *  # noqa: F401,F403
from tf_fusionnet.runtime.portable import __all__  # noqa: F401
