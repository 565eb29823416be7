"""SAM's mask decoder for a batch of point prompts on one image, without the work upstream throws away.

Upstream's ``MaskDecoder`` copies the image embedding once per prompt before its two-way
transformer and upscales every prompt's masks (transposed convolutions to 256², the bulk of the
decoder after the transformer) before anyone looks at the predicted IoU. In "segment everything"
mode most of that is redundant:

- until the first image-to-token attention, the image tokens are the same for every prompt (one
  image, no mask prompt), so the first block's key/value/query projections of them and their
  positional sums are computed once per batch and broadcast, not once per prompt (and every block
  adds the positional encoding to the image tokens once, not twice);
- the predicted IoU comes from the transformer's IoU token, before any upscaling, so only prompts
  with at least one mask that passes the predicted-IoU filter are upscaled;
- on CPU the prompts go through the transformer in small groups, whose activations stay in cache;
  residual sums read contiguous copies of the shared tokens, not upstream's transposed views;
- the upscaling's layer norm and activations work in place: seven fewer full-size tensors per prompt.

Outputs are bit-identical to upstream's for the prompts kept (tests/test_sam_equivalence.py): the
upstream layers run on the same values in the same layouts, with upstream's operations in upstream's
order, only fewer times. Where a kernel's rounding depends on the batch or layout it is given (noted
in place), the batch or layout upstream uses is kept.
"""
from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import nn

# Image-token activations per transformer pass on CPU. A prompt's image tokens are 4 MiB at the
# released size (4096 tokens × 256 floats); in groups of 4 a block's activations stay in cache
# between operations and every tensor stays under glibc's largest mmap threshold (32 MiB), so freed
# buffers are reused instead of being mapped and zeroed afresh (mapping and zeroing a fresh output
# costs several times the add that fills it); groups of 8 were slower and groups of 2 or 3 no faster
# (benchmarks/pipeline.py). Groups of 2 to 16 give upstream's bits; a group of one prompt does not (a
# one-row batch takes other kernels), so no group is smaller than MIN_GROUP, the size tested. Small
# decoders (the tiny test SAM) fit whole; on GPUs: one group.
CPU_GROUP_BYTES = 16 * 2**20
MIN_GROUP = 4


