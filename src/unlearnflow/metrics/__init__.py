"""Evaluation metrics for unlearned models.

``zeroshot``: CLIP zero-shot classification (identity forget accuracy FA@1/@5,
accuracy on the other identities, object/ImageNet-style accuracy).
``mia``: membership inference on per-pair image-caption cosine similarity.

Submodules are imported explicitly (``from unlearnflow.metrics import
zeroshot``) so that importing the package does not pull in torch or sklearn.
"""
