"""The request bodies MLflow's routes share (app/api/mlflow/), their limits (MLflow's own), and
the items they carry: tags, params, metric points.

Every body ignores the fields sweeplab has no use for and refuses text neither database stores.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from app.errors import InvalidSpec
from app.metrics import KEY_CHARS
from app.services import mlflow_runs as service
from app.services.mlflow_search import MAX_RESULTS
from app.text import first_unencodable

MAX_BATCH_METRICS = 1000  # MLflow's own limits on one runs/log-batch
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_ITEMS = 1000
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000

Printable = r"^[^\x00-\x1f\x7f]+$"
Key = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=Printable)]
MetricKey = Annotated[str, StringConstraints(min_length=1, max_length=KEY_CHARS, pattern=Printable)]
Text = Annotated[str, StringConstraints(max_length=MAX_TAG_CHARS)]
NON_FINITE = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "-infinity": -math.inf, "-inf": -math.inf}


class Lenient(BaseModel):
    """MLflow's clients send fields sweeplab has no use for (model_id, dataset_digest, ...): ignored."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="after")
    def _storable(self) -> Lenient:
        """Text both databases store: no lone surrogate (JSON "\\ud800"), no NUL (PostgreSQL's text)."""
        data = self.model_dump()
        where = first_unencodable(data)
        if where is not None:
            raise ValueError(f"{where}: text with a lone surrogate character cannot be stored")
        if _holds_nul(data):
            raise ValueError("text with a NUL character cannot be stored")
        return self


L = TypeVar("L", bound=Lenient)


def from_query(model: type[L], **values: Any) -> L:
    """A body made of a GET's query parameters: refused as a POST's body is (a 400 naming the
    parameter), not raised as a server error from inside the route."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(_holds_nul(v) for v in value)


class RunRef(Lenient):
    run_id: str | None = Field(default=None, max_length=100)
    run_uuid: str | None = Field(default=None, max_length=100)

    @property
    def rid(self) -> str:
        return self.run_id or self.run_uuid or ""


class TagIn(Lenient):
    key: Key
    value: Text = ""


class ParamIn(Lenient):
    key: Key
    value: Annotated[str, StringConstraints(max_length=MAX_PARAM_CHARS)] = ""


class MetricIn(Lenient):
    key: MetricKey
    value: StrictFloat | StrictInt | StrictStr
    timestamp: int | None = None
    step: int | None = Field(default=None, ge=0, le=service.MAX_EPOCH,
                             description="the epoch; none (or 0 once epoch 0 is taken): the key's next epoch")

    def point(self) -> service.MetricPoint:
        if not isinstance(self.value, str):
            try:
                return service.MetricPoint(self.key, float(self.value), self.step, self.timestamp)
            except OverflowError:  # a JSON integer past any float (10**400)
                raise InvalidSpec(f"metrics.{self.key}: value is past the range of a float (about ±1.8e308)",
                                  fields=[{"loc": f"metrics.{self.key}.value", "msg": "past a float's range"}],
                                  ) from None
        text = self.value.strip().lower()
        try:
            value = NON_FINITE[text] if text in NON_FINITE else float(text)
        except ValueError:
            raise InvalidSpec(f"metrics.{self.key}: value must be a number, not {self.value[:50]!r}",
                              fields=[{"loc": f"metrics.{self.key}.value", "msg": "must be a number"}]) from None
        return service.MetricPoint(self.key, value, self.step, self.timestamp)


def tags_of(items: list[TagIn]) -> dict[str, str]:
    return {t.key: t.value for t in items}


def params_of(items: list[ParamIn]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in items:
        if p.key in out and out[p.key] != p.value:
            raise InvalidSpec(f"params.{p.key}: given twice with different values in one request",
                              fields=[{"loc": f"params.{p.key}", "msg": "given twice"}])
        out[p.key] = p.value
    return out


class Search(Lenient):
    filter: str | None = Field(default=None, max_length=2000)
    max_results: int = Field(default=1000, ge=1, le=MAX_RESULTS)
    order_by: list[Annotated[str, StringConstraints(max_length=300)]] = Field(default_factory=list, max_length=20)
    page_token: str | None = Field(default=None, max_length=20)


def paged(name: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    return {name: items, **({"next_page_token": token} if token else {})}
