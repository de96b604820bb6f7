"""The importance's bootstrap: replicates resampled within each config, with a fixed seed, so every
call gives the same η² intervals. numpy is imported only when resamples are drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.services.importance_design import DesignSums

if TYPE_CHECKING:
    import numpy as np

BOOTSTRAP_SEED = 20261201
RESAMPLES = 400


def bootstrap(design: DesignSums, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """RESAMPLES columns of observations, each config's replicates drawn with replacement from its
    own (a generator with a fixed SEED: the same columns every call)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = [np.asarray(xs)[rng.integers(0, len(xs), size=(len(xs), resamples))] for _, xs in design.finals]
    return np.concatenate(blocks, axis=0)


def bootstrap_cells(design: DesignSums, resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """`bootstrap`'s resamples (the same draws) as `DesignSums.sums_of_squares_of` takes them: each
    config's mean per resample (configs x RESAMPLES) and the within-config sums of squares, one
    config's block at a time (never all the observations at once). The block holds deviations from
    the config's own mean, so sum of squares less square of sum over n loses nothing to cancellation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.empty((len(design.finals), resamples))
    within = np.zeros(resamples)
    for i, (_, xs) in enumerate(design.finals):
        n, centre = len(xs), xs.mean()
        block = np.take(xs - centre, rng.integers(0, n, size=(n, resamples)))
        sums = block.sum(axis=0)
        means[i] = centre + sums / n
        within += np.maximum(np.einsum("ij,ij->j", block, block) - sums * sums / n, 0.0)
    return means, within
