"""The fused CPU kernel of FIRE's table-mode bias; it lives in :mod:`firepe.positions.fire_kernel`
(so ``firepe.positions`` can be lifted into another project alone). This module re-exports it:
``kernels.available()``, ``kernels.build()``, ``kernels.table_lookup()``.
"""

from .positions.fire_kernel import available, build, check_lookup_args, table_lookup

__all__ = ["available", "build", "check_lookup_args", "table_lookup"]
