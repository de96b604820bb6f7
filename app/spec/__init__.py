"""The sweep spec (what a user submits) and its expansion into configs and runs.

A spec describes one model and training set-up; `grid` names dotted paths into the spec with the
values to try. Every grid combination is a config; every (config, seed) is a run.

The package's modules hold one part each (issue 11); import from `app.spec`, which re-exports them:
stored_text (text both databases store), strict (the models' base), layers (model.layers), model (`model`),
user_code (`params`, `program`), train (TrainSpec, one config), questions (a study's questions), grid (grid
paths and expansion), configs (ExpandedConfig, content keys), sweep (SweepSpec), render (YAML, config labels).
"""

from app.spec.configs import ExpandedConfig, config_key, content_key
from app.spec.grid import GRID_PATHS, MAX_GRID_VALUES, OPEN_GRID_PREFIXES
from app.spec.layers import (
    LAYER_KINDS,
    MAX_FILTERS,
    MAX_UNITS,
    MAX_WINDOW,
    Activation,
    BatchNormalizationLayer,
    Conv2DLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    LayerSpec,
    MaxPooling2DLayer,
    Padding,
)
from app.spec.model import (
    BUILDER,
    BUILDER_RULE,
    MAX_HIDDEN_LAYERS,
    MAX_LAYERS,
    MAX_WIDTH,
    MODEL_KINDS,
    ModelSpec,
    OutputActivation,
    Width,
)
from app.spec.questions import MAX_QUESTION_SWEEPS, MAX_QUESTIONS, Question, SweepName
from app.spec.render import describe_params, spec_yaml
from app.spec.stored_text import SURROGATE_MESSAGE, StoredText, storable
from app.spec.sweep import MAX_RUNS_PER_SWEEP, MAX_SEEDS, SweepSpec
from app.spec.train import (
    DEFAULT_LEARNING_RATE,
    MAX_EPOCHS,
    OMITTED_AT_DEFAULT,
    Dataset,
    Limit,
    Loss,
    OptimizerName,
    OptimizerSpec,
    TrainSpec,
)
from app.spec.user_code import (
    MAX_PARAMS_CHARS,
    MAX_PARAMS_DEPTH,
    PROGRAM_NAME,
    PROGRAM_NAME_RULE,
    ProgramName,
    check_params,
)

__all__ = [
    "BUILDER",
    "BUILDER_RULE",
    "DEFAULT_LEARNING_RATE",
    "GRID_PATHS",
    "LAYER_KINDS",
    "MAX_EPOCHS",
    "MAX_FILTERS",
    "MAX_GRID_VALUES",
    "MAX_HIDDEN_LAYERS",
    "MAX_LAYERS",
    "MAX_PARAMS_CHARS",
    "MAX_PARAMS_DEPTH",
    "MAX_QUESTIONS",
    "MAX_QUESTION_SWEEPS",
    "MAX_RUNS_PER_SWEEP",
    "MAX_SEEDS",
    "MAX_UNITS",
    "MAX_WIDTH",
    "MAX_WINDOW",
    "MODEL_KINDS",
    "OMITTED_AT_DEFAULT",
    "OPEN_GRID_PREFIXES",
    "PROGRAM_NAME",
    "PROGRAM_NAME_RULE",
    "SURROGATE_MESSAGE",
    "Activation",
    "BatchNormalizationLayer",
    "Conv2DLayer",
    "Dataset",
    "DenseLayer",
    "DropoutLayer",
    "ExpandedConfig",
    "FlattenLayer",
    "LayerSpec",
    "Limit",
    "Loss",
    "MaxPooling2DLayer",
    "ModelSpec",
    "OptimizerName",
    "OptimizerSpec",
    "OutputActivation",
    "Padding",
    "ProgramName",
    "Question",
    "StoredText",
    "SweepName",
    "SweepSpec",
    "TrainSpec",
    "Width",
    "check_params",
    "config_key",
    "content_key",
    "describe_params",
    "spec_yaml",
    "storable",
]
