"""What every config section shares: the strict base class, the error a refused spec raises, and
the small validators YAML needs (paths, ints where floats are meant, safe names)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from itstudy.errors import UserError

DEV_PREFIX = "dev_"
"""Metrics measured on the dev tasks are logged as dev_<metric>; every choice reads only these."""


class ConfigError(UserError):
    """A study spec that cannot be run; the message names the file and the field."""


class Spec(BaseModel):
    """Base of every config section: unknown keys and silent type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=True, allow_inf_nan=False)


def _lenient_path(value: Any) -> Any:
    # YAML has no path type; accept strings for Path fields even in strict mode.
    return Path(value).expanduser() if isinstance(value, str) else value


def _int_is_a_float(value: Any) -> Any:
    # YAML writes 1 and 1e-4 as int and float; an int is a valid float here.
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _safe_name(value: str) -> str:
    # These names become folder names and MLflow experiment names.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or ".." in value:
        raise ValueError(
            "not a safe name: start with a letter or digit, then use only letters, digits, "
            "'_', '.' and '-' (no '..'); it names folders and the MLflow experiment"
        )
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
