"""MLflow's tracking REST protocol, the part its clients use to log runs, so that a script or
`mlflow.tensorflow.autolog()` logs into sweeplab with only MLFLOW_TRACKING_URI set.

Routes live under /api/2.0/mlflow/ (the Python client's) and /ajax-api/2.0/mlflow/ (MLflow's web
UI's), answer MLflow's JSON and its error shape, {"error_code": "RESOURCE_DOES_NOT_EXIST",
"message": ...} (app.errors answers every error under these prefixes so, validation and middleware
refusals included). What each route does with sweeplab's rows: app/services/mlflow_runs.py.
Changes take the API token (`MLFLOW_TRACKING_TOKEN` is sent as `Authorization: Bearer`) and a JSON
body; reads are open, as the rest of sweeplab's. A route the client may call that is not here
answers ENDPOINT_NOT_FOUND naming it; logged models are not stored by this server
(ENDPOINT_NOT_FOUND, saying so), small artifacts are (app/services/mlflow_artifacts.py), and
runs/log-inputs is accepted and dropped, so autolog's dataset logging does not fail. The routes
are not in sweeplab's OpenAPI document: MLflow's documents them.

One router a resource, each in its module: experiments.py, runs.py (a run's life and lookup),
run_data.py (what a run logs: metrics, params, tags, inputs), unserved.py (logged models and any
other endpoint, matched last), artifacts.py; bodies.py holds the request bodies they share. This
module mounts them all, in that order, under each prefix as `router`.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

from app.api.mlflow import artifacts, experiments, run_data, runs, unserved

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts"
TRACKING = (experiments.router, runs.router, run_data.router, unserved.router)  # in match order: catch-all last
ARTIFACTS = (artifacts.router,)


def _mounted() -> APIRouter:
    """Every route under each of its prefixes, as plain routes (so whoever walks `router.routes`,
    tests/e2e/test_tokens.py does, sees each)."""
    mounted = APIRouter(include_in_schema=False)
    for prefix, sources in [*((p, TRACKING) for p in PREFIXES), (ARTIFACTS_PREFIX, ARTIFACTS)]:
        for route in (route for source in sources for route in source.routes):
            assert isinstance(route, APIRoute)
            mounted.add_api_route(prefix + route.path, route.endpoint, methods=sorted(route.methods or ()),
                                  dependencies=list(route.dependencies), response_class=route.response_class,
                                  name=f"mlflow {prefix}{route.path}", include_in_schema=False)
    return mounted


router = _mounted()
