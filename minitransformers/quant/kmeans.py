"""k-means weight clustering, Han, Mao & Dally 2016, "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding" (ICLR), section 3: trained quantization and weight sharing.

The weights of a layer share 2^b values, the centroids C (the codebook). Each weight stores only the b-bit
index of its centroid, I (the codes), and reads back as W ≈ C[I]:

         W (2 × 4, fp32)                 I = codes (uint8)        C = codebook (2^b = 4, fp32)
    ┌ 2.09 -0.98  1.48  0.09 ┐         ┌ 3  0  2  1 ┐           0: -1.03    1: 0.07
    └ 0.05 -1.08  2.12  1.53 ┘   ->    └ 1  0  3  2 ┘    +      2:  1.505   3: 2.105

- The centroids minimise the within-cluster sum of squares (section 3.1, eq. 2), solved with k-means:

      argmin_C  Σ_{i=1..k} Σ_{w ∈ c_i} |w − c_i|²

- n weights of b bits each, shared among k centroids, shrink by r = n·b / (n·log2(k) + k·b) (section 3,
  eq. 1). `nbytes` counts exactly that storage: the codes packed at `bits` bits each, ceil(n·bits / 8)
  bytes, plus the fp32 codebook(s), 4 bytes per centroid (per row when per_channel=True).
- Initialisation (section 3.2): the paper compares Forgy (random points), density-based and linear
  (centroids evenly spaced over [min, max]) and finds linear best for accuracy, because the few large weights
  matter most and the other two leave them few centroids. Here the default is k-means++ (Arthur &
  Vassilvitskii 2007, "k-means++: The Advantages of Careful Seeding"), which usually reaches a lower eq. 2
  error within the iteration budget (at 8 bits on Gaussian weights, about 3× lower after 300 Lloyd steps:
  linear init leaves many centroids in the sparse tails); `init="linear"` is the paper's choice.
  k-means++ seeds on a random subset of at most 65,536 values per codebook (SEEDING_SAMPLE): its 2^b passes
  over a 1M-value layer would cost more than all of Lloyd, and a subset that large already seeds well.
  Lloyd's iterations then run on every value.
- Centroid fine-tuning (section 3.3): the codes stay fixed and the centroids train. The gradient of a
  centroid is the sum of the gradients of the weights that share it (eq. 3):

      ∂L/∂C_k = Σ_ij ∂L/∂W_ij · 1(I_ij = k)

  `centroid_gradient` computes this sum; `ClusteredLinear` holds W = C[I], so autograd gives the same.
- The paper's settings: one codebook per layer (weights are not shared across layers), 8 bits (256
  centroids) for each conv layer and 5 bits (32 centroids) for each fully connected layer of AlexNet,
  without loss of accuracy. Here bits=4 by default, and per_channel=True gives each output row its own
  codebook, which adapts to rows of different scales at the cost of rows · 2^b · 4 more bytes.
- After pruning (section 2) the paper clusters only the weights that survive. `keep_zero=True` does that:
  code 0 is reserved for the exact value 0 (codebook[0] = 0, never trained), and the nonzero weights share
  the other 2^b − 1 centroids, so pruned weights stay pruned through clustering and centroid fine-tuning.
  Without it every value is clustered, zeros too, and a centroid near 0 absorbs them.

The weights are scalars, so this is 1-D k-means: the iteration that Lloyd (1957/1982) and Max (1960) use to
design the minimum-MSE scalar quantizer. In 1-D each cluster is an interval between the midpoints of
neighbouring (sorted) centroids. So the values are sorted once, and each Lloyd step finds the interval edges
with a binary search of the k − 1 midpoints and takes each cluster's sum as a difference of float64 prefix
sums: O(n log n) once, then O(k log n) per iteration. Rows of a per-channel codebook are batched, with no
Python loop over rows. The final codes come from `torch.searchsorted` of every weight among the midpoints,
O(n log k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .format import QuantizedWeight, cast, check_stored_bits, register
from .pack import pack_int4, unpack_int4

SEEDING_SAMPLE = 65_536  # k-means++ seeds on at most this many values per codebook
INITS = ("kmeans++", "linear")


@register
@dataclass
class KMeansQuantized(QuantizedWeight):
    """A weight as b-bit codes into a codebook of 2^b fp32 centroids, one codebook or one per row (format "kmeans").

    Stored (`to_storage`): codes one per byte, or at 4 bits packed two per byte along each row; the codebook."""

    format: ClassVar[str] = "kmeans"
    codes: torch.Tensor  # I: uint8, the weight's shape, each entry in 0 .. 2^b − 1
    codebook: torch.Tensor  # C: float32, (2^b,) per layer or (rows, 2^b) per channel, ascending (after C[0] = 0 if keep_zero)
    bits: int

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def block_size(self) -> tuple[int, ...]:
        """The weights that share a codebook: the whole tensor, or one row (1, in) per channel."""
        return tuple(self.shape) if self.codebook.dim() == 1 else (1, *self.shape[1:])

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W ≈ C[I], in float32 whatever the dtype of the weight that was clustered (then cast to `dtype`, if given)."""
        return cast(lookup(self.codebook, self.codes), dtype)

    @property
    def nbytes(self) -> int:
        """Real storage: the codes packed at `bits` bits each, plus the fp32 codebook(s) (eq. 1's denominator)."""
        return math.ceil(self.codes.numel() * self.bits / 8) + self.codebook.numel() * self.codebook.element_size()

    def to_storage(self) -> tuple[dict, dict[str, torch.Tensor]]:
        check_stored_bits(self.bits)
        layout = {"shape": list(self.shape), "format": self.format, "bits": self.bits}
        return layout, {"codes": pack_int4(self.codes) if self.bits == 4 else self.codes, "codebook": self.codebook}

    @classmethod
    def from_storage(cls, layout: dict, tensors: dict[str, torch.Tensor]) -> KMeansQuantized:
        codes = tensors["codes"]
        if layout["bits"] == 4:
            codes = unpack_int4(codes, layout["shape"][-1])  # (out, in / 2) -> (out, in)
        return cls(codes, tensors["codebook"], layout["bits"])

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        return ["codes", "codebook"]


