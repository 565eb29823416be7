"""SAM 3's image model (``sam3.model.sam3_image.Sam3Image``) built from a size description.

``sam3.model_builder.build_sam3_image_model`` hard-codes the released sizes (ViT-L-like 1024-wide,
32-block backbone at 1008 px, 24-layer text encoder, 256-wide fusion encoder/decoder); this builder
wires the same upstream classes in the same way with every size taken from ``arch`` (a
``conf/model/sam3*.yaml`` entry), so the tiny test variant is the real architecture shrunk. With the
released sizes the modules, parameter names and shapes equal upstream's builder
(tests/test_sam3.py checks it). Only the image model is built (no video tracker,
no SAM-1-style interactive predictor).
"""
from __future__ import annotations

import torch
from torch import nn


def build_sam3_image(arch: dict, bpe_path: str) -> nn.Module:
    """The SAM 3 image model in eval mode with freshly initialised weights.

    Args:
        arch: sizes: ``image_size``, ``patch_size``, ``pretrain_image_size``, ``vit_width``, ``vit_depth``,
            ``vit_heads``, ``vit_mlp_ratio``, ``vit_window``, ``vit_global_blocks``, ``d_model``, ``ffn_dim``,
            ``heads``, ``encoder_layers``, ``decoder_layers``, ``num_queries``, ``geometry_layers``,
            ``text_width``, ``text_heads``, ``text_layers``, ``text_context``.
        bpe_path: CLIP's BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``) for SAM 3's text tokenizer.
    """
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    d, ffn, heads, size = arch["d_model"], arch["ffn_dim"], arch["heads"], arch["image_size"]

    def attention(dropout: float, batch_first: bool | None = None) -> nn.Module:
        extra = {} if batch_first is None else {"batch_first": batch_first}
        return MultiheadAttention(num_heads=heads, dropout=dropout, embed_dim=d, **extra)

    def sine() -> nn.Module:
        # Upstream precomputes some positional encodings and decoder coordinates at build time, on
        # "cuda" unconditionally (a torch.compile aid); left empty, they are computed on first use on the
        # input's device with the same values, so the model also builds and runs on CPU-only machines.
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000,
                                     precompute_resolution=None)

    vit = ViT(img_size=size, pretrain_img_size=arch["pretrain_image_size"], patch_size=arch["patch_size"],
              embed_dim=arch["vit_width"], depth=arch["vit_depth"], num_heads=arch["vit_heads"],
              mlp_ratio=arch["vit_mlp_ratio"], norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True,
              use_abs_pos=True, tile_abs_pos=True, global_att_blocks=tuple(arch["vit_global_blocks"]),
              rel_pos_blocks=(), use_rope=True, use_interp_rope=True, window_size=arch["vit_window"],
              pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
              return_interm_layers=False, bias_patch_embed=False, compile_mode=None)
    neck = Sam3DualViTDetNeck(position_encoding=sine(), d_model=d, scale_factors=[4.0, 2.0, 1.0, 0.5],
                              trunk=vit, add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=d, width=arch["text_width"],
                         heads=arch["text_heads"], layers=arch["text_layers"], context_length=arch["text_context"])
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    encoder = TransformerEncoderFusion(
        layer=TransformerEncoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
                                      pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False,
                                      pos_enc_at_cross_attn_queries=False, pre_norm=True,
                                      self_attention=attention(0.1, True), cross_attention=attention(0.1, True)),
        num_layers=arch["encoder_layers"], d_model=d, num_feature_levels=1, frozen=False, use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True)
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
                                      cross_attention=attention(0.1), n_heads=heads, use_text_cross_attention=True),
        num_layers=arch["decoder_layers"], num_queries=arch["num_queries"], return_intermediate=True, box_refine=True,
        num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False, interaction_layer=None,
        dac_use_selfatt_ln=True, resolution=None, stride=None, use_act_checkpoint=True,
        presence_token=True)
    scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=MLP(input_dim=d, hidden_dim=ffn, output_dim=d,
                                                                   num_layers=2, dropout=0.1, residual=True,
                                                                   out_norm=nn.LayerNorm(d)))
    head = UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=True, cross_attend_prompt=attention(0.0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d,
                                   compile_mode=None))
    geometry = SequenceGeometryEncoder(
        pos_enc=sine(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
        num_layers=arch["geometry_layers"], use_act_ckpt=True, add_cls=True, add_post_encode_proj=True,
        layer=TransformerEncoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
                                      pos_enc_at_attn=False, pre_norm=True, self_attention=attention(0.1, False),
                                      pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
                                      cross_attention=attention(0.1, False)))
    model = Sam3Image(backbone=backbone, transformer=TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d),
                      input_geometry_encoder=geometry, segmentation_head=head, num_feature_levels=1,
                      o2m_mask_predict=True, dot_prod_scoring=scoring, use_instance_query=False,
                      multimask_output=True, inst_interactive_predictor=None, matcher=None)
    init_text_parameters(text.encoder)
    return model.eval()


def init_text_parameters(encoder: nn.Module) -> None:
    """Upstream's text transformer allocates its positional embedding and projection with
    ``torch.empty`` (a checkpoint overwrites them); random-weight runs give them CLIP's initialisation
    (normal, std 0.01 and width^-0.5) instead of whatever memory held, which may be NaN.

    Args:
        encoder: the text encoder, changed in place.
    """
    with torch.no_grad():
        nn.init.normal_(encoder.positional_embedding, std=0.01)
        if isinstance(getattr(encoder, "text_projection", None), nn.Parameter):
            nn.init.normal_(encoder.text_projection, std=encoder.width ** -0.5)
