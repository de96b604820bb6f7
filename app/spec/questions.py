"""The `questions` of a study a sweep spec may carry, answered on the study page."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from app.metrics import KEY_CHARS
from app.spec.stored_text import StoredText
from app.spec.strict import _Strict
from app.text import not_blank

MAX_QUESTIONS = 20
MAX_QUESTION_SWEEPS = 20
SweepName = Annotated[StoredText, Field(min_length=1, max_length=200)]


class Question(_Strict):
    """A question of the study, answered on its study page: do the configs of the sweeps named in
    `compare` differ in their final `metric` beyond seed noise? One name compares the configs of
    that (grid) sweep with each other. Names are sweeps of the same study, resolved when the study
    page is read (the study's sweeps arrive one spec at a time)."""

    ask: StoredText = Field(min_length=1, max_length=300)
    compare: list[SweepName] = Field(min_length=1, max_length=MAX_QUESTION_SWEEPS)
    metric: StoredText | None = Field(default=None, min_length=1, max_length=KEY_CHARS,
                                      description="a metric key; default the primary metric")

    @field_validator("ask", "metric")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        return not_blank(value)

    @field_validator("compare")
    @classmethod
    def _distinct_names(cls, value: list[str]) -> list[str]:
        names = [not_blank(v) or "" for v in value]
        if len(set(names)) != len(names):
            raise ValueError("each sweep may be named once")
        return names
