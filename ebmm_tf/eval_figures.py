"""The figures of an evaluation (``python -m ebmm_tf.evaluate --figures``): retrieval grid, energy levels.

``energy_levels`` gathers Figure 6's energies (memories, non-memories, distorted memories and out-of-distribution
patterns under each episode's written memory); ``write_figures`` draws them with ``ebmm_tf.analysis``.
"""

from __future__ import annotations

import logging

import numpy as np

from ebmm_tf import rundir

logger = logging.getLogger("ebmm_tf.evaluate")

__all__ = ["energy_levels", "ood_patterns", "write_figures"]


def ood_patterns(source, count, seed=0, data_dir=None):
    """Out-of-distribution patterns for a model of ``source`` (Figure 6), or None when there are none.

    For the single-channel binary sources (Omniglot, MNIST): CIFAR-10 test images converted to grayscale
    (``tf.image.rgb_to_grayscale``, 32x32) and binarized at 0.5, ``count`` of them drawn without replacement
    (with replacement if the split holds fewer).
    Returns ``(patterns [count, 32, 32, 1] float32, description)`` or None if CIFAR-10 is absent.
    """
    import tensorflow as tf

    from ebmm_tf import data as data_lib

    if source == "binary_strings" or not data_lib.is_binary(source):
        return None
    try:
        images, _ = data_lib.load_split("cifar10", "test", data_dir)
    except data_lib.DatasetNotFoundError as err:
        logger.warning("No out-of-distribution patterns (CIFAR-10 not found: %s)", str(err).splitlines()[0])
        return None
    rng = np.random.default_rng(seed)
    idx = rng.choice(images.shape[0], size=count, replace=count > images.shape[0])
    gray = tf.image.rgb_to_grayscale(images[idx]).numpy()
    return (gray > 0.5).astype(np.float32), "CIFAR-10 test images, grayscale, binarized at 0.5"


def energy_levels(model, protocol, num_batches, seed, split="test", data_dir=None):
    """Energies for Figure 6 over ``num_batches`` written episodes (needs ``model.energy``).

    Per episode: ``memories`` = the N written patterns; ``non-memories`` = N other ``split`` patterns (the
    episode of the same index in the stream ``seed + 1``); ``distorted memories`` = the N queries;
    ``out-of-distribution`` = N binarized grayscale CIFAR-10 images (single-channel binary sources only).
    All energies are under the episode's written memory. Returns ``({category: float array}, ood description)``.
    """
    import tensorflow as tf

    n = protocol.num_patterns
    stored = iter(protocol.episodes(split, seed, data_dir).take(num_batches))
    others = iter(protocol.episodes(split, seed + 1, data_dir).take(num_batches))
    ood = ood_patterns(protocol.source, n * num_batches, seed, data_dir)

    @tf.function
    def energies(patterns, probes):
        state = model.write(patterns)
        return {k: model.energy(state, v) for k, v in probes.items()}

    out = {"memories": [], "non-memories": [], "distorted memories": [], "out-of-distribution": []}
    for b in range(num_batches):
        ep, other = next(stored), next(others)
        probes = {"memories": ep["patterns"], "non-memories": other["patterns"], "distorted memories": ep["queries"]}
        if ood is not None:
            probes["out-of-distribution"] = tf.constant(ood[0][b * n : (b + 1) * n])
        for k, v in energies(ep["patterns"], probes).items():
            out[k].append(v.numpy())
    out = {k: np.concatenate(v) for k, v in out.items() if v}
    return out, (ood[1] if ood is not None else None)


def write_figures(model, protocol, first, output_base, label, seed, split, data_dir, figure_batches):
    """The retrieval grid of the ``first`` episode and (with an energy) the energy histogram of
    ``figure_batches`` episodes, written as ``<output_base>_retrieval.png``, ``_energy.png`` and ``_energy.json``;
    returns their paths. ``label``: the model's name in the titles."""
    import tensorflow as tf

    from ebmm_tf import analysis, contract

    paths = {}
    has_energy = contract.has_energy(model)
    rows = min(4, protocol.num_patterns)
    patterns, queries = first["patterns"], first["queries"]
    clamp = first["clamp"] if protocol.clamps else None

    @tf.function
    def retrieve(patterns, queries, clamp):
        state = model.write(patterns)
        iterates = model.read(state, queries, clamp)
        energies = None
        if has_energy:
            energies = tf.stack([model.energy(state, x) for x in [patterns, queries] + list(iterates)])
        return iterates, energies

    iterates, energies = retrieve(patterns, queries, clamp)
    iterates = [it.numpy()[:rows] for it in iterates]
    energies = None if energies is None else energies.numpy()[:, :rows]
    path = output_base + "_retrieval.png"
    analysis.retrieval_grid(
        patterns[:rows],
        queries[:rows],
        iterates,
        energies=energies,
        data_range=model.data_range,
        path=path,
        title=f"{label}, {protocol.source} (N = {protocol.num_patterns})",
    )
    paths["retrieval"] = path
    if has_energy:
        levels, ood_desc = energy_levels(model, protocol, figure_batches, seed, split, data_dir)
        path = output_base + "_energy.png"
        stats = analysis.energy_histogram(levels, path, title=f"{label}, {protocol.source}")
        stats["out_of_distribution_source"] = ood_desc
        stats["num_batches"] = figure_batches
        json_path = output_base + "_energy.json"
        rundir.atomic_write_json(json_path, stats)
        paths["energy"] = path
        paths["energy_json"] = json_path
    return paths
