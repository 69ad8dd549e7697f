"""The study config: the typed spec (`spec`, with its shared base in `base` and the sections on
where and how a study runs in `running`), reading it from files and overrides (`loading`),
and its digest (`digest`). Import from here:

    from itstudy.config import Study, load_study
    study = load_study("experiments/demo.yaml", ["train.learning_rate=1e-4"])
"""

from itstudy.config.digest import (
    NAME_NEUTRAL_KEYS,
    RESULT_NEUTRAL_KEYS,
    changed_result_keys,
    config_digest,
    identity_digest,
    to_plain,
)
from itstudy.config.base import DEV_PREFIX, ConfigError
from itstudy.config.loading import at_grid_point, load_study, study_from_dict, with_overrides
from itstudy.config.running import ResourcesConfig, SearchConfig, TrackingConfig
from itstudy.config.spec import (
    SUPERNI_COMMIT,
    BaselineName,
    ClassificationRule,
    DataConfig,
    EvalConfig,
    ModelConfig,
    ModelFreeBaselineName,
    Study,
    SyntheticConfig,
    TrainConfig,
    VariantConfig,
    gradient_accumulation,
)

__all__ = [
    "DEV_PREFIX",
    "SUPERNI_COMMIT",
    "BaselineName",
    "ClassificationRule",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "ModelFreeBaselineName",
    "ResourcesConfig",
    "SearchConfig",
    "Study",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainConfig",
    "VariantConfig",
    "at_grid_point",
    "config_digest",
    "identity_digest",
    "NAME_NEUTRAL_KEYS",
    "RESULT_NEUTRAL_KEYS",
    "changed_result_keys",
    "gradient_accumulation",
    "load_study",
    "study_from_dict",
    "to_plain",
    "with_overrides",
]
