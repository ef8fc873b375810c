"""Explanation images: an attribute's activation map over the picture, with its ROI drawn."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import normalise, pil_to_uint8
from .localization import boxes_from_maps


@torch.no_grad()
def activation_overlay(model, image: Image.Image, attribute: int, size: int = 256, alpha: float = 0.45) -> bytes:
    """PNG bytes: the image, the activation map of ``attribute`` its ROI comes from (its predicted value's,
    or its attribute-level map), and the ROI box."""
    from matplotlib import colormaps

    x = pil_to_uint8(image, model.cfg.image_size)[None]
    feats = model.forward_features(normalise(x, model.cfg.mean, model.cfg.std))
    conv7, logits = model.forward_maps(feats)
    values = model.predict_values(logits.float())
    m = model.roi_maps(conv7, values)[0, attribute].float()
    box = boxes_from_maps(m[None], model.cfg.threshold_of(attribute), model.cfg.roi_upsample, model.cfg.norm_of(attribute))[0]
    h, w = m.shape
    m = (m - m.min()) / (m.max() - m.min() + 1e-9)
    heat = Image.fromarray((colormaps["jet"](m.numpy())[..., :3] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    base = image.convert("RGB").resize((size, size), Image.BILINEAR)
    out = Image.blend(base, heat, alpha)
    sx, sy = size / w, size / h
    ImageDraw.Draw(out).rectangle((box[0] * sx, box[1] * sy, box[2] * sx - 1, box[3] * sy - 1), outline=(255, 255, 255), width=2)
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()
