"""py-faster-rcnn / py-R-FCN ``type: "Python"`` layers, read without Python.

Their prototxts declare layers such as::

    layer { type: "Python" name: "rpn-data" ...
            python_param { module: "rpn.anchor_target_layer"
                           layer: "AnchorTargetLayer"
                           param_str: "'feat_stride': 16" } }

``layers.base.register_python`` maps each (module, layer) pair onto a native
class (the decorators sit on the classes in layers/anchor_target.py,
layers/proposal.py, layers/proposal_target.py, layers/roi_data.py). The
native layer then reads its settings with ``layer_settings``: from its
typed parameter message (``anchor_target_param`` ...) when the type is its
own, or, for type "Python", from ``param_str``, which is parsed as a
literal and never evaluated (``parse_param_str``). The keys of
``param_str`` are the field names of the typed message (``feat_stride``,
``scales``, ``num_classes``, and also every other field, e.g.
``'batch_size': -1``); an unknown key is an error that lists the accepted
ones.

The reference data layer ``roi_data_layer.layer.RoIDataLayer`` maps onto
the native ``RoIData`` layer (layers/roi_data.py), reading
``'num_classes'`` (and any other ``roi_data_param`` key) from
``param_str``. Its images come from a dataset that a prototxt cannot name:
the net builds with the reference top shapes, the trainer
(``python -m solver.train``) hands the layer its dataset, and a forward
without one raises a ``NetDefinitionError`` that says so.
"""
import ast

MAX_PARAM_STR = 10000
_YAML_WORDS = {"true": True, "false": False, "null": None, "~": None,
               "True": True, "False": False, "None": None}
# YAML tags seen in py-faster-rcnn prototxts ("'scales': !!python/tuple
# [8, 16, 32]"): each names a conversion of the literal that follows.
_YAML_TAGS = {"!!python/tuple": tuple, "!!python/list": list, "!!int": int,
              "!!float": float, "!!str": str}


class ParamStrError(ValueError):
    """``param_str`` is not a dictionary literal (message says why)."""


def parse_param_str(text):
    """The dictionary written in a ``param_str``.

    Accepted: a Python dict literal with or without its braces
    (``"'feat_stride': 16, 'scales': (8, 16, 32)"``), or the YAML-like
    ``key: value`` form the reference files also allow (``"feat_stride: 16"``,
    one entry per comma or line, a written ``\\n`` counting as a line break;
    values are literals, ``true``/``false``, plain words taken as strings,
    or literals after the tags ``!!python/tuple``, ``!!python/list``,
    ``!!int``, ``!!float``, ``!!str``). Nothing is evaluated: literals go
    through ``ast.literal_eval``. Raises ``ParamStrError``.
    """
    text = (text or "").strip()
    if not text:
        return {}
    if len(text) > MAX_PARAM_STR:
        raise ParamStrError(f"it is {len(text)} characters long (at most {MAX_PARAM_STR})")
    body = text if text.startswith("{") else "{" + text + "}"
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = _parse_key_values(text[1:-1] if text.startswith("{") and text.endswith("}") else text)
    if not isinstance(value, dict):
        raise ParamStrError(f"it is a {type(value).__name__}, not a dictionary")
    for key in value:
        if not isinstance(key, str):
            raise ParamStrError(f"key {key!r} is not a string")
    return value


def _split_top_level(text):
    """Split at commas and newlines outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in ",\n" and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quote or depth:
        raise ParamStrError("it has an unclosed quote or bracket")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _parse_key_values(text):
    result = {}
    for entry in _split_top_level(text.replace("\\n", "\n")):
        key, sep, raw = entry.partition(":")
        if not sep:
            raise ParamStrError(f"entry {entry!r} is not 'key: value'")
        key, raw = key.strip(), raw.strip()
        if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
            key = key[1:-1]
        if not key.isidentifier():
            raise ParamStrError(f"key {key!r} is not a name")
        convert = None
        if raw.startswith("!!"):
            tag, _, raw = raw.partition(" ")
            if tag not in _YAML_TAGS:
                raise ParamStrError(f"YAML tag {tag!r} of {key!r} is not one of "
                                    f"{', '.join(sorted(_YAML_TAGS))}")
            convert, raw = _YAML_TAGS[tag], raw.strip()
        value = _scalar(key, raw)
        try:
            result[key] = convert(value) if convert else value
        except (TypeError, ValueError) as exc:
            raise ParamStrError(f"value {raw!r} of {key!r}: {exc}") from None
    return result


def _scalar(key, raw):
    if raw in _YAML_WORDS:
        return _YAML_WORDS[raw]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if not raw or any(c in raw for c in "()[]{}'\""):
            raise ParamStrError(f"value {raw!r} of {key!r} is not a literal") from None
        return raw


def layer_settings(layer, field_name):
    """The settings message of ``layer``: ``layer.param.<field_name>``, or for
    type "Python" a message of the same class filled from ``param_str``.

    Errors (``NetDefinitionError``) name the layer, the text and the key.
    """
    param = layer.param
    typed = getattr(param, field_name)
    if param.type != "Python":
        return typed
    text = param.python_param.param_str
    try:
        values = parse_param_str(text)
    except ParamStrError as exc:
        raise layer.definition_error(
            f"python_param.param_str {text!r} is not a dictionary literal: {exc}") from None
    message = type(typed)()
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        if key not in fields:
            raise layer.definition_error(
                f"python_param.param_str key {key!r} is not a setting of "
                f"{param.python_param.module}.{param.python_param.layer} "
                f"(accepted: {', '.join(sorted(fields))})")
        try:
            if fields[key].is_repeated:
                items = value if isinstance(value, (list, tuple)) else [value]
                getattr(message, key).extend(items)
            else:
                setattr(message, key, value)
        except (TypeError, ValueError) as exc:
            raise layer.definition_error(
                f"python_param.param_str key {key!r}: value {value!r} does not fit "
                f"{field_name}.{key} ({exc})") from None
    return message


def field_or_default(message, name, default):
    """``message.<name>`` for a repeated field, or ``default`` when empty."""
    values = tuple(getattr(message, name))
    return values if values else tuple(default)
