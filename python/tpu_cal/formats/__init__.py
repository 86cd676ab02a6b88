"""File formats shared with TPU-MLIR: the calibration table (`cali_table`)."""
from .cali_table import CaliTable, format_cali_table, make_header, parse_cali_table, read_cali_table, write_cali_table

__all__ = ["CaliTable", "format_cali_table", "make_header", "parse_cali_table", "read_cali_table",
           "write_cali_table"]
