"""Constructed tables shared by the tests (imported as ``helpers``)."""

import pandas as pd


def effects_frame(spec, model="target", split="train", bias=0.3):
    """spec: {(sample, step): {(kind, mask): effect}} -> effects rows (plus a bias row each).

    ``bias`` may be a number or a {sample: number} mapping.
    """
    rows = []
    for (sample, step), effects in spec.items():
        b = bias[sample] if isinstance(bias, dict) else bias
        rows.append(dict(model=model, split=split, sample=sample, step=step, kind="AND", bitmask=0, order=0, effect=b))
        for (kind, mask), effect in effects.items():
            rows.append(dict(model=model, split=split, sample=sample, step=step, kind=kind, bitmask=mask,
                             order=int(mask).bit_count(), effect=effect))
    return pd.DataFrame(rows)
