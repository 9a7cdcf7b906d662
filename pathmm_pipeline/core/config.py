"""Load ``config.yaml`` and validate it against its JSON schema, filling in the documented defaults."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pathmm_pipeline.core.errors import ConfigError

SCHEMA_PACKAGE = "pathmm_pipeline.schemas"


def load_schema(name: str) -> dict[str, Any]:
    """Read a schema shipped with the package (``config`` or ``samplesheet``)."""
    text = resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.schema.yaml").read_text()
    return yaml.safe_load(text)


def _extend_with_default(validator_class: type) -> type:
    """A validator that also writes each property's ``default`` into the instance (like Snakemake's)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "default" in subschema and prop not in instance:
                    instance[prop] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


_DefaultingValidator = _extend_with_default(jsonschema.Draft202012Validator)


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (defaults filled in) and return it; raise :class:`ConfigError` listing
    every violation with its key path."""
    schema = load_schema("config")
    # two passes: the first fills defaults of nested objects created by defaults in the second
    for _ in range(2):
        errors = sorted(_DefaultingValidator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errors]
            raise ConfigError(f"{source}: invalid configuration:\n  - " + "\n  - ".join(lines))
    return config


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``overrides`` (top-level keys) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: must hold a mapping of settings, found {type(config).__name__}")
    config.update(overrides or {})
    return validate_config(config, source=str(path))
