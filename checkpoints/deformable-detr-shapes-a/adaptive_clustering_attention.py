"""Adaptive clustering attention (ACT; Zheng et al., "End-to-End Object Detection with Adaptive Clustering
Transformer", BMVC 2021): DETR's encoder self-attention at O(N K) instead of O(N^2).

Per head, the queries are hashed with E2LSH, h_l(q) = floor((a_l . q + b_l) / r) for L rounds, a_l ~ N(0, I),
b_l ~ U(0, r), bucket width r. Queries whose L codes are all equal form one cluster; the number of clusters K
adapts to the image, the layer and the head. Each cluster's prototype is the mean of its queries; the prototypes
attend over all keys and every query takes its prototype's output. Like the official code, hashing sees the
scaled query q / sqrt(d_head) and uses one set of projections for every head and image.

Where this differs from the official CUDA code, on purpose:
- the projections are drawn once from `seed` (not at every call), so the same image gives the same detections;
  they are recomputed from the seed, never stored, so checkpoints without them load and stay small;
- rounds are combined exactly (equal code vectors), where the official code packs each round into 2 bits and so
  may merge queries whose codes differ (a code above 3 carries into the next round's bits);
- the bias is drawn from U(0, r) as E2LSH defines it (the official code draws U(0, 1) before dividing by r);
- padded pixels are clustered apart from real ones and masked as keys (the official code hashes them together).

ONNX: under torch.onnx.export's trace the clusters are found as the distinct rows of the codes (ONNX Unique) and the
prototype buffer is sized by a tensor, so the exported graph computes the number of clusters per image; eager mode
keeps a faster way to the same clusters (`adaptive_clusters`).
"""

import math

import torch
import torch.nn.functional as F

from .multihead_attention import MultiheadAttention

_INT64_LIMIT = 2**62  # headroom below int64's maximum for the combined cluster keys


def e2lsh_codes(x: torch.Tensor, projections: torch.Tensor, bias: torch.Tensor, bucket_width: float) -> torch.Tensor:
    """E2LSH codes floor((x . a_l + b_l) / r): x (..., N, d), projections (d, L), bias (L,) -> (..., N, L) int64."""
    return torch.floor((x @ projections + bias) / bucket_width).long()


