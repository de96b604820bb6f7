"""deploy/slurm tried as far as a machine without Slurm allows: the array job's batch script run by
bash as two plain processes (its #SBATCH lines are comments to bash, SLURM_* set as Slurm would)
against a real database with a small queued sweep (fake trainer)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.config import PROJECT_ROOT, Settings
from tests.conftest import settings_env
from tests.factories import make_sweep, metric_rows, runs_of

SCRIPT = PROJECT_ROOT / "deploy" / "slurm" / "sweeplab-array.sbatch"
VENV = Path(sys.prefix)  # the environment running the tests: it has sweeplab installed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VENV / "bin" / "activate").is_file(), reason="tests not run from a virtual environment"),
]


def array_task(settings: Settings, task: int, workdir: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = settings_env(settings, VENV=str(VENV), SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4242",
                       SLURM_ARRAY_TASK_ID=str(task), SLURM_CPUS_PER_TASK="1", **extra)
    env["PATH"] = "/usr/bin:/bin"  # `sweeplab` only from the script's venv activation
    log = open(workdir / f"task-{task}.log", "wb")
    return subprocess.Popen(["bash", str(SCRIPT)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_array_tasks_train_the_queue_empty_then_exit_0(settings: Settings, engine: Engine,
                                                          tmp_path: Path) -> None:
    settings = settings.model_copy(update={"pack_size": 2, "fake_epoch_seconds": 0.03})
    sweep = make_sweep(engine, replicates=2, epochs=3, grid={"model.hidden": [[4], [8], [16], [32]]})  # 8 runs
    tasks = [array_task(settings, i, tmp_path) for i in range(2)]
    codes = [t.wait(90) for t in tasks]
    logs = [(tmp_path / f"task-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    runs = runs_of(engine, sweep.id)
    assert [r.status for r in runs] == ["succeeded"] * 8
    for run in runs:  # every epoch once: nothing trained twice, nothing cut short
        assert [e for k, e, _ in metric_rows(engine, run.id) if k == "loss"] == list(range(4))
    packs = [int(m.group(1)) for text in logs for m in re.finditer(r"stopped after (\d+) packs", text)]
    assert len(packs) == 2 and sum(packs) >= 4  # both tasks ran to the end of their loop; 4 configs
    assert {r.worker_id for r in runs} <= {w for text in logs for w in re.findall(r"worker (\S+) started", text)}
    assert all("sweeplab task" in text and "Traceback" not in text for text in logs)


def test_an_array_task_without_a_database_url_refuses_to_start(settings: Settings, tmp_path: Path) -> None:
    """Without the URL a worker would train from a local SQLite file nobody else sees: the script stops."""
    env = settings_env(settings, VENV=str(VENV), SLURM_ARRAY_TASK_ID="0")
    del env["SWEEPLAB_DATABASE_URL"]
    done = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "SWEEPLAB_DATABASE_URL" in done.stderr
    assert not list(tmp_path.glob("sweeplab-data"))  # no database was made
