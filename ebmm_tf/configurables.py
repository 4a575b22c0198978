"""gin configurables for the Keras classes of ebmm_tf.

Keras inspects ``__init__``'s argument list when it creates a layer, so gin cannot wrap these classes in
place. Each class gets a gin factory of the same name (``GatedRNNEnergy``, ``EnergyMemory``, ...) with the
class' exact signature: bindings such as ``GatedRNNEnergy.hidden_size = 256`` are checked against it
(a misspelt parameter fails at parse time) and the objects built are the plain Keras classes, so they
serialize to ``.keras`` files as usual.
"""

import inspect

import gin
from ebmm_tf import energies, memory

__all__ = [
    "EnergyMemory",
    "GatedRNNEnergy",
    "SlotEnergy",
    "ResNetFCEnergy",
    "ResNetConvEnergy",
    "ResNetLowerConvEnergy",
    "imagenet_conv_energy",
]


def _factory(target):
    signature = inspect.signature(target)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def build(*args, **kwargs):
        return target(*args, **kwargs)

    build.__name__ = build.__qualname__ = target.__name__
    build.__doc__ = target.__doc__
    build.__signature__ = signature.replace(parameters=params)
    return gin.external_configurable(build, name=target.__name__, module="ebmm_tf")


GatedRNNEnergy = _factory(energies.GatedRNNEnergy)
SlotEnergy = _factory(energies.SlotEnergy)
ResNetFCEnergy = _factory(energies.ResNetFCEnergy)
ResNetConvEnergy = _factory(energies.ResNetConvEnergy)
ResNetLowerConvEnergy = _factory(energies.ResNetLowerConvEnergy)
imagenet_conv_energy = _factory(energies.imagenet_conv_energy)
EnergyMemory = _factory(memory.EnergyMemory)