def adaptive_clusters(codes: torch.Tensor, valid: torch.Tensor | None = None,
                      traceable: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the queries of each row that share all L codes.

    codes (..., N, L) integer; valid (..., N) bool (True on real pixels) or None. Padded queries only ever share a
    cluster with padded queries of the same row. Returns the cluster index of every query (..., N), in
    [0, num_clusters) of its row, numbered in the lexicographic order of (padding flag, code_1, ..., code_L), and
    num_clusters (...,). `traceable` picks how equal code vectors are found (None: traceable while a
    torch.jit trace records, as torch.onnx.export does); both ways give the same tensors.
    """
    *lead, n, rounds = codes.shape
    codes = codes.reshape(-1, n, rounds)
    # sizes read from shapes, never from values, so a trace keeps them as graph values
    row_ids = torch.arange(codes.shape[0], device=codes.device)
    row_of = row_ids[:, None].expand(-1, n).reshape(-1)  # (rows * N,)
    padded = torch.zeros_like(row_of) if valid is None else (~valid.reshape(-1).bool()).long()
    codes = codes.reshape(-1, rounds)
    if torch.jit.is_tracing() if traceable is None else traceable:
        cluster, cluster_row = _lexicographic_clusters(row_of, padded, codes)
    else:
        cluster, cluster_row = _folded_clusters(row_of, padded, codes)
    num_clusters = torch.zeros_like(row_ids).scatter_add(0, cluster_row, torch.ones_like(cluster_row))
    first_of_row = num_clusters.cumsum(0) - num_clusters
    local = cluster - first_of_row[row_of]
    return local.reshape(*lead, n), num_clusters.reshape(lead)


def _lexicographic_clusters(row_of: torch.Tensor, padded: torch.Tensor,
                            codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters as the distinct rows of (row, padding flag, codes) (ONNX Unique with an axis, sorted the same way
    as the folded keys): no Python-side number, so a trace records the cluster count. Slower in eager mode, where
    torch.unique(dim=0) compares the rows one column at a time.

    row_of, padded (M,); codes (M, L) -> global cluster index (M,) (row-major), each cluster's row (K,)."""
    keys = torch.cat([row_of[:, None], padded[:, None], codes], 1)
    distinct, cluster = torch.unique(keys, dim=0, return_inverse=True)
    return cluster, distinct[:, 0]


def _folded_clusters(row_of: torch.Tensor, padded: torch.Tensor,
                     codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As `_lexicographic_clusters`, by folding the rounds into one int64 key per query and a 1-D unique."""
    rounds = codes.shape[1]
    codes = codes - codes.min(0).values  # non-negative, so a code never borrows from the key above it
    key = row_of * 2 + padded
    # Fold the rounds into one int64 key per query, (key, code) -> key * span + code, which keeps the order of
    # (row, padding flag, code_1, ..., code_L); re-number the keys densely whenever the next round would overflow.
    spans = (codes.max(0).values + 1).tolist()
    start, key_max = 0, int(key.max()) + 1
    while start < rounds:  # as many rounds per step as fit in int64, each step one multiply-add
        stop, weights = start, []
        while stop < rounds and key_max * spans[stop] < _INT64_LIMIT:
            weights = [w * spans[stop] for w in weights] + [1]
            key_max *= spans[stop]
            stop += 1
        if stop == start:  # even one more round would overflow: re-number the keys densely first
            key = torch.unique(key, return_inverse=True)[1]
            key_max = int(key.max()) + 1
            continue
        multiplier = int(math.prod(spans[start:stop]))
        key = key * multiplier + (codes[:, start:stop] * torch.tensor(weights, device=codes.device)).sum(1)
        start = stop
    distinct, cluster = torch.unique(key, return_inverse=True)  # sorted: row-major over the clusters
    return cluster, torch.zeros_like(distinct).scatter_(0, cluster, row_of)


def clustered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    clusters: torch.Tensor,
    num_clusters: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of cluster prototypes, broadcast back to their queries.

    q (B, H, N, d); k, v (B, H, Nk, d); clusters (B, H, N) cluster index per query; num_clusters (B, H);
    key_padding_mask (B, Nk) True on valid keys or None. Returns (B, H, N, d) and, if requested, each query's
    attention weights (its prototype's, (B, H, N, Nk)). Differentiable in q, k and v for fixed clusters.
    """
    batch, heads, n, d = q.shape
    slots = num_clusters.max()  # kept a tensor: a trace then sizes the prototype buffer per image
    # each query's slot in the (B * H * K) prototype rows; scatter_add, not index_add, whose ONNX export drops
    # repeated indices
    row = torch.arange(batch * heads, device=q.device).unsqueeze(-1) * slots
    slot = (clusters.reshape(batch * heads, n) + row).reshape(-1)
    sums = q.new_zeros(batch * heads * slots, d).scatter_add(0, slot[:, None].expand(-1, d), q.reshape(-1, d))
    counts = q.new_zeros(batch * heads * slots).scatter_add(0, slot, q.new_ones(slot.shape))
    prototypes = (sums / counts.clamp(min=1).unsqueeze(-1)).view(batch, heads, -1, d)  # unused slots stay 0
    attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].bool()
    weights = None
    if output_attentions:
        scores = (prototypes @ k.transpose(-2, -1)) * d**-0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        prototype_weights = scores.softmax(-1)  # (B, H, K, Nk)
        out = F.dropout(prototype_weights, dropout_p, dropout_p > 0) @ v
        weights = prototype_weights.flatten(0, 2).index_select(0, slot).view(batch, heads, n, -1)
    else:
        out = F.scaled_dot_product_attention(prototypes, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return out.reshape(-1, d).index_select(0, slot).view(batch, heads, n, d), weights


class AdaptiveClusteringAttention(MultiheadAttention):
    """Drop-in for the encoder's `MultiheadAttention` (same parameters, so trained weights load unchanged) whose
    queries are clustered with E2LSH before attending.

    After each forward, `num_clusters` (B, H) holds the number of clusters per image and head (padded pixels'
    clusters included) for inspection.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, hash_rounds: int = 24,
                 bucket_width: float = 8.0, seed: int = 0):
        super().__init__(embed_dim, num_heads, dropout)
        if hash_rounds < 1:
            raise ValueError(f"act_hash_rounds must be a positive number of E2LSH rounds, got {hash_rounds}")
        if not bucket_width > 0:
            raise ValueError(f"act_bucket_width must be positive, got {bucket_width}")
        self.hash_rounds = hash_rounds
        self.bucket_width = float(bucket_width)
        self.seed = seed
        self.num_clusters: torch.Tensor | None = None
        self._hash_cache = None  # (device, rounds, width, seed) -> hash functions; drawn again when any changes

    def hash_functions(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The E2LSH projections a (d_head, L) ~ N(0, 1) and biases b (L,) ~ U(0, r), drawn from `seed` on the CPU
        (the same numbers on every device).

        Round l's (a_l, b_l) comes from row l of one uniform draw (normals by the inverse CDF), so the first L
        rounds are the same for any larger L: fewer rounds only merge clusters, and the trade-off is monotone."""
        generator = torch.Generator().manual_seed(self.seed)
        uniform = torch.rand(self.hash_rounds, self.head_dim + 1, generator=generator, dtype=torch.float64)
        uniform = uniform.clamp(1e-12, 1 - 1e-12)
        projections = (2.0**0.5 * torch.erfinv(2 * uniform[:, :-1] - 1)).T
        bias = uniform[:, -1] * self.bucket_width
        return projections.to(device, dtype), bias.to(device, dtype)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, H * d) -> (B, H, N, d), with reshape and the input's own sizes: the ONNX exporter loses the sizes
        that come out of `unflatten` and would fix N, which the clustering reads, to the traced example's."""
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    @torch.no_grad()
    def cluster(self, q: torch.Tensor, key_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, N, d) unscaled queries -> (cluster index (B, H, N), num_clusters (B, H))."""
        settings = (q.device, self.hash_rounds, self.bucket_width, self.seed)
        if self._hash_cache is None or self._hash_cache[0] != settings:
            self._hash_cache = (settings, _untraced(self.hash_functions, q.device, torch.float32))
        projections, bias = self._hash_cache[1]
        codes = e2lsh_codes(q.float() * self.head_dim**-0.5, projections, bias, self.bucket_width)
        valid = None if key_padding_mask is None else key_padding_mask[:, None, :].expand(-1, q.shape[1], -1)
        return adaptive_clusters(codes, valid)

    def forward(self, query, key, value, key_padding_mask=None, output_attentions=False):
        """As `MultiheadAttention.forward`; for self-attention over the same pixels (query and key share N),
        key_padding_mask (B, N) True on valid pixels."""
        if query.shape[1] != key.shape[1] and key_padding_mask is not None:
            raise ValueError("adaptive clustering attention masks padded queries with the key padding mask, so it "
                             f"needs queries and keys over the same pixels; got {query.shape[1]} and {key.shape[1]}")
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        clusters, num_clusters = self.cluster(q, key_padding_mask)
        self.num_clusters = num_clusters
        out, weights = clustered_attention(q, k, v, clusters, num_clusters, key_padding_mask,
                                           self.dropout if self.training else 0.0, output_attentions)
        return self.out_proj(out.transpose(1, 2).flatten(2)), weights


def _untraced(function, *args):
    """function(*args) with a running torch.jit trace (torch.onnx.export's) paused: the hash functions are constants
    of the model, and a recorded draw would carry its torch.Generator, which has no ONNX form."""
    if not torch.jit.is_tracing():
        return function(*args)
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        return function(*args)
    finally:
        torch._C._set_tracing_state(state)


def from_config(config) -> AdaptiveClusteringAttention:
    return AdaptiveClusteringAttention(
        config.d_model,
        config.encoder_attention_heads,
        config.attention_dropout,
        hash_rounds=config.act_hash_rounds,
        bucket_width=config.act_bucket_width,
        seed=config.act_seed,
    )


__all__ = ["AdaptiveClusteringAttention", "adaptive_clusters", "clustered_attention", "e2lsh_codes"]
