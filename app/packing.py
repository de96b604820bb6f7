"""Which queued runs may train together in one pack: the pack key.

A pack trains its replicates in lock-step through one trainer (worker/keras_packed.py stacks their
weights; worker/keras_single.py keeps one model each). What a replicate may have of its own is its
seed, its learning rate (the packed update takes one rate per replicate) and its number of epochs
(a replicate whose epochs are done leaves the pack, the others go on). Everything else, the
architecture, loss, optimizer, batch size, dataset and its limit, params and program, must be
equal. So the pack key is the content key of a config's training settings without the learning
rate and the epochs (seeds are never in them): configs of different sweeps share it when they
differ only there, as the study's q1 and q2 do (one config at 5 and 20 epochs), and so do the
configs of a grid over `optimizer.learning_rate` or `epochs`.

Stored in `configs.pack_key` when a config is made and copied to each of its runs (`runs.pack_key`;
migrations 0005 and 0006 filled in the older ones), so the claim (app.services.queue.claim_runs)
reads one indexed table. Never change what it leaves out without a migration that recomputes the
stored keys.
"""

from __future__ import annotations

import copy
from typing import Any

from app.spec import TrainSpec, content_key

PER_REPLICATE = ("optimizer.learning_rate", "epochs")  # what replicates of one pack may differ in (and the seed)


def pack_key_of(train: dict[str, Any]) -> str:
    """The pack key of a config's stored training settings (configs.train, a TrainSpec's JSON dump)."""
    shared = copy.deepcopy(train)
    for path in PER_REPLICATE:
        *parents, leaf = path.split(".")
        node: Any = shared
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return content_key(shared)


def pack_key(train: TrainSpec) -> str:
    """The pack key of a config's training settings."""
    return pack_key_of(train.model_dump(mode="json"))
