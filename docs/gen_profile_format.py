"""Generate docs/profile-format.md from schemas/profile.schema.json.

    python3 docs/gen_profile_format.py           # rewrite docs/profile-format.md
    python3 docs/gen_profile_format.py --check   # exit 1 when the checked-in file is stale

Every field of the schema becomes one table row: its JSON path, type, whether it is required, and what it means.
Types, requirement and constraints come from the schema; meanings come from the schema's ``description`` where it
has one, else from ``MEANINGS`` below.  The generator fails when a field has no meaning or ``MEANINGS`` names a field
the schema no longer has, so the doc cannot silently drift from the contract (tests/test_profile_format_doc.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "profile.schema.json"
OUTPUT = ROOT / "docs" / "profile-format.md"

# Defs that are a value, not a structure: shown inline as a type instead of being expanded into rows.
INLINE_DEFS = {"dtype", "shape", "nullable_number", "speedup", "verdict"}

MEANINGS = {
    "schema_version": "Version of this format; readers accept 1.0 and 1.1 and refuse others.",
    "kind": "Always `fxfusion.profile`; `fxfusion validate` picks the schema by this field.",
    "metadata": "How, where and when the profile was measured.",
    "metadata.hardware": "Hardware registry name given to `--hardware` (or a custom name used with `--peak-*`).",
    "metadata.device": "The torch device measured.",
    "metadata.device_name": "The device's own name (CPU model or GPU name).",
    "metadata.torch_version": "`torch.__version__` during calibration.",
    "metadata.triton_version": "`triton.__version__`, or null when Triton is not installed.",
    "metadata.fxfusion_version": "fxfusion version that wrote the file.",
    "metadata.python_version": "Python version during calibration.",
    "metadata.threads": "`torch.get_num_threads()` during calibration.",
    "metadata.date": "When the profile was written (UTC, ISO 8601).",
    "metadata.command": "The command line that produced the profile.",
    "metadata.host": "Host name of the machine.",
    "metadata.quick": "Whether `--quick` was given.",
    "metadata.tf32": "TF32 switches at calibration time; they decide which float32 peak applies on NVIDIA GPUs.",
    "metadata.tf32.matmul": "`torch.backends.cuda.matmul.allow_tf32`.",
    "metadata.tf32.cudnn": "`torch.backends.cudnn.allow_tf32`.",
    "metadata.timing": "The timing method and the statistics settings the verdicts were made with.",
    "metadata.timing.method": "How samples were taken (CPU: perf_counter over batches; CUDA: events per call).",
    "metadata.timing.rounds": "Rounds of the timing spec (samples per variant, unless the time budget ran out).",
    "metadata.timing.confidence": "Confidence of the bootstrap intervals (0.95).",
    "metadata.timing.min_effect": "Half-width of the neutral zone around 1x (0.02).",
    "metadata.warnings": "Warnings about the run, e.g. the registry entry does not match the detected device.",
    "metadata.unknown": "Names the run did not recognise (allowed by the schema; not written by the current "
                        "calibrate).",
    "hardware": "The theoretical peaks used for the roofline, and where they come from.",
    "hardware.name": "Registry name.",
    "hardware.device": "Device type the peaks describe.",
    "hardware.peak_gflops": "Dense peak GFLOP/s by dtype name (`tf32` too, for NVIDIA GPUs).",
    "hardware.peak_gflops.<key>": "Peak GFLOP/s for that dtype.",
    "hardware.peak_bandwidth_gbs": "Peak memory bandwidth, GB/s.",
    "hardware.source": "Where the peak figures come from (datasheet, derivation, or 'nominal').",
    "ceilings": "What this machine actually reaches: matmul throughput and copy bandwidth.",
    "ceilings.matmul": "One row per (size, dtype) of square matmuls timed.",
    "ceilings.matmul[].n": "Matrix size: an n x n by n x n matmul, 2n^3 FLOPs.",
    "ceilings.matmul[].dtype": "Dtype of the matmul.",
    "ceilings.matmul[].median_ms": "Median time of one matmul.",
    "ceilings.matmul[].gflops": "2n^3 / median time.",
    "ceilings.matmul[].efficiency": "gflops / the datasheet peak for that dtype (can exceed 1 with nominal peaks).",
    "ceilings.bandwidth": "One row per tensor size copied.",
    "ceilings.bandwidth[].bytes": "Size of the copied tensor in bytes.",
    "ceilings.bandwidth[].median_ms": "Median time of one copy.",
    "ceilings.bandwidth[].gbs": "2 x bytes / median time (read + write, as STREAM's copy counts).",
    "ceilings.bandwidth[].efficiency": "gbs / the datasheet bandwidth.",
    "ceilings.best_gflops": "Best measured matmul GFLOP/s by dtype: the measured compute roof.",
    "ceilings.best_gflops.<key>": "Best GFLOP/s for that dtype.",
    "ceilings.best_gbs": "Best measured copy GB/s: the measured memory roof (null when ceilings were skipped).",
    "entries": "One entry per measured (pattern, shape, dtype).",
    "entries[].pattern": "Pattern registry name, e.g. `linear_bias_relu`.",
    "entries[].family": "Pattern family.",
    "entries[].title": "Human name of the pattern, e.g. `Linear+Bias+ReLU`.",
    "entries[].shape": "The pattern's shape keys and their values, e.g. `{M, K, N}`.",
    "entries[].dtype": "Dtype of inputs and parameters.",
    "entries[].device": "Device the entry was measured on.",
    "entries[].flops": "FLOPs per call from the pattern's analytic cost model.",
    "entries[].bytes_unfused": "Bytes moved per call when every op reads its inputs and writes its output.",
    "entries[].bytes_fused": "Bytes moved per call when intermediates never reach memory.",
    "entries[].memory_reduction": "1 - bytes_fused / bytes_unfused.",
    "entries[].roofline": "Times the roofline model predicts for this problem.",
    "entries[].roofline.unfused_ms": "max(flops / peak GFLOP/s, bytes_unfused / peak GB/s), datasheet peaks.",
    "entries[].roofline.fused_ms": "The same with bytes_fused.",
    "entries[].roofline.bound": "`compute` when flops / peak GFLOP/s exceeds bytes_fused / peak GB/s, else "
                                "`memory`.",
    "entries[].roofline.peak_gflops": "The GFLOP/s peak used (the TF32 one when TF32 applies).",
    "entries[].roofline.peak_gbs": "The bandwidth peak used.",
    "entries[].roofline.basis": "Which peaks the prediction used.",
    "entries[].roofline.measured_unfused_ms": "unfused_ms with the measured ceilings instead (null without them).",
    "entries[].roofline.measured_fused_ms": "fused_ms with the measured ceilings instead (null without them).",
    "entries[].variants": "Eager first, then each manual variant and each compile mode asked for, whether it ran "
                           "or not.",
    "entries[].variants[].name": "Variant name, e.g. `eager`, `addmm`, `bn_folded`, `sdpa`, `compile`.",
    "entries[].variants[].kind": "`eager` (the unfused ops), `manual` (a hand fusion) or `compile` "
                                 "(torch.compile).",
    "entries[].variants[].status": "`ok` when timed; otherwise why not: failed the correctness gate "
                                   "(`incorrect`), launches no fewer kernels than eager (`not_a_fusion`), cannot run "
                                   "here (`unsupported`) or raised (`failed`).",
    "entries[].variants[].reason": "One line saying why, when status is not `ok`.",
    "entries[].variants[].note": "What the variant fuses.",
    "entries[].variants[].samples_ms": "The raw samples of the isolated regime: milliseconds per call, one per "
                                       "round (a 1.0 profile's one regime; `pipelined` holds the other).",
    "entries[].variants[].calls_per_sample": "Calls timed together in one sample (1 in the isolated regime).",
    "entries[].variants[].median_ms": "Median of samples_ms.",
    "entries[].variants[].iqr_ms": "Interquartile range of samples_ms.",
    "entries[].variants[].noisy": "IQR / median above 10%.",
    "entries[].variants[].speedup": "median(eager) / median(this variant), isolated regime, with its 95% "
                                    "bootstrap interval; null for eager and variants not timed.",
    "entries[].variants[].verdict": "This variant's verdict in the isolated regime, from its interval (see "
                                    "docs/decisions.md); null for eager.",
    "entries[].variants[].compile_s": "Compilation time of a compile variant, seconds.",
    "entries[].variants[].kernels_per_call": "Kernels (CUDA) or work-doing aten ops (CPU) launched per call.",
    "entries[].variants[].kernel_unit": "What kernels_per_call counts.",
    "entries[].variants[].kernel_names": "Names of what was launched.",
    "entries[].variants[].device_ms": "Device time per call from the profiler (CUDA).",
    "entries[].variants[].host_overhead_ms": "median_ms - device_ms, floored at 0.",
    "entries[].variants[].rel_error": "Relative error against the float64 reference.",
    "entries[].variants[].tolerance": "The dtype's tolerance the error was checked against.",
    "entries[].variants[].gflops": "flops / median time.",
    "entries[].variants[].gbs": "Bytes / median time: bytes_unfused for eager, bytes_fused for fused variants.",
    "entries[].variants[].pct_of_roofline": "100 x predicted roofline time (unfused_ms for eager, fused_ms "
                                            "otherwise) / median_ms.",
    "entries[].variants[].details": "Variant-specific facts, e.g. the SDPA backend or a profiler error.",
    "entries[].decision": "The entry's decision in the isolated regime (a 1.0 profile's one regime): the best "
                          "correct variant and a verdict from its interval.",
    "entries[].decision.pattern": "Same as the entry's.",
    "entries[].decision.shape": "Same as the entry's.",
    "entries[].decision.dtype": "Same as the entry's.",
    "entries[].decision.device": "Same as the entry's.",
    "entries[].decision.verdict": "`fuse`, `neutral` or `avoid` (see docs/decisions.md). `neutral` with a null "
                                  "`speedup` means no fused variant ran here (nothing was timed against eager): "
                                  "tables show it as `undecided`.",
    "entries[].decision.best_variant": "The variant to use; `eager` when nothing beats it.",
    "entries[].decision.speedup": "The best variant's speedup over eager with its 95% interval; null when no fused "
                                  "variant was timed.",
    "entries[].decision.reason": "The decision in one sentence, with the numbers.",
    "entries[].decision.measured_shape": "The shape that was measured (for a lookup: the nearest one).",
    "entries[].decision.distance": "Log-shape distance from the measured shape; 0 in a profile.",
    "entries[].decision.exact": "distance == 0.",
    "entries[].decision.warnings": "Warnings of a lookup, e.g. an extrapolation far from any measured shape.",
    "entries[].extra": "Pattern-specific facts, e.g. heads and head_dim of attention.",
}


def _resolve(schema: dict, node: dict) -> tuple[str | None, dict]:
    ref = node.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[1]
        return name, schema["$defs"][name]
    return None, node


def type_text(schema: dict, node: dict) -> str:
    """A short human type: `number >= 0`, `string or null`, one of `a`, `b`..."""
    name, node = _resolve(schema, node)
    if name in INLINE_DEFS:
        inner = type_text(schema, node)
        return f"{name} ({inner})" if name in ("dtype", "verdict") else {
            "shape": "shape (object of name -> integer >= 1)", "nullable_number": "number or null",
            "speedup": "speedup ({median, ci_low, ci_high}, each > 0) or null"}[name]
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(type_text(schema, n) for n in node["oneOf"])
    types = node.get("type", "")
    text = " or ".join(types) if isinstance(types, list) else types
    bounds = [f"{op} {node[key]}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                  ("exclusiveMaximum", "<")) if key in node]
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    if "format" in node:
        bounds.append(node["format"])
    if "minLength" in node:
        bounds.append(f"at least {node['minLength']} character(s)")
    if text == "array" and "items" in node:
        item_name, item = _resolve(schema, node["items"])
        inner = type_text(schema, node["items"]) if (item_name in INLINE_DEFS or item.get("type") != "object") \
            else "object"
        text = f"array of {inner}"
    if node.get("minItems"):
        bounds.append(f"at least {node['minItems']} item(s)")
    return " ".join(x for x in (text, ", ".join(bounds)) if x) or "any"


def fields(schema: dict, node: dict, path: str = "") -> Iterator[tuple[str, str, bool, str]]:
    """(path, type, required, schema description) for every field under ``node``, depth first, schema order."""
    name, node = _resolve(schema, node)
    if name in INLINE_DEFS:
        return
    required = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        _, resolved = _resolve(schema, child)
        yield child_path, type_text(schema, child), key in required, child.get("description", "")
        yield from fields(schema, child, child_path)
        if resolved.get("type") == "array" and "items" in resolved:
            item_name, item = _resolve(schema, resolved["items"])
            if item_name not in INLINE_DEFS and item.get("type") == "object":
                yield from fields(schema, resolved["items"], child_path + "[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and node.get("type") == "object" and "properties" not in node:
        yield f"{path}.<key>", type_text(schema, extra), False, extra.get("description", "")


def closed_objects(schema: dict, node: dict, path: str = "") -> Iterator[str]:
    """Paths of the objects below ``node`` whose schema says ``additionalProperties: false``."""
    name, node = _resolve(schema, node)
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        child_name, resolved = _resolve(schema, child)
        if resolved.get("type") == "array" and "items" in resolved:
            child_path += "[]"
            child_name, resolved = _resolve(schema, resolved["items"])
        if resolved.get("additionalProperties") is False:
            yield child_path
        if child_name not in INLINE_DEFS:
            yield from closed_objects(schema, resolved, child_path)


def conditions(schema: dict) -> list[str]:
    """The if/then rules of the schema, in words."""
    out = []
    for def_name, node in schema["$defs"].items():
        for rule in node.get("allOf", []):
            cond, then = rule["if"]["properties"], rule["then"]["properties"]
            (field_name, test), = cond.items()
            when = f"`{field_name}` is `{test['const']}`" if "const" in test else \
                f"`{field_name}` is not `{test['not']['const']}`"
            needs = "; ".join(f"`{k}` {type_text(schema, v)}" for k, v in then.items())
            out.append(f"In a {def_name}, when {when}: {needs}.")
    return out


HEADER = """# The profile format

