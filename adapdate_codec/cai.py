"""The parts of CompressAI the codec is built on: layers, entropy models, the rANS coder.

Importing any `compressai.x` first runs compressai's package `__init__`, which imports every model it has,
the point-cloud ones included (torch_geometric, torchvision, pandas, sympy): ~270 MB resident and ~1.3 s
per process, for code the codec never runs. So the package's `__init__` is deferred: `compressai` is put
in `sys.modules` without being executed, the submodules below are imported as usual, and the first access
to any other attribute of `compressai` (`compressai.models`, `compressai.zoo`, `available_entropy_coders`)
runs the real `__init__`, so other code that imports compressai sees the whole package. When compressai is
already imported (training, a user's program), nothing changes.

While it is deferred, the package answers the two questions its entropy models ask of it on creation,
`available_entropy_coders()` and `get_entropy_coder()`, as its `__init__` would by default: "ans" (rANS, the
coder the codec uses; the entropy models are built with `entropy_coder="ans"` anyway).
"""

from __future__ import annotations

import importlib.util
import sys
import types

ENTROPY_CODER = "ans"


class _DeferredPackage(types.ModuleType):
    """compressai before its `__init__` has run; running it on the first attribute that is not there."""

    def __getattr__(self, name: str):
        if self.__dict__.get("_adapdate_deferred") is not True:
            raise AttributeError(name)
        self._adapdate_deferred = False
        self.__class__ = types.ModuleType  # from here on a plain module: missing names fail as usual
        self.__spec__.loader.exec_module(self)  # imports the rest; submodules already loaded are reused
        return getattr(self, name)


def _defer_package_init(name: str = "compressai") -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed (the import below then fails as usual) or not a package
    module = importlib.util.module_from_spec(spec)
    module._adapdate_deferred = True
    module.available_entropy_coders = lambda: [ENTROPY_CODER]  # replaced by the real ones if __init__ runs
    module.get_entropy_coder = lambda: ENTROPY_CODER
    module.__class__ = _DeferredPackage
    sys.modules[name] = module


_defer_package_init()

from compressai._CXX import pmf_to_quantized_cdf  # noqa: E402
from compressai.ans import BufferedRansEncoder, RansDecoder, RansEncoder  # noqa: E402
from compressai.entropy_models import EntropyBottleneck, GaussianConditional  # noqa: E402
from compressai.layers import GDN, MaskedConv2d, conv1x1, conv3x3, subpel_conv3x3  # noqa: E402

__all__ = [
    "ENTROPY_CODER",
    "GDN",
    "BufferedRansEncoder",
    "EntropyBottleneck",
    "GaussianConditional",
    "MaskedConv2d",
    "RansDecoder",
    "RansEncoder",
    "conv1x1",
    "conv3x3",
    "pmf_to_quantized_cdf",
    "subpel_conv3x3",
]
