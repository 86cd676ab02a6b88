"""The kernel table: importing this package registers every kernel (one module per op family); `tpu` registers
the precision dispatcher that runs every `tpu.*` op through the float kernels of the `top` ops."""
from . import elementwise, tensor, nn, tpu  # noqa: F401
