"""Mutation operators of the fuzz test and campaign (tests/test_fuzz.py,
tools/fuzz_campaign.py): pure functions from a seeded ``random.Random`` and
the original text or bytes to a mutant, and the name of what was done.

Nothing here reads or writes files; the callers write mutants only into
temporary folders.

    rng = random.Random(7)
    text, steps = mutate_text(rng, original_prototxt)       # steps: ["number 'dim: 192' -> 0"]
    data, steps = mutate_bytes(rng, original_bytes)

The structure-aware operators of .npz and .caffemodel files are in
tools/fuzz_binary.py.

The operators aim at what a careless or hostile user produces: values at
the edges of their types (0, -1, 2^31, 2^63, NaN, Inf), huge sizes, names
that point elsewhere, deleted and duplicated blocks, truncation, bit flips,
dtypes and shapes a file should not hold, and headers that lie.
"""
import re

__all__ = ["mutate_text", "mutate_bytes", "INTERESTING_NUMBERS"]

#: Numbers at the edges of the types the schema uses (and a few sizes that
#: make a layer's output huge or empty).
INTERESTING_NUMBERS = (
    "0", "-1", "1", "2", "3", "7", "255", "256", "1000", "30000", "65535", "-0.5", "0.5",
    "2147483647", "2147483648", "-2147483648", "4294967295", "4294967296",
    "9223372036854775807", "9223372036854775808", "18446744073709551616",
    "1e30", "1e308", "-1e308", "1e-45", "1e-300", "nan", "inf", "-inf")

#: Replacement strings: other names, empty, long, paths leaving a folder.
INTERESTING_STRINGS = ('""', '"x"', '"' + "a" * 300 + '"', '"../../../../etc/passwd"',
                       '"conv1"', '"data"', '"Convolution"', '"Pooling"', '"Python"',
                       '"\\u00e9t\\u00e9"', '"\\000"', '"rfcn_tiny.prototxt"', '"loss"')

#: Enum words: the schema's and some it does not have.
INTERESTING_ENUMS = ("MAX", "AVE", "STOCHASTIC", "SUM", "PROD", "TRAIN", "TEST", "CAFFE",
                     "CUDNN", "FULL", "VALID", "BATCH_SIZE", "NONE", "FOO", "true", "false")

_NUMBER = re.compile(r"(?<![\w.\"-])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.\"])")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_ENUM = re.compile(r"(?<=:\s)[A-Z][A-Z0-9_]+\b|(?<=:)(?:true|false)\b|(?<=:\s)(?:true|false)\b")
_FIELD = re.compile(r"\b([a-z_][a-z0-9_]*)(?=\s*[:{])")
_CHARS = ("{", "}", ":", '"', "#", "\n", "\\", " ", "0", "9", "-", ".", "e", "\x00", "\xff",
          "[", "]", "<", ";")


def _pick_span(rng, pattern, text):
    spans = [m.span() for m in pattern.finditer(text)]
    return rng.choice(spans) if spans else None


def _replace_span(text, span, value):
    return text[:span[0]] + value + text[span[1]:]


def _number(rng, text):
    span = _pick_span(rng, _NUMBER, text)
    if span is None:
        return None
    old = text[span[0]:span[1]]
    if rng.random() < 0.25 and old.lstrip("-").isdigit():
        value = str(int(old) * rng.choice((-1, 2, 10, 1000, 10 ** 6)) + rng.choice((-1, 0, 1)))
    else:
        value = rng.choice(INTERESTING_NUMBERS)
    return _replace_span(text, span, value), f"number {old} -> {value}"


def _token(pattern, choices, what):
    def mutate(rng, text):
        span = _pick_span(rng, pattern, text)
        if span is None:
            return None
        old = text[span[0]:span[1]]
        others = [m.group(0) for m in pattern.finditer(text)]
        value = rng.choice(others) if rng.random() < 0.4 else rng.choice(choices)
        if value == old and len(old) > 2:
            value = old[:-2] + old[-1]            # a typo: drop a character
        return _replace_span(text, span, value), f"{what} {old[:40]} -> {value[:40]}"
    return mutate


def _field_name(rng, text):
    spans = [m.span(1) for m in _FIELD.finditer(text)]
    if not spans:
        return None
    span = rng.choice(spans)
    old = text[span[0]:span[1]]
    value = text[slice(*rng.choice(spans))]
    if value == old:
        value = old + "s"
    return _replace_span(text, span, value), f"field {old} -> {value}"


