"""Runs an exported memory in a fresh process (used by tests/test_export.py).

Usage: ``python tests/_export_fresh.py EXPORT_DIR KERAS_FILE INPUTS.npz OUTPUTS.npz``

``INPUTS.npz`` keys are ``"<signature>:<input key>"`` for the SavedModel part and ``"keras:<patterns|queries|mask>"``
for the Keras part. The SavedModel is loaded and run *before* ``ebmm_tf`` is imported (TF Serving has no
Python: the SavedModel must not need it). Output keys: ``"<signature>:<output key>"`` and ``"keras:<name>"``.
"""

import sys

import numpy as np
import tensorflow as tf


def main(export_dir, keras_file, inputs_file, outputs_file):
    inputs = dict(np.load(inputs_file))
    out = {}
    loaded = tf.saved_model.load(export_dir)
    signatures = sorted({k.split(":")[0] for k in inputs if not k.startswith("keras:")})
    for sig in signatures:
        feed = {k.split(":", 1)[1]: tf.constant(v) for k, v in inputs.items() if k.startswith(sig + ":")}
        for key, value in loaded.signatures[sig](**feed).items():
            out[f"{sig}:{key}"] = value.numpy()
    assert "ebmm_tf" not in sys.modules, "loading the SavedModel imported ebmm_tf"

    import keras

    import ebmm_tf  # noqa: F401  (registers the Keras classes)
    from ebmm_tf.serving import state_key

    memory = keras.saving.load_model(keras_file)
    state = memory.write(inputs["keras:patterns"])
    for name, tensor in state.weights.items():
        out[f"keras:{state_key(name)}"] = tensor.numpy()
    iterates = memory.read(state, inputs["keras:queries"], inputs.get("keras:mask"))
    out["keras:iterates"] = np.stack([it.numpy() for it in iterates])
    out["keras:energies"] = np.stack([memory.energy(state, it).numpy() for it in iterates])
    np.savez(outputs_file, **out)


if __name__ == "__main__":
    main(*sys.argv[1:])
