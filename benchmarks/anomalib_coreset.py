"""anomalib's k-center greedy coreset, the same selection in minutes instead of hours on a busy 2-core machine;
runs in the anomalib venv.

anomalib's ``KCenterGreedy`` computes, per pick, the distance of every projected embedding row to the new
centre (a 164k x 296 temporary for bottle: about 0.4-1 s per pick here, 16,000 picks at its default 10%).
:class:`PrunedKCenterGreedy` makes the same picks: the same projection and starting index (the same calls on
the same random state), the same distance formula and ``torch.max`` on the same minimum-distance vector, but
it recomputes a row's distance only where the new centre can be closer than the row's current one. By the
triangle inequality a row ``i`` assigned to centre ``a`` with distance ``m_i`` cannot get closer to a new
centre ``c`` when ``|c - a| >= 2 m_i``; a relative margin keeps float rounding on the safe side, so a skipped
row is one whose minimum anomalib would leave unchanged. :func:`same_picks` checks the claim against
anomalib's own loop on a subset of the embedding.
"""

from __future__ import annotations

import torch
from anomalib.models.components import KCenterGreedy

MARGIN = 1e-3  # relative: rows within it of the bound are recomputed


class PrunedKCenterGreedy(KCenterGreedy):
    def select_coreset_idxs(self) -> list[int]:
        if self.embedding.ndim == 2:  # what KCenterGreedy.select_coreset_idxs does, in its order
            self.model.fit(self.embedding)
            self.features = self.model.transform(self.embedding)
        else:
            self.features = self.embedding.reshape(self.embedding.shape[0], -1)
        self.reset_distances()
        feats = self.features
        idx = torch.randint(high=self.n_observations, size=(1,), device=feats.device).squeeze()
        selected = [idx]
        centres = torch.empty((self.coreset_size, feats.shape[1]), dtype=feats.dtype)
        assign = torch.zeros(self.n_observations, dtype=torch.long)
        for k in range(self.coreset_size - 1):
            centre = feats[idx].squeeze()
            centres[k] = centre
            if self.min_distances is None:
                self.update_distances(cluster_center=idx)
            else:
                md = self.min_distances[:, 0]
                to_earlier = torch.linalg.norm(centres[:k] - centre, ord=2, dim=1)
                rows = torch.nonzero(to_earlier[assign] < 2.0 * md * (1.0 + MARGIN)).squeeze(1)
                d = torch.linalg.norm(feats[rows] - centre, ord=2, dim=1)
                closer = d < md[rows]
                assign[rows[closer]] = k
                md[rows] = torch.minimum(md[rows], d)
            idx = self.get_new_idx()
            self.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
            selected.append(idx)
        return torch.stack(selected).cpu().tolist()


def same_picks(embedding: torch.Tensor, ratio: float, seed: int = 0) -> dict:
    """anomalib's ``KCenterGreedy`` and :class:`PrunedKCenterGreedy` on ``embedding`` from the same random
    state: the number of picks and whether every one agrees."""
    import time

    import numpy as np

    picks, seconds = [], []
    for cls in (KCenterGreedy, PrunedKCenterGreedy):
        torch.manual_seed(seed)
        np.random.seed(seed)  # the projection draws its columns from numpy's global state
        t0 = time.perf_counter()
        picks.append(cls(embedding=embedding, sampling_ratio=ratio).select_coreset_idxs())
        seconds.append(time.perf_counter() - t0)
    agree = next((i for i, (a, b) in enumerate(zip(*picks)) if a != b), len(picks[0]))
    return {"rows": int(embedding.shape[0]), "picks": len(picks[0]), "identical": picks[0] == picks[1],
            "first_difference": None if picks[0] == picks[1] else agree, "anomalib_s": seconds[0],
            "pruned_s": seconds[1]}


def use_in_patchcore() -> None:
    """Make anomalib's PatchCore ``subsample_embedding`` select with :class:`PrunedKCenterGreedy`."""
    from anomalib.models.image.patchcore import torch_model

    torch_model.KCenterGreedy = PrunedKCenterGreedy
