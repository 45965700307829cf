# CLIP4Clip with meanP on OpenAI's CLIP ViT-B/16, from a Hugging Face
# directory or hub id (``pretrained``); its tokenizer is loaded from the
# same place by the dataset pipelines.
clip_pretrained = 'openai/clip-vit-base-patch16'

model = dict(
    type='CLIP4Clip',
    backbone=dict(type='CLIPBackbone', pretrained=clip_pretrained),
    head=dict(type='MeanPHead'),
    loss=dict(type='SymmetricInfoNCELoss'),
    data_preprocessor=dict(type='VideoTextDataPreprocessor'))
