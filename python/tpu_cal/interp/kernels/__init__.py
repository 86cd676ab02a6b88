"""The kernel table: importing this package registers every kernel (one module per op family)."""
from . import elementwise, tensor, nn  # noqa: F401
