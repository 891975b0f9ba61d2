"""raykd's config: the typed schema (`schema`), the search space (`search`), loading and
validation (`load`). Import from here: `from raykd.config import RaykdConfig, load_config`."""

from raykd.config.base import ConfigError, Strict
from raykd.config.load import (
    PREPARED_ONCE, absolute_paths, config_from_dict, fingerprint, load_config, parse_overrides,
    set_dotted, teacher_depth, with_updates,
)
from raykd.config.schema import (
    DEFAULT_NEAR_MISSES, DEFAULT_OTHER_SPEECH, AugmentConfig, DataConfig, DistillConfig, DivergenceConfig,
    EvalConfig, FeatureConfig, RaykdConfig, ScalingConfig, StudentConfig, SynthConfig, TeacherArch, TeacherCacheConfig,
    TeacherConfig, TeacherFinetune, TrackingConfig, TrainConfig,
)
from raykd.config.search import (
    PARAM_TYPES, AshaConfig, CategoricalParam, IntParam, LayerSubsetParam, LogUniformParam, Param, RangeParam,
    SearchConfig, SearchParam, UniformParam,
)

__all__ = [name for name in dir() if not name.startswith("_")]
