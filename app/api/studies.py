"""/api/studies/{study}: the sweeps of a study together and its declared questions answered. A study's
name may hold "/" (`course/week1`): the route takes the rest of the path, so app/main.py includes
the reports router (`/api/studies/{study}/report.html`) before this one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.api.deps import EngineDep
from app.services import questions as question_service
from app.spec import StoredText

router = APIRouter(prefix="/api/studies", tags=["studies"])
StudyName = Annotated[StoredText, Path(min_length=1, max_length=200, description="the study's name")]


@router.get("/{study:path}", responses={404: {"description": "no sweep has this study"}})
def read_study(study: StudyName, engine: EngineDep) -> dict[str, Any]:
    """The study's sweeps, oldest first (id, name, description, kind, runs, status counts, best
    config), its runs by status in total, and each question its specs declare answered: the
    configs it compares, their verdicts (the shape of `/api/sweeps/{id}/verdicts`), one sentence
    (`text`) and each config's final values; a sweep it names that the study lacks is listed in
    `missing` and said in the sentence."""
    return question_service.study_overview(engine, study)
