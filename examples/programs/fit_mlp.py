"""An example training program: put this file in a worker's SWEEPLAB_PROGRAMS_DIR and submit a spec
with `program: fit_mlp` (see examples/program-sweep.yaml). The worker runs it once per run, with
the run's config, seed and epochs in its environment; SweeplabCallback() reports every epoch
through the worker, and checkpoint=True lets a run whose worker died resume after its last epoch.

It trains Flatten -> Dense(params.units, relu) -> Dropout(params.dropout) -> Dense(classes, softmax)
on the spec's dataset: <dataset>.npz from SWEEPLAB_DATA_DIR (x_train, y_train, x_test, y_test), else
Keras' own download of it (mnist, fashion_mnist, cifar10). Run it by hand to try it without a worker:

    SWEEPLAB_RUN_CONFIG='{"dataset": "mnist", "params": {"units": 32}}' SWEEPLAB_RUN_EPOCHS=2 \
        python examples/programs/fit_mlp.py
(the callback then logs to the server at $SWEEPLAB_URL as a script of your own would.)
"""

import json
import os
from pathlib import Path

import keras
import numpy as np

from sweeplab import SweeplabCallback

config = json.loads(os.environ.get("SWEEPLAB_RUN_CONFIG", "{}"))
seed = int(os.environ.get("SWEEPLAB_RUN_SEED", "0"))
epochs = int(os.environ.get("SWEEPLAB_RUN_EPOCHS", "3"))
params = config.get("params") or {}
dataset = config.get("dataset", "mnist")

path = Path(os.environ.get("SWEEPLAB_DATA_DIR", "sweeplab-data/datasets")) / f"{dataset}.npz"
if path.exists():
    with np.load(path) as d:
        (x, y), (xv, yv) = (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])
else:
    (x, y), (xv, yv) = getattr(keras.datasets, dataset).load_data()
limit = params.get("train_examples")
x, y = (x[:limit], y[:limit]) if limit else (x, y)
scale = 255.0 if x.dtype == np.uint8 else 1.0
x, xv = x.astype("float32") / scale, xv.astype("float32") / scale
y, yv = y.reshape(-1).astype("int64"), yv.reshape(-1).astype("int64")
classes = int(max(y.max(), yv.max())) + 1

keras.utils.set_random_seed(seed)
model = keras.Sequential([
    keras.Input(x.shape[1:]),
    keras.layers.Flatten(),
    keras.layers.Dense(int(params.get("units", 64)), activation="relu"),
    keras.layers.Dropout(float(params.get("dropout", 0.0))),
    keras.layers.Dense(classes, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.Adam(config.get("optimizer", {}).get("learning_rate", 0.001)),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
print(f"training {model.count_params()} parameters on {len(x)} {dataset} examples, seed {seed}", flush=True)
model.fit(x, y, epochs=epochs, batch_size=int(config.get("batch_size", 32)), validation_data=(xv, yv), verbose=0,
          callbacks=[SweeplabCallback(validation_data=(xv, yv), checkpoint=True)])
