"""Bytes each device sends into collectives per step, read from a compiled program's HLO text.

For every collective instruction (all-gather, reduce-scatter, all-reduce, all-to-all, ragged
all-to-all, collective-permute; the ``-start`` half of async pairs) the sizes of its operands
are summed, and multiplied by how often its computation runs: a ``while`` body by the loop's
trip count (scanned layers), other called computations once per call. The result is per device,
since an SPMD program is the program of one device. Operands are sized from their inline types
or, as the TPU compiler prints them (bare ``%names``), from their defining instructions; the
trip count is the loop's ``known_trip_count`` or else the integer bound its condition compares
the counter against (``compare(%i, %constant), direction=LT``: JAX loops count from 0 by 1).
A ragged all-to-all counts the smaller of its first two operands, the send and the receive
buffers (its other four are offsets and sizes). The rows it really sends depend on the routing;
both buffers are static bounds, one of them worst-case: dropless expert parallelism receives
into P chunk bounds and sends those back. Every device runs the same shapes and the rows sent
equal the rows received, so the mean bytes a device sends are at most the smaller buffer.
Counting every operand overstated a dropless EP layer five-fold (d512-E8-k2 on expert 8: 2T
rows sent into an 8T-row buffer, then 8T sent back into 2T).

  collective_bytes(compiled.as_text()) -> {"all-gather": ..., "all-to-all": ..., "total": ...}
"""

from __future__ import annotations

import collections
import re

KINDS = ("all-to-all", "all-gather", "reduce-scatter", "all-reduce", "collective-permute")
_OPCODES = {**{k: k for k in KINDS}, **{f"{k}-start": k for k in KINDS},
            "ragged-all-to-all": "all-to-all"}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) +
                    r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|branch_computations)="
                     r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP = re.compile(r"known_trip_count[\"=:{\s]*n[\"=:\s]*\"?(\d+)")


def _closing(text: str, start: int) -> int:
  """Index of the parenthesis closing the one at ``start``."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i
  return len(text) - 1


def _instruction(line: str) -> tuple[str, str, str, str, str] | None:
  """(name, result type, opcode, operand text, attribute text) of an instruction line."""
  if " = " not in line:
    return None
  name, rest = line.split(" = ", 1)
  name = name.replace("ROOT", "").strip().lstrip("%")
  rest = rest.lstrip()
  end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.find(" ")
  match = re.match(r"\s*([a-z][\w\-]*)\(", rest[end:]) if end >= 0 else None
  if not match:
    return None
  open_at = end + match.end() - 1
  close_at = _closing(rest, open_at)
  return name, rest[:end], match.group(1), rest[open_at + 1:close_at], rest[close_at + 1:]


def _shape_bytes(text: str) -> float:
  total = 0.0
  for dtype, dims in _SHAPE.findall(text):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * _DTYPE_BYTES[dtype]
  return total


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  """{name: instruction lines} and the entry computation's name."""
  comps, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line) if line and not line[0].isspace() else None
    if header:
      current = header.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      comps[current].append(line)
  return comps, entry


def _trip_count(attrs: str, condition: list[str]) -> int:
  known = _TRIP.search(attrs)
  if known:
    return int(known.group(1))
  bounds = [int(c) for line in condition for c in re.findall(r"constant\((\d+)\)", line)]
  compares = any("compare(" in line and "direction=LT" in line for line in condition)
  return max(bounds) if bounds and compares else 1


def _split_operands(operands: str) -> list[str]:
  """The operand texts, split at the commas outside brackets, braces and parentheses."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(operands):
    depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      parts.append(operands[start:i])
      start = i + 1
  return parts + [operands[start:]]


def _operand_bytes(operands: str, types: dict[str, str], ragged: bool = False) -> float:
  if ragged:  # the smaller of the send and the receive buffer (module docstring)
    send, receive = _split_operands(operands)[:2]
    return min(_operand_bytes(send, types), _operand_bytes(receive, types))
  if _SHAPE.search(operands):
    return _shape_bytes(operands)
  return sum(_shape_bytes(types.get(name, "")) for name in re.findall(r"%([\w.\-]+)", operands))


def collective_bytes(hlo_text: str) -> dict[str, float]:
  """Operand bytes per device per execution, by collective kind, plus ``total``."""
  comps, entry = _computations(hlo_text)
  parsed = {name: [p for p in map(_instruction, lines) if p] for name, lines in comps.items()}
  runs = collections.Counter()

  def visit(name: str, times: float, depth: int = 0):
    if name not in parsed or depth > 64:
      return
    runs[name] += times
    for _, _, opcode, _, attrs in parsed[name]:
      callees = dict(_CALLEE.findall(attrs))
      for key, value in callees.items():
        repeat = 1
        if opcode == "while" and key == "body":
          repeat = _trip_count(attrs, comps.get(callees.get("condition", "").lstrip("%"), []))
        for callee in re.findall(r"%?([\w.\-]+)", value):
          visit(callee, times * repeat, depth + 1)

  visit(entry, 1)
  out = {kind: 0.0 for kind in KINDS}
  for name, times in runs.items():
    types = {n: t for n, t, *_ in parsed[name]}
    for _, _, opcode, operands, _ in parsed[name]:
      if opcode in _OPCODES:
        kind = _OPCODES[opcode]
        if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
          kind = "reduce-scatter"  # XLA:TPU's reduce-scatter: all-reduce + slice, one fusion
        out[kind] += times * _operand_bytes(operands, types, opcode == "ragged-all-to-all")
  out["total"] = sum(out.values())
  return out
