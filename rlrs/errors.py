"""Errors raised for bad user input, before any work starts, and the one
translation of JSON Schema errors (run configs, study files) into them."""

from __future__ import annotations

from jsonschema import Draft202012Validator

# The pattern of every name a study gives (sizes, arms, studies): workflow/schemas/study.schema.yaml.
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ConfigError(ValueError):
    """A bad setting, named by its field path, raised before any work starts."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def check_schema(instance, schema: dict, root: str) -> None:
    """Validate with jsonschema; raise the most specific error as a ConfigError
    naming the field (`root` for the top level) and what is allowed there."""
    errors = list(Draft202012Validator(schema).iter_errors(instance))
    if errors:
        # The deepest error says the most: one inside sizes.s1 beats one about sizes.
        raise _translate(max(errors, key=lambda e: len(list(e.absolute_path))), root)


def _field(path: list, root: str) -> str:
    return ".".join(str(p) for p in path) or root


def _translate(err, root: str) -> ConfigError:
    path, schema = list(err.absolute_path), err.schema
    at = lambda p: _field(p, root)  # noqa: E731
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return ConfigError(
            at(path + [missing]),
            f"required key is missing (keys here: {', '.join(sorted(schema.get('properties', {})))})",
        )
    if err.validator == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        return ConfigError(at(path + extra[:1]), f"unknown key; allowed keys here: {', '.join(known)}")
    if "propertyNames" in err.absolute_schema_path:
        # jsonschema reports a bad key against its mapping: name the key itself.
        bad = err.instance
        if err.validator == "enum":
            return ConfigError(
                at(path + [bad]), f"unknown name {bad!r}; allowed: {', '.join(map(str, schema['enum']))}"
            )
        return ConfigError(at(path + [bad]), f"bad name {bad!r}; allowed: letters, digits, '_', '.', '-'")
    if err.validator == "enum":
        return ConfigError(at(path), f"{err.instance!r} is not allowed; allowed: {', '.join(map(str, schema['enum']))}")
    if err.validator == "pattern" and schema.get("pattern") == NAME_PATTERN:
        return ConfigError(at(path), f"bad name {err.instance!r}; allowed: letters, digits, '_', '.', '-'")
    if err.validator == "minItems":
        return ConfigError(at(path), f"{err.instance!r} is too short; give at least {schema['minItems']} item(s)")
    if err.validator == "uniqueItems":
        return ConfigError(at(path), f"{err.instance!r} names an item twice; give each once")
    if err.validator == "type":
        want = schema["type"]
        want = " or ".join(want) if isinstance(want, list) else want
        return ConfigError(at(path), f"{err.instance!r} has the wrong type; expected {want}")
    if err.validator == "oneOf":
        keys = [k for option in schema["oneOf"] for k in option.get("required", [])]
        if keys:
            return ConfigError(at(path), f"give exactly one of: {', '.join(keys)}")
    if err.validator == "anyOf":
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        want = _describe(options[0]) if options else "null"
        return ConfigError(at(path), f"{err.instance!r} is not valid; expected {want}{' or null' if nullable else ''}")
    want = _describe(schema)
    return ConfigError(at(path), f"{err.instance!r} is not valid: expected {want}" if want else err.message)


def _describe(schema: dict) -> str:
    """'number > 0', 'integer >= 1', ...: what a schema node accepts."""
    kind = schema.get("type")
    bounds = [
        f"{sym} {schema[key]}"
        for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in schema
    ]
    if kind == "object" and "properties" in schema:
        return "a mapping with keys " + ", ".join(sorted(schema["properties"]))
    if kind is None and not bounds:
        return ""
    return f"{kind or 'value'}" + (f" {' and '.join(bounds)}" if bounds else "")
