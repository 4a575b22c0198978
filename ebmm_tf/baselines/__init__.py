"""Non-EBMM baselines (numpy only). See ``ebmm_tf.baselines.hopfield``.

Names are imported lazily so that ``python -m ebmm_tf.baselines.hopfield`` does not import the module
twice.
"""

__all__ = ["HopfieldNetwork", "binary_string_queries", "evaluate_table1"]


def __getattr__(name):
    if name in __all__:
        from ebmm_tf.baselines import hopfield

        return getattr(hopfield, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