def lookup(codebook: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """W = C[I]: each weight is the centroid its code names, in the layer's codebook or in its row's."""
    if codebook.dim() == 1:
        return codebook[codes.long()]  # (2^b,) indexed by w's shape -> w's shape
    rows = codes.shape[0]
    return codebook.gather(1, codes.reshape(rows, -1).long()).view(codes.shape)  # (rows, n/rows) -> w's shape


def kmeans_quantize(
    w: torch.Tensor,
    bits: int = 4,
    per_channel: bool = False,
    init: str = "kmeans++",
    max_iter: int = 300,
    tol: float = 1e-6,
    seed: int = 0,
    keep_zero: bool = False,
) -> KMeansQuantized:
    """Cluster the values of `w` into 2^bits centroids: one codebook for the whole tensor, or one per row
    (dim 0, the output channel) when per_channel=True. Lloyd stops after `max_iter` steps or once no
    centroid moves by more than `tol` times its row's range (max − min). Runs on w's device; `seed` makes
    the k-means++ draws, which are made on the CPU, the same on every device. keep_zero=True (one codebook
    per layer only): zeros get code 0 and codebook[0] = 0; the nonzero values share 2^bits − 1 centroids."""
    check_options(w, bits, per_channel, init)
    if keep_zero and per_channel:
        raise InputError("keep_zero clusters the nonzeros of the whole layer into one codebook; use per_channel=False with it")
    if keep_zero:
        return kmeans_keep_zero(w, bits, init, max_iter, tol, seed)
    rows = w.shape[0] if per_channel else 1
    x = w.detach().float().reshape(rows, -1)  # (rows, n): one codebook per row
    codebook = kmeans_1d(x, 2**bits, init, max_iter, tol, seed)  # (rows, 2^b), ascending
    codes = assign(x, codebook).to(torch.uint8).view(w.shape)
    return KMeansQuantized(codes, codebook if per_channel else codebook[0], bits)


def kmeans_keep_zero(w: torch.Tensor, bits: int, init: str, max_iter: int, tol: float, seed: int) -> KMeansQuantized:
    """Deep Compression's clustering of a pruned weight: the nonzeros into 2^bits − 1 centroids, zeros to code 0."""
    if bits < 2:
        raise InputError(f"keep_zero reserves one of the 2^bits codes for 0, so it needs bits ≥ 2, got {bits}")
    nonzero = w.detach().float().reshape(1, -1)  # (1, n)
    nonzero = nonzero[nonzero != 0].reshape(1, -1)  # (1, nnz)
    if nonzero.numel() == 0:
        raise InputError(f"keep_zero: the weight of shape {tuple(w.shape)} is all zeros; there is nothing to cluster")
    centroids = kmeans_1d(nonzero, 2**bits - 1, init, max_iter, tol, seed)[0]  # (2^b − 1,), ascending
    codes = torch.where(w != 0, assign(w.detach().float().reshape(1, -1), centroids[None]).view(w.shape) + 1, 0)
    return KMeansQuantized(codes.to(torch.uint8), F.pad(centroids, (1, 0)), bits)  # codebook[0] = 0


def check_options(w: torch.Tensor, bits: int, per_channel: bool, init: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise InputError(
            f"bits must be an integer from 1 to 8 (codes are uint8: at most 256 centroids), got {bits!r}; pass bits in 1..8"
        )
    if init not in INITS:
        raise InputError(f"init must be one of {INITS}, got {init!r}")
    if w.numel() == 0:
        raise InputError(f"cannot cluster an empty weight of shape {tuple(w.shape)}")
    if per_channel and w.dim() < 2:
        raise InputError(f"per_channel=True needs a weight with rows (out, ...), got shape {tuple(w.shape)}; use per_channel=False")
    if not torch.isfinite(w).all():
        raise InputError("the weight holds NaN or inf, which k-means cannot place; fix or mask them before clustering")


def kmeans_1d(x: torch.Tensor, k: int, init: str, max_iter: int, tol: float, seed: int) -> torch.Tensor:
    """Lloyd's algorithm on each row of x (rows, n), batched over rows. Returns ascending centroids (rows, k)."""
    xs = x.sort(dim=1).values  # (rows, n)
    prefix = F.pad(xs.double().cumsum(dim=1), (1, 0))  # (rows, n + 1): prefix[:, i] = sum of the i smallest
    start = kmeans_plus_plus(xs, k, seed) if init == "kmeans++" else linear_init(xs, k)
    centroids = start.sort(dim=1).values  # (rows, k)
    spread = (xs[:, -1:] - xs[:, :1]).clamp_min(torch.finfo(torch.float32).tiny)  # (rows, 1)
    for _ in range(max_iter):
        new = lloyd_step(xs, prefix, centroids)
        moved = ((new - centroids).abs() / spread).max()
        centroids = new
        if moved <= tol:
            break
    return centroids


def lloyd_step(xs: torch.Tensor, prefix: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Assign every value to its nearest centroid, then move each centroid to the mean of its cluster.
    Cluster j is the slice xs[:, edges[j]:edges[j+1]], so its sum is a difference of two prefix sums."""
    n = xs.shape[1]
    inner = torch.searchsorted(xs, midpoints(centroids), right=True)  # (rows, k−1): how many values ≤ each midpoint
    edges = F.pad(F.pad(inner, (1, 0), value=0), (0, 1), value=n)  # (rows, k+1)
    counts = edges.diff(dim=1)  # (rows, k)
    sums = prefix.gather(1, edges[:, 1:]) - prefix.gather(1, edges[:, :-1])  # (rows, k), float64
    means = torch.where(counts > 0, sums / counts.clamp(min=1), centroids.double())  # an empty cluster stays put
    return means.float().sort(dim=1).values  # already ascending in exact arithmetic; sorting guards rounding


def midpoints(centroids: torch.Tensor) -> torch.Tensor:
    """The decision thresholds of ascending centroids (rows, k): cluster j holds (m[j−1], m[j]]. (rows, k−1)"""
    return (centroids[:, :-1] + centroids[:, 1:]) / 2


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The index of the nearest centroid for every value of x (rows, n), by binary search among the midpoints."""
    return torch.searchsorted(midpoints(centroids), x)  # (rows, n): how many midpoints lie below each value


def kmeans_plus_plus(xs: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means++ seeding on each row of xs (rows, n): the first centroid is a uniformly random value; each next
    one is drawn with probability D(x)² / Σ D², D(x) the distance to the nearest centroid so far. The uniform
    draws come from a CPU generator and D² is sampled by inverting its cumulative sum, so a seed picks the
    same centroids on every device. Returns (rows, k), unsorted."""
    gen = torch.Generator().manual_seed(seed)
    n = xs.shape[1]
    if n > SEEDING_SAMPLE:
        xs = xs[:, torch.randperm(n, generator=gen)[:SEEDING_SAMPLE].to(xs.device)]  # (rows, SEEDING_SAMPLE)
    xs, m = xs.double(), xs.shape[1]  # float64: the cumulative sums below stay exact enough to agree across devices
    u = torch.rand(xs.shape[0], k, generator=gen, dtype=torch.float64).to(xs.device)  # (rows, k): one draw per pick
    picks = [xs.gather(1, (u[:, :1] * m).long())]  # (rows, 1): uniform
    d2 = (xs - picks[0]).square()  # (rows, m): D², squared distance to the nearest pick so far
    cdf, dist = torch.empty_like(d2), torch.empty_like(d2)  # reused: k passes, not k fresh (rows, m) buffers
    for j in range(1, k):
        torch.cumsum(d2, dim=1, out=cdf)  # (rows, m)
        i = torch.searchsorted(cdf, u[:, j : j + 1] * cdf[:, -1:], right=True).clamp(max=m - 1)  # (rows, 1)
        picks.append(xs.gather(1, i))
        torch.minimum(d2, torch.sub(xs, picks[-1], out=dist).square_(), out=d2)
    return torch.cat(picks, dim=1).float()  # (rows, k); repeats only when a row has fewer than k distinct values


def linear_init(xs: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's linear initialisation: k centroids evenly spaced over [min, max] of each row. (rows, k)"""
    lo, hi = xs[:, :1], xs[:, -1:]  # (rows, 1) each: xs is sorted
    return lo + (hi - lo) * torch.linspace(0, 1, k, device=xs.device)


def centroid_gradient(codes: torch.Tensor, weight_grad: torch.Tensor, codebook_size: int, per_channel: bool = False):
    """Eq. 3: ∂L/∂C_k = Σ_ij ∂L/∂W_ij · 1(I_ij = k), the gradients of the weights summed per cluster.
    Returns (codebook_size,), or (rows, codebook_size) for per-channel codes."""
    rows = codes.shape[0] if per_channel else 1
    index = codes.reshape(rows, -1).long()  # (rows, n)
    grad = weight_grad.reshape(rows, -1)  # (rows, n)
    summed = grad.new_zeros(rows, codebook_size).scatter_add_(1, index, grad)  # (rows, codebook_size)
    return summed if per_channel else summed[0]


class ClusteredLinear(nn.Module):
    """An nn.Linear whose weight is codebook[codes] (section 3.3): the codes are a fixed buffer, and only the
    2^b centroids (with the bias) train. Autograd through the lookup sums the gradients of the weights that
    share a centroid, which is eq. 3. With keep_zero=True (a pruned weight) the trained codebook holds the
    2^b − 1 nonzero centroids and code 0 reads a constant 0, so pruned weights stay exactly 0."""

    def __init__(self, base: nn.Linear, bits: int = 4, per_channel: bool = False, keep_zero: bool = False, **kmeans):
        super().__init__()
        q = kmeans_quantize(base.weight, bits, per_channel, keep_zero=keep_zero, **kmeans)
        self.in_features, self.out_features, self.bits, self.keep_zero = base.in_features, base.out_features, bits, keep_zero
        self.codebook = nn.Parameter(q.codebook[1:] if keep_zero else q.codebook)  # (2^b [− 1],) or (out, 2^b)
        self.register_buffer("codes", q.codes)  # (out, in) uint8
        self.bias = base.bias

    @property
    def full_codebook(self) -> torch.Tensor:
        """What the codes index: the trained centroids, after the fixed 0 when keep_zero. (2^b,) or (out, 2^b)"""
        return F.pad(self.codebook, (1, 0)) if self.keep_zero else self.codebook

    @property
    def weight(self) -> torch.Tensor:
        return lookup(self.full_codebook, self.codes)  # (out, in)

    def quantized(self) -> KMeansQuantized:
        """The trained layer's weight as codes and codebook, e.g. for WeightOnlyLinear.from_representation."""
        return KMeansQuantized(self.codes, self.full_codebook.detach().clone(), self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        per_channel = self.codebook.dim() == 2
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, per_channel={per_channel}, keep_zero={self.keep_zero}"