@torch.no_grad()  # inference only: parts of it work in place
def decode_points_iou_first(model: Sam, features: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                            pred_iou_thresh: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multimask decoding of single-point prompts, upscaling only prompts that may survive.

    model: the SAM; features: (1, C, h, w) image embedding; points: (B, 1, 2) in the model's input
    frame; labels: (B, 1); pred_iou_thresh: a prompt is upscaled if any of its three masks has a
    predicted IoU above it (<= 0: every prompt).
    Returns low-res mask logits (K, 3, 4h, 4w) and predicted IoUs (K, 3) of the K kept prompts, and
    their indices into the batch — what ``model.mask_decoder(..., multimask_output=True)`` returns
    for those rows.
    """
    decoder = model.mask_decoder
    sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    # One image and no mask prompt: every row of `dense` is the same "no mask" embedding.
    src = features + dense[:1]
    _, channels, height, width = src.shape
    image_tokens = src.flatten(2).permute(0, 2, 1)  # (1, hw, C): shared by every prompt until the first update
    key_pe = model.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
    per_prompt_bytes = image_tokens.numel() * image_tokens.element_size()
    group = max(MIN_GROUP, CPU_GROUP_BYTES // per_prompt_bytes) if features.device.type == "cpu" else len(tokens)
    groups = _groups(len(tokens), group)
    image = _SharedImageTokens(decoder.transformer.layers[0], image_tokens, key_pe)
    outputs = [_transformer(decoder.transformer, tokens[group], image) for group in groups]
    hs = torch.cat([h for h, _ in outputs])

    # The IoU head and hypernetwork MLPs run on every prompt at once, as upstream runs them: a linear
    # layer's rounding can depend on how many rows it is given (the upscaling's does not).
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]  # multimask: masks 1..3
    keep = ((iou_pred > pred_iou_thresh).any(dim=1) if pred_iou_thresh > 0
            else torch.ones_like(iou_pred[:, 0], dtype=torch.bool))
    mask_tokens = hs[:, 1:1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    kept_rows = torch.nonzero(keep).flatten()
    kept_keys = torch.cat([keys[keep[group]] for group, (_, keys) in zip(groups, outputs)])
    del outputs  # every prompt's image tokens: 4 MiB each at the released size
    # Upscaled all at once, as upstream does, with one trap: a convolution picks its kernel from its
    # input's layout, and a one-prompt batch of the transposed tokens looks contiguous while upstream's
    # whole batch is channels-last. So a lone kept prompt of a larger batch is upscaled beside a copy
    # of itself (the upscaling is otherwise batch-independent: tests/test_sam_equivalence.py).
    lone = len(kept_keys) == 1 and len(tokens) > 1
    rows = torch.cat([kept_keys, kept_keys]) if lone else kept_keys
    upscaled = _upscale(decoder.output_upscaling, rows.transpose(1, 2).view(len(rows), channels, height, width))
    upscaled = upscaled[:len(kept_keys)]
    n, c, h, w = upscaled.shape
    masks = (hyper_in[kept_rows] @ upscaled.view(n, c, h * w)).view(n, len(hyper_in[0]), h, w)[:, 1:]
    # float32 under autocast too, as SamV1Engine's hooks make upstream's decoder return
    return masks.float(), iou_pred[kept_rows].float(), kept_rows


def _upscale(upscaling: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Upstream's ``output_upscaling`` (transposed convolution, ``LayerNorm2d``, activation, transposed
    convolution, activation) with the layer norm's elementwise steps and GELUs in place, in the same
    order on the same layouts. Upstream's norm makes six fresh 4 MiB-per-prompt tensors (computing
    ``x - u`` twice) and each GELU one more: allocating and filling them costs more than the
    convolutions themselves (benchmarks/pipeline.py measures it). In place only where the result's
    dtype is the one upstream gets: under bf16 autocast its float32 scale and shift promote."""
    if len(upscaling) != 5 or not isinstance(upscaling[1], LayerNorm2d):
        return upscaling(x)  # not upstream's layout: run it as it is
    conv1, norm, act1, conv2, act2 = upscaling
    x = conv1(x)
    centred = x.sub_(x.mean(1, keepdim=True))
    x = centred.div_(torch.sqrt(centred.pow(2).mean(1, keepdim=True) + norm.eps))
    weight, bias = norm.weight[:, None, None], norm.bias[:, None, None]
    if _keeps_dtype(x, weight):
        x = x.mul_(weight).add_(bias)  # w * x + b, bit for bit (products and sums commute)
    else:
        x = weight * x + bias
    return _activation(act2, conv2(_activation(act1, x)))


def _activation(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for GELU (``x`` is a fresh intermediate nobody else holds)."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _groups(count: int, size: int) -> list[slice]:
    """Consecutive slices of ``size`` rows; a last one shorter than MIN_GROUP joins the one before."""
    starts = list(range(0, count, size))
    if len(starts) > 1 and count - starts[-1] < MIN_GROUP:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], count])]


