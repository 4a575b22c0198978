"""Run in a fresh process (logical devices must be set before TensorFlow starts).

``python tests/_distributed_check.py mirrored``: on 2 logical CPU devices, one MirroredStrategy meta-step
with one episode per replica versus a single device that averages the meta-gradients of both episodes,
clips and applies them. Prints a JSON line with the largest difference of the updated variables.

``python tests/_distributed_check.py worker OUT.json``: one worker of a MultiWorkerMirroredStrategy run
(TF_CONFIG set by the caller); writes its updated variables' checksum and the max difference to the
single-device reference.
"""

import json
import sys

import numpy as np
import tensorflow as tf

mode = sys.argv[1]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import ebmm_tf  # noqa: E402

# Collective ops must be configured before any other TensorFlow work in the process.
if mode == "mirrored":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()


def build(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = ebmm_tf.GatedRNNEnergy(input_size=6, hidden_size=8, hops=2, dynamic_size=3)
        mem = ebmm_tf.EnergyMemory(net, write_steps=2, read_steps=2, data_range=(-1.0, 1.0), write_rate_init=0.05)
        learner = ebmm_tf.MetaLearner(mem, learning_rate=1e-2, clip_norm=0.5, strategy=strategy)
    return mem, learner


rng = np.random.default_rng(1)
episodes = [
    {
        "patterns": rng.choice([-1.0, 1.0], size=(3, 6)).astype(np.float32),
        "queries": rng.uniform(-0.9, 0.9, size=(3, 6)).astype(np.float32),
    }
    for _ in range(2)
]

# Reference: one device, both episodes, gradients averaged, clipped by global norm, applied once.
mem_ref, learner_ref = build(tf.distribute.get_strategy())
grads = []
for ep in episodes:
    with tf.GradientTape() as tape:
        loss = ebmm_tf.meta_loss(mem_ref, ep)[0]
    grads.append(tape.gradient(loss, learner_ref.variables))
mean = [(a + b) / 2 for a, b in zip(*grads)]
assert float(tf.linalg.global_norm(mean)) > 0.5, "the clip must be active for this check to mean something"
learner_ref.apply_gradients(mean)
reference = [v.numpy() for v in mem_ref.trainable_variables]

mem, learner = build(strategy)
worker = strategy.cluster_resolver.task_id if mode != "mirrored" else 0
if mode == "mirrored":
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: tf.constant(v) for k, v in episodes[ctx.replica_id_in_sync_group].items()}
    )
else:
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: tf.constant(v) for k, v in episodes[worker].items()}
    )
learner.train_step(values)
updated = [v.numpy() for v in mem.trainable_variables]
result = {
    "replicas": strategy.num_replicas_in_sync,
    "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(updated, reference)),
    "max_abs_update": max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(reference, [v.numpy() for v in build(tf.distribute.get_strategy())[0].trainable_variables])
    ),
    "checksum": float(sum(np.sum(u.astype(np.float64)) for u in updated)),
}
if mode == "mirrored":
    print(json.dumps(result))
else:
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
