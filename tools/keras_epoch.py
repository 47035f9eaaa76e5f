r"""The Keras 3 / TensorFlow reference: the reference AE trained with `fit`, then its test MSE.

  pip install -e '.[bench]'
  python -m tools.keras_epoch --data=mnist.npz --batch_size=128

What `python -m tools.whole_process` runs as the Keras side (it writes the
npz: x_train and x_test as uint8 [N, 28, 28], like keras.datasets.mnist). This
module imports neither JAX nor ae_jax, so the process pays only for TensorFlow.
Prints 'first step done' after the first batch, 'step N/N' after the last (the
caller times them), then one JSON line with the test MSE.
"""

import json
import sys


def keras_reference(latent_dim: int = 16):
  """The reference description's Keras model, verbatim in structure (Keras 3 functional API)."""
  import keras
  from keras import layers as kl
  inputs = keras.Input(shape=(28, 28, 1))
  x = kl.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)
  x = kl.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
  x = kl.Flatten()(x)
  latent = kl.Dense(latent_dim)(x)
  x = kl.Dense(7 * 7 * 64)(latent)
  x = kl.Reshape((7, 7, 64))(x)
  x = kl.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
  x = kl.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
  outputs = kl.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
  model = keras.Model(inputs, outputs)
  model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
  return model


def main(argv):
  from absl import flags
  data = flags.DEFINE_string("data", None, "npz with x_train, x_test (uint8).", required=True)
  batch = flags.DEFINE_integer("batch_size", 128, "Batch size.")
  epochs = flags.DEFINE_integer("epochs", 1, "Epochs.")
  seed = flags.DEFINE_integer("seed", 0, "keras.utils.set_random_seed.")
  flags.FLAGS(argv)
  import keras
  import numpy as np
  with np.load(data.value) as f:
    x_train = (f["x_train"].astype(np.float32) / 255.0)[..., None]
    x_test = (f["x_test"].astype(np.float32) / 255.0)[..., None]
  keras.utils.set_random_seed(seed.value)
  model = keras_reference()
  steps = epochs.value * -(-len(x_train) // batch.value)

  class Progress(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
      self.reported = False

    def on_train_batch_end(self, batch_index, logs=None):
      if not self.reported:
        self.reported = True
        print("first step done", flush=True)

    def on_train_end(self, logs=None):
      print(f"step {steps}/{steps}", flush=True)

  model.fit(x_train, x_train, batch_size=batch.value, epochs=epochs.value, shuffle=True, verbose=0,
            callbacks=[Progress()])
  test_mse = model.evaluate(x_test, x_test, batch_size=batch.value, verbose=0)
  print(json.dumps({"framework": "keras", "keras": keras.__version__, "test_mse": float(test_mse)}),
        flush=True)


if __name__ == "__main__":
  main(sys.argv)
