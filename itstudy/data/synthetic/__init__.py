"""The project's own task suite: small classification tasks in the SuperNI task-JSON format.

Why it exists: the default study and most tests must run with no download, and a tiny T5 must be
able to learn the outputs (one short word each). The suite is written into the SuperNI layout
(`tasks/*.json`, `splits/default/{train,test}_tasks.txt`) and read back by the very same
folder source and parser as SuperNI itself, so nothing downstream knows the difference.

Why the training tasks draw their label words from a pool (generator versions 3 and 4): Kung &
Peng's finding is that instruction-tuned models learn the output format, answering in the label
space the prompt names. A suite whose training tasks answer with a handful of fixed words lets a
model lower its loss by memorising those words instead; version 2 (10 fixed label sets) did
exactly that: a tiny T5 answered a training word on every test task (label-space rate 0%, 28.6 EM
against 50 for random guessing). Here each of the 14 training rules is written as it is and 15
more times with label words from a 40-word pool (224 training tasks), so the prompt is the only
place the answer's words can come from. The pool holds every test label word, as SuperNI's
training outputs hold yes/no or positive/negative. Measured on 2 cores (t5-tiny with tied
embeddings, word-consistent BPE, 20 instances per task, batch 16, lr 2e-3): with a 190-word
pool, scratch runs answered one pool word on every test task (label-space rate 0% after 1,120
steps). Version 3 drew each task's words independently, which left 'entailment' in 4 drawn tasks
and 'second' in 5 (against 20 for 'first'); the demo's 8 tuned runs (2,240 steps each) answered
inside the test task's label space on 88% of the test instances, 3 runs missing on exactly the
first/second and entailment/contradiction tasks. Version 4 deals the words from shuffled decks,
so each pool word labels 7 or 8 drawn groups: the test words are no rarer than the others. The
demo's runs measured with it are in experiments/demo.yaml's header.

Test tasks keep their natural label words, and their counterfactual pairs (two definitions over
the same inputs) tell a model that reads the rule from one that only answers in the format.

Two modules:
- `families`: what the tasks are, as data: 6 families of inputs, the rules (definitions, label
  words, labelling functions) applied to them;
- `label_draws`: the pool of label words, the draws of the training tasks dealt from it, and the
  counterfactual pairs among the written groups;
- `generator`: how the files are written: instances dealt label-balanced from each family's
  inputs, the task JSON, the split lists, and the cache folder named by the generator version.
"""

from itstudy.data.synthetic.families import FAMILIES, Family, Rule
from itstudy.data.synthetic.label_draws import LABEL_POOL, POOL_DRAWS, counterfactual_pairs, written_groups
from itstudy.data.synthetic.generator import (
    GENERATOR_VERSION,
    SyntheticError,
    cached_synthetic_suite,
    write_synthetic_suite,
)

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "LABEL_POOL",
    "POOL_DRAWS",
    "Family",
    "Rule",
    "SyntheticError",
    "cached_synthetic_suite",
    "counterfactual_pairs",
    "write_synthetic_suite",
    "written_groups",
]
