"""The spec: pydantic models of a ladder (``model``, ``sections``), the YAML loader whose every error is one line
``file:line: key: why`` (``loader``), the argv a spec renders to (``argv``) and what ``validate`` prints
(``summary``)."""
from hlrp_ladder.spec.loader import SpecError, load_spec, load_yaml, parse_spec
from hlrp_ladder.spec.model import Spec, masked_keys
from hlrp_ladder.spec.sections import (CompareSpec, ExecutorSpec, Memory, MetricsRegex, Overnight, Pair, Recipe,
                                       SlurmSettings, Stress)

__all__ = ["CompareSpec", "ExecutorSpec", "Memory", "MetricsRegex", "Overnight", "Pair", "Recipe", "SlurmSettings",
           "Spec", "SpecError", "Stress", "load_spec", "load_yaml", "masked_keys", "parse_spec"]
