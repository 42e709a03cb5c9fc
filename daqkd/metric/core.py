"""The DA metric M = DEV − CMI (Kur & Zhao, arXiv 2509.03850; docs/METHOD.md §1), as plain torch.

Shapes: ``probs`` [N, C] are teacher softmax outputs; ``targets`` are integer labels [N] or soft
labels [N, C] (rows summing to 1, as CutMix/MixUp produce); prototypes ``Q`` are [C, C] with row y
the (weighted) mean prediction for class y.
"""
from __future__ import annotations

import torch

EPS = 1e-12


def soft_targets(targets: torch.Tensor, num_classes: int, dtype=torch.float64) -> torch.Tensor:
    """Integer labels [N] → one-hot [N, C]; soft labels [N, C] pass through. Always ``dtype``."""
    if targets.ndim == 1:
        if targets.is_floating_point():
            raise ValueError("1-D targets must be integer class labels")
        return torch.nn.functional.one_hot(targets.long(), num_classes).to(dtype)
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise ValueError(f"soft targets must be [N, {num_classes}], got {tuple(targets.shape)}")
    return targets.to(dtype)


def prototype_sums(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator Σ_i t_i[y]·p_i [C, C] and denominator Σ_i t_i[y] [C] of the prototypes, in float64.

    Accumulating these over batches and dividing at the end gives exactly ``class_prototypes``.
    """
    t = soft_targets(targets, num_classes)
    return t.T @ probs.to(torch.float64), t.sum(0)


def prototypes_from_sums(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    empty = torch.nonzero(den <= 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"classes {empty} have no samples, so their prototypes are undefined; score more samples "
            "(metric.num_samples) or use a class-stratified subsample"
        )
    return num / den[:, None]


def class_prototypes(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Q_y = Σ_i t_i[y]·p_i / Σ_i t_i[y] (hard labels: the mean of p_i over class y). Rows sum to 1."""
    num, den = prototype_sums(probs, targets, num_classes)
    return prototypes_from_sums(num, den).to(probs.dtype)


def _kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p_i ‖ q_i) per row, with 0·log 0 = 0 and arguments clamped at EPS."""
    return (p * (p.clamp_min(EPS).log() - q.clamp_min(EPS).log())).sum(-1)


def cmi_sum(probs: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Σ_i KL(p_i ‖ c_i) with c_i = Σ_y t_i[y]·Q_y (= Q[y_i] for hard labels), in float64."""
    q = prototypes.to(torch.float64)
    t = soft_targets(targets, q.shape[0])
    return _kl_rows(probs.to(torch.float64), t @ q).sum()