<!-- Generated by docs/gen_profile_format.py from schemas/profile.schema.json: edit those, not this file.
     tests/test_profile_format_doc.py fails when this file is stale. -->

A profile is the JSON file `fxfusion calibrate` writes: the measured fusion results of one calibration run on one
device.  Its contract is [schemas/profile.schema.json](../schemas/profile.schema.json) (JSON Schema 2020-12);
every profile is validated against it when written and when loaded, and `fxfusion validate FILE` checks any file
against it, printing each error with its JSON path.  How the verdicts in it are made: [decisions.md](decisions.md).

Paths below use `[]` for "every item of the array" and `<key>` for "every key of the object".  "required" means the
key must be present (its value may still be null where the type allows it).
"""


def render(schema: dict | None = None) -> str:
    schema = schema or json.loads(SCHEMA.read_text())
    rows = list(fields(schema, schema))
    paths = {p for p, *_ in rows}
    missing = [p for p, _, _, desc in rows if not desc and p not in MEANINGS]
    stale = sorted(set(MEANINGS) - paths)
    if missing or stale:
        raise SystemExit(f"gen_profile_format: fields without a meaning: {missing}; meanings of no field: {stale}")
    lines = [HEADER, f"Top-level required keys: {', '.join(f'`{k}`' for k in schema['required'])}.", "",
             "| path | type | required | meaning |", "|---|---|---|---|"]
    for path, typ, required, desc in rows:
        meaning = desc or MEANINGS[path]
        cells = [f"`{path}`", typ, "yes" if required else "", meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Conditional rules", ""] + [f"- {c}" for c in conditions(schema)]
    closed = ["the top level"] + [f"`{p}`" for p in closed_objects(schema, schema)]
    lines += ["", "## Other keys", "", f"Objects that allow no keys beyond those listed: {', '.join(closed)}. "
              "Every other object may carry more keys (calibrate writes `metadata.timing.size_set`, the size set of "
              "the run); the loader keeps them, except in `entries[].decision`, where it rejects unknown keys "
              "although the schema allows them (`fxfusion validate` reports such a file as not loading).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python3 docs/gen_profile_format.py", file=sys.stderr)
            return 1
        return 0
    sys.path.insert(0, str(ROOT))
    from fxfusion.profiles.schema import atomic_write_text

    atomic_write_text(OUTPUT, text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
