"""Quantization and pruning: each quantizer is quantize -> compact representation -> dequantize.

    format.py      the one interface of a quantized weight (QuantizedWeight) and the registry FORMATS, by name
    uniform.py     affine / symmetric integers, per-tensor / channel / group, observers, fake quantization
    nonuniform.py  codebooks: NF4 and FP4 as bitsandbytes stores them (with double quantization), log2
    kmeans.py      k-means weight clustering and centroid fine-tuning (Deep Compression)
    ggml.py        GGUF's Q4_0 / Q4_1 / Q8_0 blocks, kept as llama.cpp stores them
    prune.py       magnitude, N:M and structured pruning; masks kept while training; the cubic schedule
    pack.py        two 4-bit codes per byte
    layer.py       what the quantized and sparse Linear layers share: buffers + layout, byte counts
    qlinear.py     quantized nn.Linear replacements (W8A8, weight-only over any registered format), quantize_model
    sparse.py      pruned nn.Linear replacements: dense, CSR or 2:4, whichever is smallest
    serialize.py   save and reload a quantized classifier, packed
    deep_compression.py  Deep Compression's storage: clustered pruned layers, relative indices, Huffman coding
"""

from ..kernels.int8_mm import int8_matmul
from .format import FORMATS, QuantizedWeight, register
from .ggml import GGMLQuantized
from .kmeans import ClusteredLinear, KMeansQuantized, centroid_gradient, kmeans_quantize
from .nonuniform import CodebookQuantized, quantize_fp4, quantize_log2, quantize_nf4
from .pack import pack_int4, unpack_int4
from .qlinear import METHODS, SparseLinear, W8A8Linear, WeightOnlyLinear, quantize_model, weight_only_matmul
from .prune import (
    GradualPruner, apply_masks, cubic_sparsity, magnitude_masks, nm_mask, nm_masks, prune_ffn_neurons, prune_heads,
    prune_structured, remove_masks, sparsity_report, sparsity_table,
)  # fmt: skip
from .serialize import load_quantized, save_quantized
from .uniform import (
    MinMaxObserver, MSEObserver, PercentileObserver, UniformQuantized, choose_qparams, dequantize, fake_quantize, quantize,
    quantize_uniform,
)  # fmt: skip

__all__ = [
    "QuantizedWeight", "FORMATS", "register",
    "quantize_uniform", "choose_qparams", "quantize", "dequantize", "fake_quantize", "UniformQuantized",
    "MinMaxObserver", "PercentileObserver", "MSEObserver",
    "quantize_nf4", "quantize_fp4", "quantize_log2", "CodebookQuantized", "GGMLQuantized",
    "kmeans_quantize", "KMeansQuantized", "centroid_gradient", "ClusteredLinear",
    "magnitude_masks", "nm_mask", "nm_masks", "apply_masks", "remove_masks", "cubic_sparsity", "GradualPruner",
    "prune_heads", "prune_ffn_neurons", "prune_structured", "sparsity_report", "sparsity_table",
    "pack_int4", "unpack_int4",
    "quantize_model", "METHODS", "W8A8Linear", "WeightOnlyLinear", "SparseLinear", "int8_matmul", "weight_only_matmul",
    "save_quantized", "load_quantized",
]  # fmt: skip
