"""CPU-only shim for Dynamo's vLLM worker (roles/dynamo_worker; on PYTHONPATH only on cpu).

dynamo.vllm imports transformers' Qwen2-VL image processor at module load
(dynamo/vllm/multimodal_utils/models/qwen.py), which imports torchvision. With torch's CPU build
there is no working torchvision on PyPI (PyPI's needs libtorch_cuda.so: "operator torchvision::nms
does not exist"), so the worker dies with ModuleNotFoundError: torchvision. This pre-seeds that
one module with a stub; only multimodal Qwen-VL models would call it, and they fail loudly.
"""

import sys
import types

_NAME = "transformers.models.qwen2_vl.image_processing_qwen2_vl"


def _smart_resize(*args, **kwargs):
    raise NotImplementedError("kvstack CPU shim: Qwen2-VL image processing needs torchvision")


if _NAME not in sys.modules:
    _module = types.ModuleType(_NAME)
    _module.smart_resize = _smart_resize
    sys.modules[_NAME] = _module
