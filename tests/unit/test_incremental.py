"""The per-config parts kept with their snapshot (app.services.incremental): the first call computes
every config, a changed config is computed again while the others' parts are kept (the same
objects), answers sharing an older snapshot are refreshed with one computation, and a snapshot whose
sequences went backwards (another database at the same URL) computes everything again.

Snapshots here have equal sequences unless a test says otherwise, so `changed_configs` compares
the runs only and reads no database: the engine is never used."""

from __future__ import annotations

import itertools
from typing import Any, cast

from sqlalchemy import Engine

from app.services.incremental import Parts, parts_of, parts_of_one, same_statuses, went_back
from app.services.memo import memo
from app.services.snapshots import Snapshot

NO_ENGINE = cast(Engine, None)  # equal sequences: nothing is read
_test_keys = itertools.count()

# run id -> (config id, last epoch, status)
RUNS = {1: (10, 4, "succeeded"), 2: (20, 2, "running"), 3: (30, 4, "succeeded")}


def snap(runs: dict[int, tuple[int, int, str]] = RUNS, seq: int = 7) -> Snapshot:
    return Snapshot({1: seq}, dict(runs))


def fresh_key() -> tuple[Any, ...]:
    return ("test-incremental", next(_test_keys))


class Recorder:
    """A COMPUTE for `parts_of_one` that notes what it was asked and answers a new object per config:
    ("part", config id, how many computations came before)."""

    def __init__(self, configs: tuple[int, ...] = (10, 20, 30)) -> None:
        self.configs, self.calls = configs, list[list[int] | None]()

    def __call__(self, only: list[int] | None) -> dict[int, list[Any]]:
        self.calls.append(only)
        return {c: ["part", c, len(self.calls)] for c in self.configs if only is None or c in only}


def test_the_first_call_computes_every_config_and_the_same_snapshot_computes_nothing() -> None:
    key, compute, first = fresh_key(), Recorder(), snap()
    parts = parts_of_one(NO_ENGINE, key, first, compute)
    assert compute.calls == [None]
    assert parts.by_config == {10: ["part", 10, 1], 20: ["part", 20, 1], 30: ["part", 30, 1]}
    assert parts_of_one(NO_ENGINE, key, first, compute) is parts
    assert compute.calls == [None]
    assert memo.peek(key) == (first, parts)


def test_a_changed_config_is_computed_again_and_the_others_are_kept_by_identity() -> None:
    key, compute = fresh_key(), Recorder()
    before = parts_of_one(NO_ENGINE, key, snap(), compute)
    later = snap({**RUNS, 2: (20, 4, "succeeded")})
    after = parts_of_one(NO_ENGINE, key, later, compute)
    assert compute.calls == [None, [20]]
    assert after.by_config[20] == ["part", 20, 2]
    assert after.by_config[10] is before.by_config[10] and after.by_config[30] is before.by_config[30]
    assert after.generation != before.generation
    assert memo.peek(key) == (later, after)


def test_a_new_snapshot_with_nothing_changed_keeps_the_answer_and_its_generation() -> None:
    key, compute = fresh_key(), Recorder()
    before = parts_of_one(NO_ENGINE, key, snap(), compute)
    again = snap()  # another object, the same runs and sequences
    assert parts_of_one(NO_ENGINE, key, again, compute) is before
    assert compute.calls == [None]
    assert memo.peek(key) == (again, before)  # now held for the newer snapshot


def test_answers_that_share_an_older_snapshot_are_refreshed_with_one_computation() -> None:
    calls: list[tuple[list[str], list[int] | None]] = []

    def compute(names: list[str], only: list[int] | None) -> dict[str, dict[int, str]]:
        calls.append((names, only))
        return {n: {c: f"{n}{c}@{len(calls)}" for c in (10, 20, 30) if only is None or c in only} for n in names}

    base = fresh_key()
    keys = {name: (*base, name) for name in ("a", "b")}
    first = parts_of(NO_ENGINE, keys, snap(), compute)
    assert calls == [(["a", "b"], None)]
    assert first["b"].by_config == {10: "b10@1", 20: "b20@1", 30: "b30@1"}
    later = parts_of(NO_ENGINE, keys, snap({**RUNS, 3: (30, 4, "failed")}), compute)
    assert calls[1:] == [(["a", "b"], [30])]
    assert later["a"].by_config == {10: "a10@1", 20: "a20@1", 30: "a30@2"}
    # A key never asked before is computed whole; the kept one is handed back as it is.
    keys["c"] = (*base, "c")
    mixed = parts_of(NO_ENGINE, keys, memo.peek(keys["a"])[0], compute)  # type: ignore[index]
    assert calls[2:] == [(["c"], None)] and mixed["a"] is later["a"] and list(mixed) == ["a", "b", "c"]


def test_sequences_that_went_back_mean_another_database_and_everything_is_computed_again() -> None:
    key, compute = fresh_key(), Recorder()
    parts_of_one(NO_ENGINE, key, snap(seq=50), compute)
    recreated = snap(seq=3)  # the same runs, in a database made again at the same URL
    assert went_back(memo.peek(key)[0], recreated) and not went_back(recreated, snap(seq=50))  # type: ignore[index]
    parts_of_one(NO_ENGINE, key, recreated, compute, holds=same_statuses)  # even where the statuses alone decide
    assert compute.calls == [None, None]


def test_wanted_configs_keep_their_order_and_one_without_a_part_is_computed() -> None:
    key, compute = fresh_key(), Recorder((10, 20, 30, 40))
    first = parts_of_one(NO_ENGINE, key, snap(), compute, holds=same_statuses, wanted=[30, 10, 20])
    assert list(first.by_config) == [30, 10, 20] and compute.calls == [None]
    # A later epoch of a running run: the statuses hold, so the rows are kept as they are.
    epoch = snap({**RUNS, 2: (20, 3, "running")})
    assert parts_of_one(NO_ENGINE, key, epoch, compute, holds=same_statuses, wanted=[30, 10, 20]) is first
    # A config with no runs yet joins: its row is computed, in its place, with config 20's (its run
    # moved on since the snapshot the rows were made from, which the kept answer still holds).
    grown = parts_of_one(NO_ENGINE, key, epoch, compute, holds=same_statuses, wanted=[30, 40, 10, 20])
    assert list(grown.by_config) == [30, 40, 10, 20] and compute.calls[1:] == [[20, 40]]
    assert all(grown.by_config[c] is first.by_config[c] for c in (10, 30))


def test_order_puts_a_merged_answer_in_order_and_a_config_left_with_nothing_is_dropped() -> None:
    key = fresh_key()
    answers = iter([{20: [2], 10: [5], 30: [9]}, {30: [1]}])

    def compute(only: list[int] | None) -> dict[int, list[int]]:
        return next(answers)

    def by_value(parts: dict[int, list[int]]) -> dict[int, list[int]]:
        return dict(sorted(parts.items(), key=lambda item: item[1][0]))

    first = parts_of_one(NO_ENGINE, key, snap(), compute, order=by_value)
    assert list(first.by_config) == [20, 10, 30]  # a computed answer is taken in its own order
    changed = snap({1: (10, 4, "failed"), 2: RUNS[2], 3: (30, 4, "failed")})  # 10 and 30 changed; 10 has none now
    after = parts_of_one(NO_ENGINE, key, changed, compute, order=by_value)
    assert after.by_config == {30: [1], 20: [2]} and list(after.by_config) == [30, 20]
    assert isinstance(after, Parts)
