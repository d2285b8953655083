"""popek, a laboratory for machine virtualization.

The layers, bottom up: ``popek.isa`` (the P32 architecture: instruction table, flat state, profiles,
assembler, devices), ``popek.cores`` (the hardware: reference, JIT and C cores), ``popek.vmm`` (virtual
machines, monitors, host, checker) and ``popek.cli``. A layer imports only the layers below it.
"""
