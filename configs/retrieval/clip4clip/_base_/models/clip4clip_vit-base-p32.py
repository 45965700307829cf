# CLIP4Clip with meanP on OpenAI's CLIP ViT-B/32, from a Hugging Face
# directory or hub id (``pretrained``). Leaf configs set ``clip_pretrained``
# once for the weights and the dataset pipelines' tokenizer (reassigning it
# in a leaf does not change what this file built from it).
clip_pretrained = 'openai/clip-vit-base-patch32'

model = dict(
    type='CLIP4Clip',
    backbone=dict(type='CLIPBackbone', pretrained=clip_pretrained),
    head=dict(type='MeanPHead'),
    loss=dict(type='SymmetricInfoNCELoss'),
    data_preprocessor=dict(type='VideoTextDataPreprocessor'))