def contextual_mutual_information(probs: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """CMI_emp = (1/N) Σ_i KL(p_i ‖ c_i) (docs/METHOD.md §1, pass 2)."""
    return (cmi_sum(probs, targets, prototypes) / len(probs)).to(probs.dtype)


def label_deviation(prototypes: torch.Tensor) -> torch.Tensor:
    """DEV = (1/C) Σ_y KL(e_y ‖ Q_y) = −(1/C) Σ_y log Q_y[y]."""
    return -prototypes.diagonal().clamp_min(EPS).log().mean()


def metric_score(probs_pass1, probs_pass2, targets1, targets2, num_classes: int) -> dict[str, float]:
    """M = DEV − CMI from the full tensors of both passes (reference for the streaming scorer),
    computed in float64 like the scorer."""
    probs_pass1, probs_pass2 = probs_pass1.double(), probs_pass2.double()
    q = class_prototypes(probs_pass1, targets1, num_classes)
    cmi = float(contextual_mutual_information(probs_pass2, targets2, q))
    dev = float(label_deviation(q))
    return {"cmi": cmi, "dev": dev, "m": dev - cmi}


def variance_score(probs: torch.Tensor, group_size: int = 5) -> torch.Tensor:
    """The "variance" baseline selector (Wang et al., NeurIPS 2022; docs/METHOD.md §1).

    Consecutive groups of ``group_size`` softmax outputs are averaged; the std across groups is
    taken per class and averaged over classes. A trailing partial group is dropped.
    """
    return variance_groups(probs, group_size).std(0).mean()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy −Σ_c p_c·log p_c of every row [N] (the "entropy" selector averages it)."""
    p = probs.to(torch.float64)
    return -(p * p.clamp_min(EPS).log()).sum(-1)


def variance_groups(probs: torch.Tensor, group_size: int = 5) -> torch.Tensor:
    """The "variance" selector's group vectors: consecutive groups of ``group_size`` rows averaged
    [G, C]; a trailing partial group is dropped."""
    n = (len(probs) // group_size) * group_size
    if n < 2 * group_size:
        raise ValueError(f"variance score needs at least {2 * group_size} samples, got {len(probs)}")
    return probs[:n].reshape(-1, group_size, probs.shape[1]).mean(1)


def hard_label_indices(targets: torch.Tensor) -> torch.Tensor | None:
    """The class of every row if ``targets`` [N, C] is one-hot, else None (soft labels)."""
    if not bool(((targets == 0) | (targets == 1)).all()) or not bool((targets.sum(1) == 1).all()):
        return None
    return targets.argmax(1)


def bootstrap_metric(p1, t1, p2, t2, weights: torch.Tensor, chunk: int = 16) -> dict[str, torch.Tensor]:
    """DEV, CMI and M for each row of bootstrap ``weights`` [B, N] (how often each image is drawn).

    ``p1``/``p2`` [N, C] are the two passes' probabilities of the same N images and ``t1``/``t2``
    [N, C] their (soft) targets; a weight vector of ones gives exactly ``metric_score``. Replicates
    in which a class draws no image have no prototype for it and come back as NaN.
    """
    p1, p2, t1, t2 = (x.to(torch.float64) for x in (p1, p2, t1, t2))
    log_p2 = p2.clamp_min(EPS).log()
    self_term = (p2 * log_p2).sum(-1)  # Σ_c p log p per image, the part of KL(p ‖ c) that c does not touch
    y1, y2 = hard_label_indices(t1), hard_label_indices(t2)
    if y1 is not None and y2 is not None:
        return _bootstrap_hard(p1, y1, p2, y2, self_term, weights.to(torch.float64))
    devs, cmis = [], []
    for w in weights.to(torch.float64).split(chunk):
        num = torch.einsum("bn,ny,nc->byc", w, t1, p1)
        den = torch.einsum("bn,ny->by", w, t1)
        q = num / den.unsqueeze(-1)  # empty class: 0/0 = NaN, carried to its replicate
        devs.append(-q.diagonal(dim1=1, dim2=2).clamp_min(EPS).log().mean(-1))
        c = torch.einsum("ny,byc->bnc", t2, q)
        kl = self_term - (p2 * c.clamp_min(EPS).log()).sum(-1)  # [B, N]
        cmis.append((w * kl).sum(-1) / w.sum(-1))
    dev, cmi = torch.cat(devs), torch.cat(cmis)
    return {"dev": dev, "cmi": cmi, "m": dev - cmi}


def _bootstrap_hard(p1, y1, p2, y2, self_term, w) -> dict[str, torch.Tensor]:
    """``bootstrap_metric`` for hard labels, class by class: a prototype is a weighted sum over its
    own images only, and an image's KL needs only its own class's prototype. This costs B·N·C, where
    the soft-label path costs B·N·C·C (200 classes: 4 s per network and candidate at 2,000 images)."""
    b, c = len(w), p1.shape[1]
    q = torch.empty(b, c, c, dtype=torch.float64)  # a prototype per class: Q_b[y]
    cross = torch.empty(b, len(p2), dtype=torch.float64)  # Σ_c p2[n, c]·log Q_b[y2_n, c]
    for y in range(c):
        own = torch.nonzero(y1 == y).flatten()
        wy = w[:, own]
        q[:, y] = (wy @ p1[own]) / wy.sum(1, keepdim=True)  # no image of y drawn: 0/0 = NaN, as above
        seen = torch.nonzero(y2 == y).flatten()
        cross[:, seen] = q[:, y].clamp_min(EPS).log() @ p2[seen].T
    dev = -q.diagonal(dim1=1, dim2=2).clamp_min(EPS).log().mean(-1)
    cmi = (w * (self_term - cross)).sum(-1) / w.sum(-1)
    return {"dev": dev, "cmi": cmi, "m": dev - cmi}
