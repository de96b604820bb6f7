"""The metric catalogue: every per-epoch key sweeplab knows, with its title, the axis it shares,
whether it is drawn as a curve, how it is formatted and which direction is better.

One place for each word (STYLE.md, "One vocabulary"): trainers report these keys, services
aggregate them, the stream sends them and the pages draw them from `catalogue_json()`, which the
server hands to every page. A key a run reports that is not listed here (an external run's own
metric) still gets a generic entry from `describe()`, so it can be drawn too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Format = Literal["percent", "number", "seconds"]


@dataclass(frozen=True)
class MetricInfo:
    key: str
    title: str
    axis: str  # metrics with the same axis share a y axis (and a chart group)
    curve: bool  # drawn as a curve over epochs on the sweep and run pages
    format: Format
    higher_is_better: bool | None  # None: neither (a time, a learning rate)
    short: str  # a table column's title


LOSS = "loss"
ACCURACY = "accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
EPOCH_SECONDS = "epoch_seconds"

KEY_CHARS = 250  # the longest metric key stored: MLflow's limit on a key (MAX_ENTITY_KEY_LENGTH)

# The order here is the order of charts and legends on every page.
CATALOGUE: tuple[MetricInfo, ...] = (
    MetricInfo(LOSS, "training loss", "loss", True, "number", False, "train loss"),
    MetricInfo(VAL_LOSS, "validation loss", "loss", True, "number", False, "val loss"),
    MetricInfo(ACCURACY, "training accuracy", "accuracy", True, "percent", True, "train acc"),
    MetricInfo(VAL_ACCURACY, "validation accuracy", "accuracy", True, "percent", True, "val acc"),
    MetricInfo(EPOCH_SECONDS, "seconds per epoch", "seconds", False, "seconds", None, "s/epoch"),
)
BY_KEY: dict[str, MetricInfo] = {m.key: m for m in CATALOGUE}

# What a trainer reports each epoch (the worker adds epoch_seconds itself).
TRAINER_KEYS: tuple[str, ...] = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
CURVE_KEYS: tuple[str, ...] = tuple(m.key for m in CATALOGUE if m.curve)
# The metric a sweep is judged by unless the user picks another, and the finals the table shows.
PRIMARY_KEY = VAL_ACCURACY
FINAL_KEYS: tuple[str, ...] = (ACCURACY, VAL_ACCURACY)


KERAS_EPOCH_PREFIX = "epoch_"  # Keras' TensorBoard callback names its per-epoch scalars epoch_loss, ...
VALIDATION_PREFIX = "val_"


def keras_key(name: str, validation: bool = False) -> str:
    """sweeplab's key for a per-epoch metric named NAME by Keras or a tracker that copies it (MLflow's
    autolog, TensorBoard's event files): `epoch_loss` is `loss`, `epoch_val_accuracy` is
    `val_accuracy`, and in a validation log (the `validation/` folder of Keras' TensorBoard callback)
    `epoch_accuracy` is `val_accuracy`. A catalogue key (`epoch_seconds`) and any other name stay as
    they are (a validation log's get the `val_` prefix)."""
    key = name
    if name not in BY_KEY and name.startswith(KERAS_EPOCH_PREFIX) and len(name) > len(KERAS_EPOCH_PREFIX):
        key = name[len(KERAS_EPOCH_PREFIX):]
    if validation and not key.startswith(VALIDATION_PREFIX):
        key = VALIDATION_PREFIX + key
    return key


def describe(key: str) -> MetricInfo:
    """The catalogue's entry for KEY, or a generic one for a key only some run reports."""
    known = BY_KEY.get(key)
    if known is not None:
        return known
    lowered = key.lower()
    better: bool | None = None
    if "loss" in lowered or "error" in lowered:
        better = False
    elif "acc" in lowered or "auc" in lowered or "precision" in lowered or "recall" in lowered:
        better = True
    axis = "loss" if better is False else "accuracy" if better else key
    return MetricInfo(key, key.replace("_", " "), axis, True, "number", better, key)


def ordered(keys: Iterable[str]) -> list[str]:
    """KEYS without repeats in the catalogue's order, keys it does not list after them by name."""
    position = {m.key: i for i, m in enumerate(CATALOGUE)}
    return sorted(set(keys), key=lambda k: (position.get(k, len(position)), k))


def curve_keys(keys: Iterable[str]) -> list[str]:
    """The keys of KEYS drawn as curves, in page order."""
    return [k for k in ordered(keys) if describe(k).curve]


def catalogue_json(extra: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The catalogue as the pages read it, with a generic entry for each key of EXTRA it lacks
    (the keys some run of the page reports), so a page never guesses a key's title or axis."""
    known = [asdict(m) for m in CATALOGUE]
    return known + [asdict(describe(k)) for k in ordered(extra) if k not in BY_KEY]
