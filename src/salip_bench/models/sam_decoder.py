"""SAM's mask decoder for a batch of point prompts on one image, without the work upstream throws away.

Upstream's ``MaskDecoder`` copies the image embedding once per prompt before its two-way
transformer and upscales every prompt's masks (transposed convolutions to 256², the bulk of the
decoder after the transformer) before anyone looks at the predicted IoU. In "segment everything"
mode most of that is redundant:

- until the first image-to-token attention, the image tokens are the same for every prompt (one
  image, no mask prompt), so the first block's key/value/query projections of them and their
  positional sums are computed once and broadcast, not once per prompt (and every block adds the
  positional encoding to the image tokens once, not twice);
- the predicted IoU comes from the transformer's IoU token, before any upscaling, so only prompts
  with at least one mask that passes the predicted-IoU filter are upscaled;
- on CPU the prompts go through the transformer in small groups, whose activations stay in cache.

Outputs are bit-identical to upstream's for the prompts kept (tests/test_sam_equivalence.py):
each step runs the upstream modules on the same values, only fewer times.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer


# Image-token activations per transformer pass on CPU. A prompt's image tokens are 4 MiB at the
# released size (4096 tokens × 256 floats); in groups of 8 such prompts a block's activations stay
# in cache between operations (64 released-size prompts on 2 cores: transformer 6.75 s → 4.55 s).
# Groups of 4 to 16 give upstream's bits; groups of 2 do not (small matrix products take another
# kernel), hence MIN_GROUP. Small decoders (the tiny test SAM) fit whole; on GPUs: one group.
CPU_GROUP_BYTES = 32 * 2**20
MIN_GROUP = 4


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
    outputs = [_transformer(decoder.transformer, tokens[group], image_tokens, key_pe) for group in groups]
    hs = torch.cat([h for h, _ in outputs])

    # The IoU head and hypernetwork MLPs run on every prompt at once, as upstream runs them: a linear
    # layer's rounding can depend on how many rows it is given (the upscaling's does not).
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]  # multimask: masks 1..3
    keep = (iou_pred > pred_iou_thresh).any(dim=1) if pred_iou_thresh > 0 else torch.ones_like(iou_pred[:, 0], dtype=torch.bool)
    mask_tokens = hs[:, 1:1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    masks = []
    for group, (_, keys) in zip(groups, outputs):
        kept = keep[group]
        n = int(kept.sum())
        upscaled = decoder.output_upscaling(keys[kept].transpose(1, 2).view(n, channels, height, width))
        _, c, h, w = upscaled.shape
        masks.append((hyper_in[group][kept] @ upscaled.view(n, c, h * w)).view(n, len(hyper_in[0]), h, w)[:, 1:])
    kept_rows = torch.nonzero(keep).flatten()
    # float32 under autocast too, as SamEngine's hooks make upstream's decoder return
    return torch.cat(masks).float(), iou_pred[kept_rows].float(), kept_rows


def _groups(count: int, size: int) -> list[slice]:
    """Consecutive slices of ``size`` rows; a last one shorter than MIN_GROUP joins the one before."""
    starts = list(range(0, count, size))
    if len(starts) > 1 and count - starts[-1] < MIN_GROUP:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], count])]


def _transformer(transformer: TwoWayTransformer, tokens: torch.Tensor, image_tokens: torch.Tensor,
                 key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``TwoWayTransformer.forward`` for a group of prompts on one image's (1, hw, C) tokens."""
    queries, keys = tokens, image_tokens
    for layer in transformer.layers:
        queries, keys = _two_way_block(layer, queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries + attn_out), keys


def _two_way_block(layer: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor,
                   query_pe: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``TwoWayAttentionBlock.forward`` on the same values, where ``keys`` may be one
    (1, hw, C) image broadcast against (B, n, C) queries; returns (B, hw, C) keys, as upstream does.
    ``keys + key_pe`` is computed once: upstream adds the same two tensors again before its second
    attention (an elementwise sum, so reusing it changes no bit)."""
    if layer.skip_first_layer_pe:
        queries = layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))
    else:
        q = queries + query_pe
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    positioned_keys = keys + key_pe
    queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=queries + query_pe, k=positioned_keys, v=keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    attn_out = layer.cross_attn_image_to_token(q=positioned_keys, k=queries + query_pe, v=queries)
    return queries, layer.norm4(keys + attn_out)
