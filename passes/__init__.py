"""IR passes of tpu_cal, one per file, and the infrastructure to run them next to upstream MLIR passes.

    from tpu_cal.passes import build_pass_manager
    pm = build_pass_manager("canonicalize,cse,top-dce", ctx)
    pm.run(module.operation)

A pass module registers its class with `@register`; `default_registry()` imports every module of this package.
"""
from .registry import (Diagnostic, OptionInfo, Pass, PassError, PassRegistry, PipelineError, PipelineFailed,
                       add_to_pass_manager, build_pass_manager, default_registry, option, register, run_pipeline)
from .dce import TopDCE


def parse_pipeline(text: str) -> list:
    """Our pass instances and upstream pipeline texts, in order (see PassRegistry.parse_pipeline)."""
    return default_registry().parse_pipeline(text)


def get_pass(argument: str, options: str | dict | None = None) -> Pass:
    """An instance of a registered pass: `get_pass("top-calibrate", "method=kld")`."""
    return default_registry().create(argument, options)


__all__ = ["Diagnostic", "OptionInfo", "Pass", "PassError", "PassRegistry", "PipelineError", "PipelineFailed",
           "TopDCE", "add_to_pass_manager", "build_pass_manager", "default_registry", "get_pass", "option",
           "parse_pipeline", "register", "run_pipeline"]
