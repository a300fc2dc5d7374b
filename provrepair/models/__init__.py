"""Networks: loading (PyTorch, ONNX, ERAN .tf/.eran, .nnet) into a canonical ``nn.Sequential``,
BatchNorm folding, the table of supported layers, inspection and saving."""

from .batchnorm import batchnorm_as_affine, fold_batchnorm
from .canonical import check_input_shape, normalize_model, with_front
from .front import FrozenFront, front_info, front_of, has_front, refuse_regions, unfreeze
from .io import SUFFIXES, load_model, save_model
from .layers import AFFINE_TYPES, SUPPORTED_TEXT, SUPPORTED_TYPES, Normalize
from .meta import ModelMeta, get_meta, set_meta
from .patches import layer_inputs
from .summary import (
    affine_index_to_module_index,
    affine_layers,
    describe,
    is_head,
    num_outputs,
    output_shape,
    output_shapes,
    patterns_after,
    summary_text,
)

__all__ = [
    "AFFINE_TYPES",
    "FrozenFront",
    "SUFFIXES",
    "SUPPORTED_TEXT",
    "SUPPORTED_TYPES",
    "ModelMeta",
    "Normalize",
    "affine_index_to_module_index",
    "affine_layers",
    "batchnorm_as_affine",
    "check_input_shape",
    "describe",
    "fold_batchnorm",
    "front_info",
    "front_of",
    "has_front",
    "get_meta",
    "is_head",
    "layer_inputs",
    "load_model",
    "normalize_model",
    "num_outputs",
    "output_shape",
    "output_shapes",
    "patterns_after",
    "refuse_regions",
    "save_model",
    "set_meta",
    "summary_text",
    "unfreeze",
    "with_front",
]
