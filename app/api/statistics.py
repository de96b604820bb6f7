"""Statistics that decide: verdicts of configs against the best one (Welch, Holm), the power block,
and the importance of a sweep's settings (ANOVA). Thin: validate, then app.services.verdicts and
app.services.importance."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import EngineDep
from app.metrics import KEY_CHARS, PRIMARY_KEY
from app.services import decisions, importance, verdicts
from app.services.charts import parse_ids
from app.spec import StoredText

router = APIRouter(prefix="/api", tags=["statistics"])

MetricQuery = Annotated[StoredText, Query(min_length=1, max_length=KEY_CHARS,
                                          description=f"the metric key, e.g. {PRIMARY_KEY} or val_loss")]
DetectQuery = Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                            description="a difference (in the metric's units, e.g. 0.005 for half "
                                                        "a point of accuracy) to say how many replicates detect")]
BestByQuery = Annotated[StoredText | None, Query(min_length=1, max_length=KEY_CHARS,
                                                 description=f"the metric the best config is ranked by "
                                                             f"(default {PRIMARY_KEY}, when the configs report it)")]


@router.get("/sweeps/{sweep_id}/verdicts")
def read_sweep_verdicts(sweep_id: int, engine: EngineDep, metric: MetricQuery = PRIMARY_KEY,
                        detect: DetectQuery = None, best_by: BestByQuery = None) -> dict[str, Any]:
    """The best config by mean final value and every other config against it: difference with its
    95% Welch CI, Welch's p, Holm's adjusted p, a verdict and a sentence; the power block; the method."""
    return verdicts.sweep_verdicts(engine, sweep_id, metric, detect, best_by)


@router.get("/sweeps/{sweep_id}/decisions")
def read_sweep_decisions(sweep_id: int, engine: EngineDep) -> dict[str, Any]:
    """What an adaptive sweep decided about each config and why: the race's state (racing, settled,
    best, unsettled) and the prunes, each with its sentence; the race's and the prune's methods
    (nulls and no configs for a sweep with neither)."""
    return decisions.sweep_decisions(engine, sweep_id)


@router.get("/configs/verdicts")
def read_config_verdicts(engine: EngineDep, ids: str = Query(..., max_length=10_000, examples=["3,7"]),
                         metric: MetricQuery = PRIMARY_KEY, detect: DetectQuery = None,
                         best_by: BestByQuery = None) -> dict[str, Any]:
    """The verdicts of any configs, possibly from different sweeps (labels name the sweep)."""
    return verdicts.config_verdicts(engine, parse_ids(ids, most=1_000), metric, detect, best_by)


@router.get("/sweeps/{sweep_id}/importance")
def read_sweep_importance(sweep_id: int, engine: EngineDep, metric: MetricQuery = PRIMARY_KEY) -> dict[str, Any]:
    """An ANOVA of the final metric on the settings that vary across the sweep's configs: per factor
    and two-way interaction eta squared with a seeded bootstrap 95% CI, F and p; the residual share."""
    return importance.sweep_importance(engine, sweep_id, metric)
