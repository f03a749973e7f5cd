"""The ``crdtstore`` command line: ``serve``, ``keygen``, ``demo``, and the operator's
commands on a node directory (``get``, ``put``, ``del``, ``add``, ``remove``, ``ls``,
``watch``, ``members``, ``leave``)."""

from crdtstore.cli.app import build_parser, main
from crdtstore.cli.serve import GC_GEN0_THRESHOLD, serve_options, tune_gc

__all__ = ["GC_GEN0_THRESHOLD", "build_parser", "main", "serve_options", "tune_gc"]
