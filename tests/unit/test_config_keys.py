"""Config keys are stored (configs.key) and group replicates across sweeps: queued configs and
external runs' config dicts are hashed by one function, and its values must never change."""

from __future__ import annotations

from app.spec import SweepSpec, TrainSpec, config_key, content_key


def test_content_key_is_the_stored_hash() -> None:
    """The value the external-run path stored before config_hash and config_key became one."""
    config = {"lr": 0.01, "opt": {"name": "adam"}, "hidden": [32, 64], "note": "é"}
    assert content_key(config) == "0c87ba00265f0352"
    assert content_key(dict(reversed(config.items()))) == "0c87ba00265f0352"  # key order ignored


def test_a_queued_config_and_the_same_settings_sent_as_a_dict_share_a_key() -> None:
    train = TrainSpec()
    assert config_key(train) == content_key(train.model_dump(mode="json"))
    (expanded,) = SweepSpec(name="x").expand()
    assert expanded.key == config_key(expanded.train)
