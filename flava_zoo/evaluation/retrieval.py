"""Image-text retrieval recall (R@K in both directions), with several captions per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def retrieval_recall(
    similarity: Tensor, ks: Sequence[int] = (1, 5, 10), text_to_image: Tensor | None = None
) -> dict[str, float]:
    """Recall@K of image-to-text and text-to-image retrieval, in percent.

    ``similarity`` is ``(num_images, num_texts)``. ``text_to_image[j]`` is the index of the
    image caption ``j`` describes; by default caption ``j`` belongs to image ``j`` (a square
    matrix). An image-to-text query is a hit at K when any of its captions ranks in the top
    K (the COCO / Flickr30K protocol with five captions per image); a text-to-image query is
    a hit when its image does. Returns ``image_to_text_R@K`` and ``text_to_image_R@K``.
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (images, texts), got shape {tuple(similarity.shape)}")
    n_img, n_txt = similarity.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"cannot evaluate retrieval on {n_img} images and {n_txt} texts")
    if text_to_image is None:
        if n_img != n_txt:
            raise ValueError(
                f"similarity is {n_img}x{n_txt}: pass text_to_image when captions per image differ from 1"
            )
        text_to_image = torch.arange(n_txt)
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long).cpu()
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image must have one entry per text ({n_txt}), got {tuple(text_to_image.shape)}")
    if int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n_img:
        raise ValueError(f"text_to_image holds image indices outside [0, {n_img})")
    sim = similarity.float().cpu()
    out: dict[str, float] = {}
    max_k = max(ks)
    # image -> text: rank of the best-ranked own caption
    top_t = sim.topk(min(max_k, n_txt), dim=1).indices  # (n_img, K)
    own = text_to_image[top_t] == torch.arange(n_img)[:, None]
    # text -> image
    top_i = sim.T.topk(min(max_k, n_img), dim=1).indices  # (n_txt, K)
    hit_i = top_i == text_to_image[:, None]
    for k in ks:
        out[f"image_to_text_R@{k}"] = 100.0 * own[:, :k].any(dim=1).float().mean().item()
        out[f"text_to_image_R@{k}"] = 100.0 * hit_i[:, :k].any(dim=1).float().mean().item()
    return out