def _transformer(transformer: TwoWayTransformer, tokens: torch.Tensor, image: _SharedImageTokens
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``TwoWayTransformer.forward`` for a group of prompts on one image's tokens."""
    first, *later = transformer.layers
    queries, keys = _first_block(first, queries=tokens, query_pe=tokens, image=image)
    for layer in later:
        queries, keys = _later_block(layer, queries=queries, keys=keys, query_pe=tokens, key_pe=image.key_pe)
    positioned_keys = keys + image.key_pe
    final = transformer.final_attn_token_to_image
    attn_out = _attend(final, final.q_proj(queries + tokens), final.k_proj(positioned_keys), final.v_proj(keys))
    return transformer.norm_final_attn(queries + attn_out), keys


class _SharedImageTokens:
    """The first block's work on the image tokens, which is the same for every prompt until its
    image-to-token attention (one image, no mask prompt): done once per batch, not once per prompt.

    tokens: (1, hw, C) image tokens in upstream's layout (a transposed view of the embedding); the
    projections are taken of that layout because a linear layer's rounding depends on it.
    dense: the same values, contiguous, for the block's residual sum: upstream sums per-prompt
    attention outputs with the transposed view, which is slow and makes the layer norm after it copy.
    key_pe: the positional encoding, contiguous, for every later per-prompt ``keys + key_pe`` (the
    same sums, in the same contiguous layout, without re-reading the transposed view each time).
    """

    def __init__(self, block: TwoWayAttentionBlock, tokens: torch.Tensor, key_pe: torch.Tensor) -> None:
        positioned = tokens + key_pe
        self.dense = tokens.contiguous()
        self.key_pe = key_pe.contiguous()
        self.token_to_image_k = block.cross_attn_token_to_image.k_proj(positioned)
        self.token_to_image_v = block.cross_attn_token_to_image.v_proj(tokens)
        self.image_to_token_q = block.cross_attn_image_to_token.q_proj(positioned)


def _attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Upstream's ``Attention.forward`` after its input projections (same operations, same order), so
    that projections shared by every prompt can be computed once. q, k, v: (B or 1, n, internal_dim)."""
    q, k, v = (attention._separate_heads(x, attention.num_heads) for x in (q, k, v))
    attn = q @ k.permute(0, 1, 3, 2)
    attn = torch.softmax(attn.div_(math.sqrt(q.shape[-1])), dim=-1)  # in place: the same quotient, no new buffer
    return attention.out_proj(attention._recombine_heads(attn @ v))


def _first_block(layer: TwoWayAttentionBlock, queries: torch.Tensor, query_pe: torch.Tensor,
                 image: _SharedImageTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``TwoWayAttentionBlock.forward`` for the first block, with the image tokens' shared
    projections taken from ``image``; returns (B, n, C) queries and (B, hw, C) keys."""
    queries = _update_queries(layer, queries, query_pe, image.token_to_image_k, image.token_to_image_v)
    cross = layer.cross_attn_image_to_token
    attn_out = _attend(cross, image.image_to_token_q, cross.k_proj(queries + query_pe), cross.v_proj(queries))
    return queries, layer.norm4(_residual(image.dense, attn_out))


def _later_block(layer: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor,
                 query_pe: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``TwoWayAttentionBlock.forward`` on per-prompt (B, hw, C) keys. ``keys + key_pe``
    is computed once: upstream adds the same two tensors again before its second attention."""
    positioned_keys = keys + key_pe
    token_to_image = layer.cross_attn_token_to_image
    queries = _update_queries(layer, queries, query_pe, token_to_image.k_proj(positioned_keys),
                              token_to_image.v_proj(keys))
    cross = layer.cross_attn_image_to_token
    attn_out = _attend(cross, cross.q_proj(positioned_keys), cross.k_proj(queries + query_pe), cross.v_proj(queries))
    return queries, layer.norm4(_residual(keys, attn_out))


def _residual(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """Upstream's ``x + update`` for a fresh (B, hw, C) ``update``: summed into it in place (a + b is
    b + a, bit for bit; no new 4 MiB-per-prompt buffer) unless that would change the result's dtype,
    as under bf16 autocast, where a bf16 attention output plus float32 tokens is float32."""
    return update.add_(x) if _keeps_dtype(update, x) else x + update


def _keeps_dtype(fresh: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether ``fresh op= other`` gives ``fresh op other``'s dtype, so doing it in place changes nothing."""
    return torch.promote_types(fresh.dtype, other.dtype) == fresh.dtype


def _update_queries(layer: TwoWayAttentionBlock, queries: torch.Tensor, query_pe: torch.Tensor,
                    image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
    """A block's token updates: self-attention, token-to-image attention on projected image keys and
    values, MLP (upstream's order, each followed by its residual sum and layer norm)."""
    if layer.skip_first_layer_pe:
        queries = layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))
    else:
        q = queries + query_pe
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    cross = layer.cross_attn_token_to_image
    queries = layer.norm2(queries + _attend(cross, cross.q_proj(queries + query_pe), image_k, image_v))
    return layer.norm3(queries + layer.mlp(queries))