def _lines(rng, text):
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    op = rng.choice(("delete", "duplicate", "swap", "move"))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "swap" and i + 1 < len(lines):
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    else:
        lines.insert(rng.randrange(len(lines) + 1), lines.pop(i))
    return "\n".join(lines), f"{op} line {i + 1}"


def _blocks(text):
    """(start, end) of each top-level ``word { ... }`` block."""
    spans, depth, start = [], 0, None
    for m in re.finditer(r"[A-Za-z_]+\s*\{|\}", text):
        if m.group(0) != "}":
            if depth == 0:
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                spans.append((start, m.end()))
    return spans


def _block(rng, text):
    spans = _blocks(text)
    if not spans:
        return None
    i = rng.randrange(len(spans))
    start, end = spans[i]
    op = rng.choice(("delete", "duplicate", "swap", "unclose"))
    if op == "delete":
        return text[:start] + text[end:], f"delete block {i}"
    if op == "duplicate":
        return text[:end] + "\n" + text[start:end] + text[end:], f"duplicate block {i}"
    if op == "unclose":
        return text[:end - 1] + text[end:], f"unclose block {i}"
    j = rng.randrange(len(spans))
    (a, b), (c, d) = sorted((spans[i], spans[j]))
    if (a, b) == (c, d):
        return None
    return (text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:],
            f"swap blocks {i} and {j}")


def _chars(rng, text):
    i = rng.randrange(len(text) + 1)
    op = rng.choice(("insert", "delete", "truncate"))
    if op == "insert":
        char = rng.choice(_CHARS)
        return text[:i] + char + text[i:], f"insert {char!r} at {i}"
    if op == "delete":
        return text[:i] + text[i + 1:], f"delete char at {i}"
    return text[:i], f"truncate at {i}"


_TEXT_OPERATORS = (
    (_number, 5),
    (_token(_STRING, INTERESTING_STRINGS, "string"), 2),
    (_token(_ENUM, INTERESTING_ENUMS, "enum"), 1),
    (_field_name, 1),
    (_lines, 2),
    (_block, 2),
    (_chars, 1),
)


#: Operators that change a value and keep the syntax: a mutant of these
#: alone usually parses, and reaches the layers' own checks.
_VALUE_OPERATORS = _TEXT_OPERATORS[:3]


def mutate_text(rng, text, max_steps=3):
    """``(mutant, steps)``: 1 to ``max_steps`` operators applied to ``text``
    (in 40% of the mutants only operators that change values)."""
    chosen = _VALUE_OPERATORS if rng.random() < 0.4 else _TEXT_OPERATORS
    operators = [op for op, weight in chosen for _ in range(weight)]
    steps = []
    for _ in range(rng.randint(1, max_steps)):
        for _attempt in range(5):
            result = rng.choice(operators)(rng, text)
            if result is not None:
                text, step = result
                steps.append(step)
                break
    return text, steps


# -- raw bytes ----------------------------------------------------------------------------

_BYTES = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\xff\xff\xff\xff", b"\xff" * 8,
          b"\x00" * 8, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")


def mutate_bytes(rng, data, max_steps=3):
    """``(mutant, steps)``: bit flips, byte overwrites, insertions, deletions,
    duplicated chunks and truncation, anywhere in ``data``."""
    data = bytearray(data)
    steps = []
    for _ in range(rng.randint(1, max_steps)):
        i = rng.randrange(len(data) + 1)
        op = rng.choice(("flip", "flip", "overwrite", "insert", "delete", "chunk", "truncate"))
        if op == "flip" and i < len(data):
            bit = rng.randrange(8)
            data[i] ^= 1 << bit
            steps.append(f"flip bit {bit} of byte {i}")
        elif op == "overwrite":
            value = rng.choice(_BYTES)
            data[i:i + len(value)] = value
            steps.append(f"overwrite {value.hex()} at {i}")
        elif op == "insert":
            value = rng.choice(_BYTES)
            data[i:i] = value
            steps.append(f"insert {value.hex()} at {i}")
        elif op == "delete":
            n = rng.randint(1, 16)
            del data[i:i + n]
            steps.append(f"delete {n} bytes at {i}")
        elif op == "chunk":
            n = rng.randint(1, 64)
            data[i:i] = data[i:i + n]
            steps.append(f"duplicate {n} bytes at {i}")
        else:
            del data[i:]
            steps.append(f"truncate at {i}")
    return bytes(data), steps
