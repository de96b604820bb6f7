"""The study's question 5 (softmax output + cross-entropy, 10 replicates), tracked by sweeplab.

The q5 cell below is the notebook's own code with two lines changed, marked `# sweeplab`: the
import, and `callbacks=[...]` in model.fit. Start sweeplab first (`make run`), then run

    python examples/track_existing_script.py

The dashboard lists the sweep "q5 softmax (notebook)": one config with 10 replicates, their band
per epoch and the statistics tables, filling in live. No internet here? Point MNIST_NPZ at a local
copy of mnist.npz (the same arrays as `mnist.load_data()`), e.g. MNIST_NPZ=../shared/data/mnist.npz.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow.keras.datasets.mnist as mnist

from sweeplab import SweeplabCallback  # sweeplab

# The notebook's data loading (its introduction).
if os.environ.get("MNIST_NPZ"):
    with np.load(os.environ["MNIST_NPZ"]) as d:
        (x_train, y_train), (x_test, y_test) = (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])
else:
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
x_train = x_train / 255.0  # rescale the images to be between 0 and 1
x_test = x_test / 255.0    # rescale the images to be between 0 and 1

# Question 5, as in the notebook.
models = {} # empty dict for storing 10 models
for i in range(10):
    # instantiate new model
    model = tf.keras.models.Sequential([
        tf.keras.layers.Flatten(input_shape=(28, 28)), # input is a 28x28 image
        tf.keras.layers.Dense(32, activation='relu'), # 32 neurons in the middle "hidden" layer
        tf.keras.layers.Dense(10, activation='softmax') # 10 outputs (one for each category)
    ])
    model.compile(optimizer='adam',
                  loss='sparse_categorical_crossentropy',
                  metrics=['accuracy']) # in addition to the loss, also compute the categorization accuracy
    # add to dict
    models[str(i)] = model

# iterate through dict to train for 20 epochs
training_loss = []
testing_loss = []
for key, model in models.items():
    print('\n')
    print(f'Model {key}:')
    model.fit(x_train, y_train, epochs=20, validation_data=(x_test, y_test), callbacks=[SweeplabCallback(sweep="q5 softmax (notebook)", config={"hidden": [32], "output": "softmax", "optimizer": "adam"}, seed=int(key), validation_data=(x_test, y_test))])  # noqa: E501  # sweeplab
    # append training and testing loss vs. epoch lists for each model
    training_loss.append(model.history.history['loss'])
    testing_loss.append(model.history.history['val_loss'])
