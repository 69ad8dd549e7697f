"""The project's own task suite: small classification tasks in the SuperNI task-JSON format.

Why it exists: the default study and most tests must run with no download, and a tiny T5 must be
able to learn the outputs (one short word each). The suite is written into the SuperNI layout
(`tasks/*.json`, `splits/default/{train,test}_tasks.txt`) and read back by the very same
folder source and parser as SuperNI itself, so nothing downstream knows the difference.

Two modules:
- `families`: what the tasks are, as data: 6 families of inputs, the rules (definitions, label
  words, labelling functions) applied to them, and the counterfactual pairs among the rules;
- `generator`: how the files are written: instances dealt label-balanced from each family's
  inputs, the task JSON, the split lists, and the cache folder named by the generator version.
"""

from itstudy.data.synthetic.families import FAMILIES, Family, Rule, counterfactual_pairs
from itstudy.data.synthetic.generator import (
    GENERATOR_VERSION,
    SyntheticError,
    cached_synthetic_suite,
    write_synthetic_suite,
)

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "Family",
    "Rule",
    "SyntheticError",
    "cached_synthetic_suite",
    "counterfactual_pairs",
    "write_synthetic_suite",
]
