# A tiny randomly initialised CLIP (2 layers per tower, 32 px frames,
# 4 px patches, width 64) for the synthetic dataset; trains on a CPU.
model = dict(
    type='CLIP4Clip',
    backbone=dict(
        type='CLIPBackbone',
        config=dict(
            projection_dim=64,
            # Start at trained CLIP's temperature (logit scale 100): from
            # the default 1/0.07 a scratch model sharpens too slowly.
            logit_scale_init_value=4.6052,
            text_config=dict(
                vocab_size=256, hidden_size=64, intermediate_size=256,
                num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, pad_token_id=0,
                bos_token_id=254, eos_token_id=255),
            vision_config=dict(
                image_size=32, patch_size=4, hidden_size=64,
                intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=2))),
    head=dict(type='MeanPHead'),
    loss=dict(type='SymmetricInfoNCELoss'),
    data_preprocessor=dict(type='VideoTextDataPreprocessor'))
