"""Model builders of the user's own: `model.builder: "module:function"` names a function of a module
in the worker's code folder (SWEEPLAB_CODE_DIR), called as `function(params, input_shape, classes)`.

Only modules whose file lies in that folder are imported (a builder cannot name a function of the
standard library or an installed package); a module whose file changed since its import is
reloaded. What goes wrong is a ModelBuildError in the builder's own words: it fails the run (the
traceback goes to the worker's log). Imports Keras: worker only.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import numpy as np

from app.spec import TrainSpec
from worker.trainer import ModelBuildError

_loaded: dict[str, float] = {}  # module name -> its file's mtime when imported
_lock = threading.Lock()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:400]}" if text else type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    """Left to the runner (a crash, requeued), not a builder's error."""
    return isinstance(exc, MemoryError) or any(c.__name__ == "ResourceExhaustedError" for c in type(exc).__mro__)


def on_path(code_dir: Path) -> None:
    """Put the code folder first on sys.path (once), so builders import their own helper modules too."""
    folder = str(Path(code_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _module(name: str, code_dir: Path | None, ref: str) -> ModuleType:
    if code_dir is None:
        raise ModelBuildError(f"model builder {ref}: this worker has no code folder (set SWEEPLAB_CODE_DIR to the "
                              f"folder holding {name.split('.')[0]}.py)")
    folder = Path(code_dir).resolve()
    top = name.split(".")[0]
    if importlib.machinery.PathFinder.find_spec(top, [str(folder)]) is None:
        raise ModelBuildError(f"model builder {ref}: no module {top} in the worker's code folder {folder}")
    on_path(folder)
    with _lock:
        try:
            module = importlib.import_module(name)
            path = Path(module.__file__ or "").resolve()
            if folder not in path.parents:
                raise ModelBuildError(f"model builder {ref}: module {name} is {path}, not a file of the worker's "
                                      f"code folder {folder} (rename the module)")
            mtime = path.stat().st_mtime
            if name in _loaded and _loaded[name] != mtime:
                module = importlib.reload(module)
            _loaded[name] = mtime
        except ModelBuildError:
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            raise ModelBuildError(f"model builder {ref}: importing {name} failed: {_first_line(exc)}") from exc
    return module


def build_user_model(spec: TrainSpec, seed: int, input_shape: tuple[int, ...], classes: int,
                     code_dir: Path | None, sample: np.ndarray) -> keras.Model:
    """The builder's model for one replicate, its weights drawn after `keras.utils.set_random_seed(seed)`,
    checked against the data: it must be a keras.Model taking SAMPLE (a few inputs) and answering one
    row of CLASSES outputs per input."""
    ref = spec.model.builder
    assert ref is not None
    module_name, function_name = ref.split(":")
    module = _module(module_name, code_dir, ref)
    build = getattr(module, function_name, None)
    if not callable(build):
        raise ModelBuildError(f"model builder {ref}: module {module_name} has no function {function_name}")
    params: dict[str, Any] = dict(spec.params or {})
    keras.utils.set_random_seed(seed)
    try:
        model = build(params, tuple(input_shape), classes)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise
        raise ModelBuildError(f"model builder {ref} raised {_first_line(exc)}") from exc
    if not isinstance(model, keras.Model):
        raise ModelBuildError(f"model builder {ref} returned {type(model).__name__}, not a keras.Model")
    try:
        out = model(sample, training=False)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise
        raise ModelBuildError(f"model builder {ref}: its model cannot take the dataset's inputs of shape "
                              f"{tuple(input_shape)}: {_first_line(exc)}") from exc
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[1] != classes:
        raise ModelBuildError(f"model builder {ref}: its model answers outputs of shape {shape[1:]} per input, "
                              f"but the dataset has {classes} classes: end it with Dense({classes}) (the classes "
                              f"argument)")
    return model
