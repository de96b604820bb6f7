"""The tracking routes this server does not serve, matched after every other: logged models (not
stored, ENDPOINT_NOT_FOUND saying so) and any other endpoint (ENDPOINT_NOT_FOUND naming it)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.deps import require_token
from app.errors import EndpointNotFound

NOT_STORED = ("models are not stored by this server (it keeps metrics, params, tags and small artifacts); "
              "log with mlflow.tensorflow.autolog(log_models=False) and keep model files yourself")

router = APIRouter(include_in_schema=False)


@router.api_route("/runs/log-model", methods=["POST"], dependencies=[Depends(require_token)])
@router.api_route("/logged-models", methods=["GET", "POST"], dependencies=[Depends(require_token)])
@router.api_route("/logged-models/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
def models_not_stored(request: Request) -> None:
    raise EndpointNotFound(f"{request.url.path}: {NOT_STORED}")


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_implemented(request: Request) -> None:
    raise EndpointNotFound(f"{request.method} {request.url.path}: this server speaks the part of MLflow's tracking "
                           "protocol that logs and reads runs (README: Coming from MLflow); not this endpoint")
