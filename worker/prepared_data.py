"""The training data a pack trains on: a dataset (app.datasets) limited as the spec asks and
prepared for training, kept per dataset and limits while its file is unchanged."""

from __future__ import annotations

from app.config import Settings
from app.datasets import load
from app.spec import TrainSpec
from worker.trainer import PreparedData

# (dataset, limits) -> (the loaded data it was prepared from, the prepared data): a changed file is reloaded.
_prepared: dict[tuple[str, int | None, int | None], tuple[object, PreparedData]] = {}


def prepared_data(spec: TrainSpec, settings: Settings) -> PreparedData:
    limit = spec.limit
    key = (spec.dataset, limit.train if limit else None, limit.test if limit else None)
    images = load(spec.dataset, settings.data_dir)  # cached by app.datasets until the file changes
    held = _prepared.get(key)
    if held is None or held[0] is not images:
        for old in [k for k, (source, _) in _prepared.items() if k[0] == spec.dataset and source is not images]:
            del _prepared[old]
        limited = images.limited(limit.train, limit.test) if limit else images
        _prepared[key] = held = (images, PreparedData.from_images(limited))
    return held[1]
