"""A config of a sweep (its swept values and full training settings) and the content key configs are stored by."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from app.spec.train import TrainSpec


@dataclass(frozen=True)
class ExpandedConfig:
    """One grid combination: the swept values and the full training settings they give."""

    params: dict[str, Any]
    train: TrainSpec

    @property
    def key(self) -> str:
        """A content hash: equal settings give equal keys, across sweeps."""
        return config_key(self.train)


def config_key(train: TrainSpec) -> str:
    """The key of a queued config: the content key of its full training settings."""
    return content_key(train.model_dump(mode="json"))


def content_key(data: Any) -> str:
    """A content hash of JSON-able DATA (key order ignored): configs with equal settings share it,
    queued and external alike, so their replicates group. Stored in configs.key: never change it."""
    blob = json.dumps(data, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
