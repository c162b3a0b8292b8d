"""Loaded from a .pth at interpreter start-up (cheap: imports nothing heavy).

Installs an import hook that serves an import-only *stub* of `torchvision` (and any
`torchvision.*` submodule), but ONLY to `import` statements executed by sglang code.
Everyone else (transformers' `importlib.util.find_spec("torchvision")`, vllm, ...) still
sees torchvision as absent, which it is (a CUDA torchvision would break this CPU torch).
Stub attributes are dummies that raise if called (sglang only touches them in
vision-model code paths).
"""

import enum
import importlib.abc
import importlib.machinery
import sys


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _Dummy:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Dummy(f"{self._name}.{item}")

    def __call__(self, *a, **k):
        raise RuntimeError(
            f"torchvision stub: {self._name} unavailable (torchvision not installed)"
        )

    def __mro_entries__(self, bases):  # `class X(T.Something)` at import time
        return (object,)

    def __repr__(self):
        return f"<torchvision stub {self._name}>"


def _mod_getattr(modname):
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "InterpolationMode":
            return InterpolationMode
        return _Dummy(f"{modname}.{name}")

    return __getattr__


def _caller_is_sglang():
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if not (fn.startswith("<frozen importlib") or fn == __file__ or "importlib" in fn):
            return f.f_globals.get("__name__", "").startswith("sglang")
        f = f.f_back
    return False


class _TorchvisionStubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            if not _caller_is_sglang():
                return None
        elif not (
            fullname.startswith("torchvision.")
            and getattr(sys.modules.get("torchvision"), "__ondistill_stub__", False)
        ):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__ondistill_stub__ = True
        module.__path__ = []
        module.__version__ = "0.0.0+ondistill-stub"
        module.__getattr__ = _mod_getattr(module.__name__)
        module.InterpolationMode = InterpolationMode


if not any(isinstance(f, _TorchvisionStubFinder) for f in sys.meta_path):
    sys.meta_path.append(_TorchvisionStubFinder())  # last: a real torchvision would win
