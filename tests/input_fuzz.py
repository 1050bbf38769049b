"""A seeded generator of bad input for every entry point (used by tests/test_input_fuzzer.py).

Each case is invalid by construction: it mutates a shipped config, target train config or sweep
file, or a command line, in a way no valid input looks like. The kinds of mutation:

- keys: drop a required key, repeat a key (top level and nested), misspell a key, nest a key
  in the wrong block;
- values: wrong type, out of range, non-finite, too large (past int64, or a batch that cannot
  fit in memory), empty, unicode where only a fixed vocabulary is accepted;
- file content: truncated before the required keys, binary / not UTF-8, NUL bytes, not a
  mapping, nested too deeply, a directory instead of a file;
- command lines of the decomposition scripts, spd-run, spd-report, spd-analyze, spd-browse,
  spd-config and the training scripts, every numeric option out of its range;
- files inside a run directory (checkpoint, analysis state, metrics, final config) damaged in
  each way above, planted with a payload, or replaced by a directory (`run_dir_cases`, from a
  real run's files);
- language-model data files, tokenizer and model directories (`lm_file_cases`);
- environment variables (`environment_cases`);
- concurrency: a run directory whose lock another process holds (`FuzzCase.locked`).

A case is `expect="error"` (exit 2, one line) unless a reader is meant to go on past the damage
(`expect="tolerated"`: exit 0 or 2, only `spd:` lines on stderr, no traceback).
"""

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel

from spd.experiments.resid_mlp.models import ResidMLPModelConfig
from spd.experiments.tms.models import TMSModelConfig
from tests.paths import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "spd" / "experiments"
SWEEP_EXAMPLE = REPO_ROOT / "spd" / "scripts" / "sweep_params.yaml.example"
TARGET_DIRS = {
    "tms": EXPERIMENTS / "tms" / "targets" / "tms_5-2",
    "resid_mlp": EXPERIMENTS / "resid_mlp" / "targets" / "resid_mlp1",
}
MODEL_CONFIG_CLASSES: dict[str, type[BaseModel]] = {
    "tms": TMSModelConfig,
    "resid_mlp": ResidMLPModelConfig,
}
BASE_CONFIGS = {
    "tms": EXPERIMENTS / "tms" / "tms_5_2_config.yaml",
    "resid_mlp": EXPERIMENTS / "resid_mlp" / "resid_mlp1_config.yaml",
}

# Placeholders in a case's argv / env, replaced by the runner: the case's own directory, and
# the path of a plain file in it (for "a file where a directory belongs").
CASE_DIR = "{case_dir}"
A_FILE = "{case_dir}/a_file.txt"

REQUIRED_KEYS = ("C", "target_module_patterns", "pretrained_model_class", "task_config")
# Text fields with a fixed vocabulary (any other text is wrong).
VOCABULARY_KEYS = (
    "device",
    "ci_fn_type",
    "sigmoid_type",
    "lr_schedule",
    "output_loss_type",
    "task_name",
    "data_generation_type",
)
# Sizes for which a huge (but int64) value makes the step too large for any machine.
SIZE_KEYS = ("batch_size", "eval_batch_size", "C")
WRONG_TYPES: tuple[Any, ...] = ({"zz_not_a_field": 1}, [[{}]])
NON_FINITE = (float("inf"), float("-inf"), float("nan"))
HUGE_INTS = (2**63, 10**30)
UNICODE = ("ünïcødé", "\u202eevil", "名前", "cpu\u0000")


@dataclass
class FuzzCase:
    """One bad input: an entry point, its command line, the files it needs and extra env."""

    name: str
    entry: str  # a script (tms, train_tms, ...), a console command (spd-run, ...) or load_config
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # name in the case dir -> content
    env: dict[str, str] = field(default_factory=dict)
    expect: Literal["error", "tolerated"] = "error"
    locked: str | None = None  # a directory in the case dir whose lock the runner holds


def shipped_configs() -> list[Path]:
    """Every decomposition config shipped with the package."""
    return sorted(p for p in EXPERIMENTS.glob("*/*_config.yaml"))


def shipped_target_configs() -> list[Path]:
    """Every train_config.yaml of a shipped target."""
    return sorted(EXPERIMENTS.glob("*/targets/*/train_config.yaml"))


def _entry_for(config: Path) -> str:
    return config.parent.name  # tms, resid_mlp or lm


def _dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def _leaves(
    data: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(path, value) of every scalar and list in a config mapping (metric entries excluded)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("metrics", "figures"):
                continue
            if isinstance(value, dict):
                yield from _leaves(value, (*path, key))
            else:
                yield (*path, key), value


def _set(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(data))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copy


def _misspell(key: str, rng: random.Random, known: set[str]) -> str:
    for _ in range(20):
        i = rng.randrange(len(key))
        how = rng.choice(["drop", "double", "swap", "case", "suffix"])
        if how == "drop" and len(key) > 1:
            candidate = key[:i] + key[i + 1 :]
        elif how == "double":
            candidate = key[:i] + key[i] + key[i:]
        elif how == "swap" and len(key) > 1:
            j = min(i + 1, len(key) - 1)
            chars = list(key)
            chars[i], chars[j] = chars[j], chars[i]
            candidate = "".join(chars)
        elif how == "case":
            candidate = key.upper() if key != key.upper() else key.lower()
        else:
            candidate = key + "s"
        if candidate not in known:
            return candidate
    return key + "_misspelt"


def _bad_values(key: str, value: Any, rng: random.Random, entry: str) -> list[tuple[str, Any]]:
    """(kind, value) mutations that no valid config accepts for this field."""
    out: list[tuple[str, Any]] = [("wrong type", v) for v in WRONG_TYPES]
    if isinstance(value, bool):
        out += [("wrong type", "maybe"), ("unicode", rng.choice(UNICODE))]
    elif isinstance(value, int | float):
        out += [("out of range", -1), ("out of range", -0.5)]
        out += [("non-finite", v) for v in NON_FINITE]
        out += [("huge", v) for v in HUGE_INTS]
        out += [("empty", ""), ("unicode", "１２")]
        if key in ("feature_probability",):
            out.append(("out of range", 1.5))
        if key in SIZE_KEYS and entry in ("tms", "resid_mlp"):
            out.append(("huge", 10**12))
    elif isinstance(value, str):
        if key in VOCABULARY_KEYS:
            out += [("unicode", rng.choice(UNICODE)), ("empty", "")]
        if key in ("pretrained_model_class",):
            out += [("empty", ""), ("unicode", "spd.ünï.Módel")]
    elif isinstance(value, list) and key == "target_module_patterns":
        out.append(("empty", []))
    return out


def config_cases(rng: random.Random, per_config: int) -> Iterator[FuzzCase]:
    """Mutations of every shipped decomposition config, through its own script."""
    for config in shipped_configs():
        entry = _entry_for(config)
        data = yaml.safe_load(config.read_text())
        text = config.read_text()
        known = set(data)
        cases: list[FuzzCase] = []

        def file_case(
            kind: str, content: bytes, entry: str = entry, source: str = config.name
        ) -> FuzzCase:
            return FuzzCase(
                f"{source}: {kind}", entry, [f"{CASE_DIR}/cfg.yaml"], {"cfg.yaml": content}
            )

        # --- keys
        for key in REQUIRED_KEYS:
            cases.append(
                file_case(
                    f"drop required '{key}'", _dump({k: v for k, v in data.items() if k != key})
                )
            )
        key = rng.choice(sorted(known))
        cases.append(
            file_case(
                f"repeat '{key}'", text.encode() + f"\n{key}: {json.dumps(data[key])}\n".encode()
            )
        )
        nested = yaml.safe_dump(data, sort_keys=False).replace(
            "task_config:\n", f"task_config:\n  task_name: {data['task_config']['task_name']}\n", 1
        )
        cases.append(file_case("repeat 'task_config.task_name'", nested.encode()))
        key = rng.choice(sorted(known))
        wrong = _misspell(key, rng, known)
        cases.append(
            file_case(
                f"misspell '{key}' as '{wrong}'",
                _dump({(wrong if k == key else k): v for k, v in data.items()}),
            )
        )
        task_key = rng.choice(sorted(set(data["task_config"]) - {"task_name"}) or ["task_name"])
        moved = {k: v for k, v in data.items()}
        moved["task_config"] = {k: v for k, v in data["task_config"].items() if k != task_key}
        moved[task_key] = data["task_config"][task_key]
        cases.append(file_case(f"'{task_key}' outside task_config", _dump(moved)))
        top_key = rng.choice(["lr", "steps", "seed", "C", "batch_size"])
        into = {k: v for k, v in data.items() if k != top_key}
        into["task_config"] = {**data["task_config"], top_key: data.get(top_key, 1)}
        cases.append(file_case(f"'{top_key}' inside task_config", _dump(into)))
        cases.append(
            file_case(
                f"'{top_key}' nested in itself",
                _dump({**data, top_key: {top_key: data.get(top_key, 1)}}),
            )
        )
        # --- values
        for path, value in _leaves(data):
            name = ".".join(str(p) for p in path)
            for kind, bad in _bad_values(str(path[-1]), value, rng, entry):
                if path[-1] == "C" and kind == "huge" and bad == 10**12 and entry == "lm":
                    continue
                cases.append(
                    file_case(f"{kind} value {bad!r} for '{name}'", _dump(_set(data, path, bad)))
                )
        # --- file content
        cut_before = text.index("pretrained_model_class")
        cut = rng.randrange(0, max(1, cut_before))
        cases.append(file_case(f"truncated at byte {cut}", text[:cut].encode()))
        cases.append(
            file_case("binary", bytes(rng.randrange(256) for _ in range(200)) + b"\xff\xfe")
        )
        at = rng.randrange(len(text))
        cases.append(
            file_case("one non-UTF-8 byte", text[:at].encode() + b"\xff" + text[at:].encode())
        )
        cases.append(file_case("NUL byte", text.encode() + b"\n\x00\n"))
        cases.append(file_case("a list, not a mapping", _dump([data])))
        cases.append(file_case("a scalar, not a mapping", b"42\n"))
        cases.append(file_case("empty file", b""))
        cases.append(file_case("nested too deeply", b"C: " + b"[" * 5000 + b"]" * 5000 + b"\n"))
        cases.append(file_case("YAML syntax error", text.encode() + b"\n  bad: [indent\n"))
        # The library boundary: load_config raises only SPDUserError for the same files; and
        # `spd-config upgrade` reads them through the same loader.
        for case in rng.sample(cases, k=min(4, len(cases))):
            cases.append(
                FuzzCase(case.name + " (load_config)", "load_config", case.argv, case.files)
            )
        for case in rng.sample(cases, k=min(3, len(cases))):
            cases.append(
                FuzzCase(
                    case.name + " (spd-config upgrade)",
                    "spd-config",
                    ["upgrade", *case.argv],
                    case.files,
                )
            )
        yield from rng.sample(cases, k=min(per_config, len(cases)))


def target_config_cases(rng: random.Random, per_file: int) -> Iterator[FuzzCase]:
    """Mutations of each shipped target's train_config.yaml, loaded through a decomposition run."""
    for train_config in shipped_target_configs():
        entry = train_config.parent.parent.parent.name
        if entry not in TARGET_DIRS:
            continue
        data = yaml.safe_load(train_config.read_text())
        text = train_config.read_text()
        target_files = {
            f"target/{p.name}": p.read_bytes()
            for p in train_config.parent.iterdir()
            if p.name != "train_config.yaml"
        }
        base = yaml.safe_load(BASE_CONFIGS[entry].read_text())
        model_keys = sorted(data["model"])
        variants: list[tuple[str, bytes]] = [
            ("repeat 'model'", text.encode() + b"\nmodel: {}\n"),
            ("drop 'model'", _dump({k: v for k, v in data.items() if k != "model"})),
            ("binary", b"\xff\xfe\x00model"),
            ("not a mapping", b"- 1\n- 2\n"),
            ("truncated", text[: text.index("model:") + 3].encode()),
        ]
        model_class = MODEL_CONFIG_CLASSES[entry]
        required = sorted(k for k, f in model_class.model_fields.items() if f.is_required())
        key = rng.choice(model_keys)
        variants.append(
            (
                f"misspell 'model.{key}'",
                _dump(
                    {
                        **data,
                        "model": {
                            (_misspell(key, rng, set(model_keys)) if k == key else k): v
                            for k, v in data["model"].items()
                        },
                    }
                ),
            )
        )
        key = rng.choice(required)
        variants.append(
            (
                f"drop required 'model.{key}'",
                _dump({**data, "model": {k: v for k, v in data["model"].items() if k != key}}),
            )
        )
        for path, value in _leaves({"model": data["model"]}):
            for kind, bad in _bad_values(str(path[-1]), value, rng, "target"):
                if kind == "huge" and bad == 10**12:
                    continue
                variants.append(
                    (
                        f"{kind} {bad!r} for '{'.'.join(map(str, path))}'",
                        _dump(_set(data, path, bad)),
                    )
                )
        for kind, content in rng.sample(variants, k=min(per_file, len(variants))):
            config = {**base, "pretrained_model_path": f"{CASE_DIR}/target", "device": "cpu"}
            files = {**target_files, "target/train_config.yaml": content, "cfg.yaml": _dump(config)}
            yield FuzzCase(
                f"{train_config.parent.name}/train_config.yaml: {kind}",
                entry,
                [f"{CASE_DIR}/cfg.yaml"],
                files,
            )


def sweep_cases(rng: random.Random, count: int) -> Iterator[FuzzCase]:
    """Mutations of the shipped sweep file, through `spd-run --sweep`."""
    data = yaml.safe_load(SWEEP_EXAMPLE.read_text())
    text = SWEEP_EXAMPLE.read_text()
    variants: list[tuple[str, bytes]] = [
        ("repeat 'global'", text.encode() + b"\nglobal:\n  seed: {values: [3]}\n"),
        (
            "repeat a parameter",
            text.replace(
                "  lr:\n    values: [0.001, 0.003]\n",
                "  lr:\n    values: [0.001, 0.003]\n  lr:\n    values: [0.1]\n",
                1,
            ).encode(),
        ),
        ("unknown block", _dump({**data, "tms_5_2": {"lr": {"values": [0.1]}}})),
        ("empty values", _dump({**data, "global": {"seed": {"values": []}}})),
        ("values not a list", _dump({**data, "global": {"seed": {"values": 3}}})),
        ("values beside another key", _dump({**data, "global": {"seed": {"values": [1], "x": 2}}})),
        ("parameter without values", _dump({**data, "global": {"seed": 3}})),
        ("block not a mapping", _dump({**data, "global": [1, 2]})),
        ("misspelt config key", _dump({**data, "global": {"lrr": {"values": [0.1]}}})),
        ("non-finite value", _dump({**data, "global": {"lr": {"values": [float("inf")]}}})),
        ("negative value", _dump({**data, "global": {"lr": {"values": [-1.0]}}})),
        ("wrong type value", _dump({**data, "global": {"seed": {"values": [{"a": 1}]}}})),
        ("huge value", _dump({**data, "global": {"seed": {"values": [2**70]}}})),
        ("unicode device", _dump({**data, "global": {"device": {"values": ["ċpu"]}}})),
        ("binary", b"\xff\xfe\x00global"),
        ("not a mapping", b"[1, 2]\n"),
        ("truncated", text[: text.index("values: [0, 1]") + 9].encode()),
        ("syntax error", text.encode() + b"\n  - [\n"),
    ]
    for kind, content in rng.sample(variants, k=min(count, len(variants))):
        yield FuzzCase(
            f"sweep file: {kind}",
            "spd-run",
            ["--experiments", "tms_5-2,tms_40-10", "--local", "--sweep", f"{CASE_DIR}/sweep.yaml"],
            {"sweep.yaml": content},
        )


def argument_cases(rng: random.Random) -> Iterator[FuzzCase]:
    """Bad command lines of every entry point."""
    tms_config = str(BASE_CONFIGS["tms"])
    decomposition = [
        ("unknown option", [tms_config, "--bogus"]),
        ("override without '='", [tms_config, "--override", "steps"]),
        ("override without key", [tms_config, "--override", "=5"]),
        ("override with bad YAML", [tms_config, "--override", "lr=[1,"]),
        ("override into a scalar", [tms_config, "--override", "C.x=1"]),
        ("override of an unknown key", [tms_config, "--override", "stepz=10"]),
        ("override non-finite", [tms_config, "--override", "lr=.nan"]),
        ("override unknown device", [tms_config, "--override", "device=gpu0"]),
        ("override CUDA index", [tms_config, "--override", "device=cuda:x"]),
        ("override nested wrongly", [tms_config, "--override", "task_config.lr=0.1"]),
        ("override empty run_name", [tms_config, "--override", "run_name=''"]),
        ("override run_name with '/'", [tms_config, "--override", "run_name=a/b"]),
        (
            "override class that fails to import",
            [tms_config, "--override", "pretrained_model_class=fuzz_broken_module.Model"],
        ),
        (
            "override missing target path",
            [tms_config, "--override", f"pretrained_model_path={CASE_DIR}/nowhere"],
        ),
        ("no config", []),
        ("config is a directory", [CASE_DIR]),
        ("config does not exist", [f"{CASE_DIR}/missing.yaml"]),
        ("two configs", [tms_config, tms_config]),
        ("resume a missing directory", ["--resume", f"{CASE_DIR}/missing"]),
        ("resume a file", ["--resume", A_FILE]),
        ("resume an empty directory", ["--resume", CASE_DIR]),
        ("resume and run-dir", [tms_config, "--resume", CASE_DIR, "--run-dir", CASE_DIR]),
        ("run-dir is a file", [tms_config, "--run-dir", A_FILE]),
        ("run-dir under a file", [tms_config, "--run-dir", f"{A_FILE}/run"]),
        ("batch too large for memory", [tms_config, "--override", "batch_size=1000000000000"]),
    ]
    broken_module = b"raise RuntimeError('this module is broken on import')\n"
    for name, argv in decomposition:
        files = {"a_file.txt": b"x", "fuzz_broken_module.py": broken_module}
        yield FuzzCase(f"tms script: {name}", "tms", argv, files)
    yield FuzzCase(
        "tms script: output root is a file",
        "tms",
        [tms_config],
        {"a_file.txt": b"x"},
        env={"SPD_OUT_DIR": A_FILE},
    )
    yield FuzzCase(
        "tms script: output root under a file",
        "tms",
        [tms_config],
        {"a_file.txt": b"x"},
        env={"SPD_OUT_DIR": f"{A_FILE}/out"},
    )
    spd_run = [
        ("empty name in list", ["--experiments", "tms_5-2,,tms_5-2-id", "--local"]),
        ("trailing comma", ["--experiments", "tms_5-2,", "--local"]),
        ("only a comma", ["--experiments", ",", "--local"]),
        ("empty list", ["--experiments", "", "--local"]),
        ("unknown experiment", ["--experiments", "tms_5_2", "--local"]),
        ("unicode experiment", ["--experiments", "tms_5-2,ünï", "--local"]),
        ("dp zero", ["--experiments", "tms_5-2", "--local", "--dp", "0"]),
        ("dp not a number", ["--experiments", "tms_5-2", "--local", "--dp", "two"]),
        ("n-agents zero", ["--experiments", "tms_5-2", "--local", "--n-agents", "0"]),
        ("nodes zero", ["--experiments", "tms_5-2", "--nodes", "0"]),
        ("several nodes here", ["--experiments", "tms_5-2", "--local", "--nodes", "2"]),
        ("bad job suffix", ["--experiments", "tms_5-2", "--local", "--job-suffix", "a b/c"]),
        (
            "missing sweep file",
            ["--experiments", "tms_5-2", "--local", "--sweep", f"{CASE_DIR}/none.yaml"],
        ),
        ("sweep file is a directory", ["--experiments", "tms_5-2", "--local", "--sweep", CASE_DIR]),
        ("bad override", ["--experiments", "tms_5-2", "--local", "--override", "lr"]),
        ("override non-finite", ["--experiments", "tms_5-2", "--local", "--override", "lr=.inf"]),
        ("resume a missing run", ["--resume", f"{CASE_DIR}/missing", "--local"]),
        ("resume without --local", ["--resume", CASE_DIR]),
        ("bad log format", ["--experiments", "tms_5-2", "--local", "--log-format", "loud"]),
        ("unknown option", ["--experiments", "tms_5-2", "--local", "--bogus"]),
    ]
    for name, argv in spd_run:
        yield FuzzCase(f"spd-run: {name}", "spd-run", argv, {"a_file.txt": b"x"})
    yield FuzzCase(
        "spd-run: output root is a file",
        "spd-run",
        ["--experiments", "tms_5-2", "--local"],
        {"a_file.txt": b"x"},
        env={"SPD_OUT_DIR": A_FILE},
    )
    report = [
        ("no directories", []),
        ("missing directory", [f"{CASE_DIR}/missing"]),
        ("a file", [A_FILE]),
        ("a folder without runs", [CASE_DIR]),
        ("unknown option", [CASE_DIR, "--bogus"]),
    ]
    for name, argv in report:
        yield FuzzCase(f"spd-report: {name}", "spd-report", argv, {"a_file.txt": b"x"})
    analyze = [
        ("missing run", [f"{CASE_DIR}/missing"]),
        ("a file", [A_FILE]),
        ("not a run", [CASE_DIR]),
        ("negative tokens", [CASE_DIR, "--tokens", "-5"]),
        ("non-finite threshold", [CASE_DIR, "--threshold", "nan"]),
        ("unknown device", [CASE_DIR, "--device", "gpu9"]),
        ("unknown split", [CASE_DIR, "--split", "validation"]),
    ]
    for name, argv in analyze:
        yield FuzzCase(f"spd-analyze: {name}", "spd-analyze", argv, {"a_file.txt": b"x"})
    for name, argv in analyze[:3]:
        yield FuzzCase(f"spd-browse: {name}", "spd-browse", argv, {"a_file.txt": b"x"})
    upgrade = [
        ("no command", []),
        ("unknown command", ["downgrade", A_FILE]),
        ("missing file", ["upgrade", f"{CASE_DIR}/missing.yaml"]),
        ("a directory", ["upgrade", CASE_DIR]),
        ("not a config", ["upgrade", A_FILE]),
    ]
    for name, argv in upgrade:
        yield FuzzCase(f"spd-config: {name}", "spd-config", argv, {"a_file.txt": b"x"})
    train = [
        ("unknown experiment", ["--experiment", "tms_5_2"]),
        ("negative seed", ["--experiment", "tms_5-2", "--seed", "-1"]),
        ("huge seed", ["--experiment", "tms_5-2", "--seed", str(2**40)]),
        ("zero steps", ["--experiment", "tms_5-2", "--steps", "0"]),
        ("steps not a number", ["--experiment", "tms_5-2", "--steps", "many"]),
        ("out is a file", ["--experiment", "tms_5-2", "--out", A_FILE]),
        ("negative retries", ["--experiment", "tms_5-2", "--retry-seeds", "-2"]),
    ]
    for name, argv in train:
        yield FuzzCase(f"train_tms: {name}", "train_tms", argv, {"a_file.txt": b"x"})
    for name, argv in train[:6]:
        argv = [a.replace("tms_5-2", "resid_mlp1").replace("tms_5_2", "resid_mlp_1") for a in argv]
        yield FuzzCase(f"train_resid_mlp: {name}", "train_resid_mlp", argv, {"a_file.txt": b"x"})
    _ = rng  # the argument cases are a fixed list; kept in the signature for symmetry


# --- files inside a run directory, LM files, environment variables, concurrency

# A payload: unpickling it would create this file in the case directory (the runner's cwd).
PAYLOAD_MARKER = "payload_ran"
ALIAS_BOMB = b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n".encode()
    for i in range(1, 7)
)


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (PAYLOAD_MARKER, "w")


def torch_payload() -> bytes:
    """A torch file whose unpickling would run code (create PAYLOAD_MARKER)."""
    buffer = io.BytesIO()
    torch.save({"step": 1, "config": {}, "decomposition": {}, "x": _Payload()}, buffer)
    return buffer.getvalue()


def non_finite_checkpoint(content: bytes) -> bytes:
    """The checkpoint `content` with every floating tensor of its decomposition set to NaN."""
    data = torch.load(io.BytesIO(content), weights_only=True)
    for tensors in data["decomposition"].values():
        for tensor in tensors.values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def _damaged(
    name: str, content: bytes, rng: random.Random, cut_before: int
) -> list[tuple[str, dict[str, bytes]]]:
    """(kind, files) variants of one file, each unusable: cut short, overwritten, emptied,
    replaced by a directory or planted with a payload. `cut_before`: a cut is made before it."""
    start = bytes(rng.randrange(256) for _ in range(16))
    variants: list[tuple[str, bytes]] = [
        (f"cut at byte {(cut := rng.randrange(max(1, cut_before)))}", content[:cut]),
        ("empty", b""),
        ("binary", bytes(rng.randrange(256) for _ in range(300))),
        ("first bytes overwritten", start + content[16:]),
    ]
    if name.endswith(".pth") or name.endswith(".pt"):
        variants.append(("pickle payload", torch_payload()))
    else:
        payload = f"!!python/object/apply:builtins.open ['{PAYLOAD_MARKER}', 'w']\n"
        variants += [
            ("python tag payload", payload.encode()),
            ("alias bomb", ALIAS_BOMB),
            ("NUL byte", content + b"\x00"),
            ("not a mapping", b"- 1\n"),
        ]
    out = [(kind, {name: data}) for kind, data in variants]
    out.append(("a directory", {f"{name}/inside": b"x"}))
    return out


def run_dir_cases(rng: random.Random, template: dict[str, bytes]) -> Iterator[FuzzCase]:
    """Damage every file of a real run directory (`template`: name under 'run/' -> content)."""
    run = f"{CASE_DIR}/run"
    resume = ["--resume", run, "--override", "steps=4"]
    # Only the newest checkpoint: with an older good one, a resume rightly goes on from that.
    *older, newest = sorted(n for n in template if n.startswith("run/checkpoints/"))
    template = {k: v for k, v in template.items() if k not in older}
    checkpoints = [newest]
    config = "run/final_config.yaml"
    config_text = template[config]
    for name in [*checkpoints, config]:
        cut = len(template[name]) if name != config else config_text.index(b"task_config")
        variants = _damaged(name, template[name], rng, cut)
        if name in checkpoints:
            variants.append(("non-finite weights", {name: non_finite_checkpoint(template[name])}))
        for kind, changed in variants:
            files = {**template, **changed}
            if f"{name}/inside" in changed:
                files.pop(name)
            label = f"{name.removeprefix('run/')}: {kind}"
            yield FuzzCase(f"run dir, resume: {label}", "tms", resume, files)
            yield FuzzCase(f"run dir, spd-analyze: {label}", "spd-analyze", [run], files)
            yield FuzzCase(
                f"run dir, spd-report: {label}", "spd-report", [run], files, expect="tolerated"
            )
    state = "run/analysis/state.pt"
    base_state = io.BytesIO()
    torch.save({"source": {}, "accumulator": {"settings": {}}}, base_state)
    for kind, changed in _damaged(state, base_state.getvalue(), rng, len(base_state.getvalue())):
        files = {**template, **changed}
        yield FuzzCase(f"run dir, spd-analyze: state.pt: {kind}", "spd-analyze", [run], files)
    yield from run_dir_reader_cases(rng, template)


def run_dir_reader_cases(rng: random.Random, template: dict[str, bytes]) -> Iterator[FuzzCase]:
    """Damaged metrics (spd-report goes on past them), --out into the run, and a held lock."""
    run = f"{CASE_DIR}/run"
    resume = ["--resume", run, "--override", "steps=4"]
    metrics = "run/metrics.jsonl"
    lines = template[metrics].splitlines(keepends=True)
    middle = rng.randrange(len(lines))
    for kind, text in (
        ("a cut line in the middle", lines[middle][: len(lines[middle]) // 2] + b"\n"),
        ("a JSON list in the middle", b"[1, 2]\n"),
        ("a row without a step", b'{"train/loss": 1.0}\n'),
        ("binary in the middle", bytes(rng.randrange(256) for _ in range(40)) + b"\n"),
    ):
        damaged = b"".join([*lines[:middle], text, *lines[middle + 1 :]])
        files = {**template, metrics: damaged}
        yield FuzzCase(
            f"run dir, spd-report: metrics: {kind}", "spd-report", [run], files, expect="tolerated"
        )
    for out, what in ((f"{run}/metrics.jsonl", "the run's metrics"), (f"{run}/x.html", "a page")):
        yield FuzzCase(
            f"spd-report: --out is {what} inside the run",
            "spd-report",
            [run, "--out", out],
            template,
        )
    # Concurrency: another process holds the run's lock (a run still training it).
    yield FuzzCase(
        "run dir: resume while another process trains it", "tms", resume, template, locked="run"
    )
    yield FuzzCase(
        "run dir: --run-dir another process holds",
        "tms",
        [str(BASE_CONFIGS["tms"]), "--run-dir", f"{CASE_DIR}/held"],
        {"held/.keep": b""},
        locked="held",
    )


LM_MODEL_CONFIG = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": 64,
    "n_embd": 8,
    "n_layer": 1,
    "n_head": 2,
    "n_positions": 16,
}


def _lm_config(top: dict[str, Any] | None = None, **task: Any) -> bytes:
    base = yaml.safe_load(BASE_CONFIGS["tms"].read_text())
    for key in ("pretrained_model_path", "task_config", "tied_weights", "metrics", "figures"):
        base.pop(key, None)
    return _dump(
        {
            **base,
            "target_module_patterns": ["transformer.h.0.mlp.c_fc"],
            "output_loss_type": "kl",
            "pretrained_model_class": "transformers.GPT2LMHeadModel",
            "pretrained_model_name_hf": f"{CASE_DIR}/model",
            "pretrained_model_output_attr": "logits",
            "task_config": {
                "task_name": "lm",
                "dataset_name": f"{CASE_DIR}/data",
                "text_column": "story",
                "max_seq_len": 16,
                "tokenizer_name": f"{CASE_DIR}/tokenizer",
                **task,
            },
            **(top or {}),
        }
    )


def lm_file_cases(rng: random.Random) -> Iterator[FuzzCase]:
    """Language-model runs whose data, tokenizer or model directory is damaged (all local)."""
    good = {
        "data/train.jsonl": b'{"story": "once upon a time"}\n',
        "data/test.jsonl": b'{"story": "the end"}\n',
        "model/config.json": json.dumps(LM_MODEL_CONFIG).encode(),
        "tokenizer/tokenizer_config.json": b"{}",  # incomplete: no vocabulary
        "cfg.yaml": _lm_config(),
    }
    binary = bytes(rng.randrange(256) for _ in range(200))
    variants: list[tuple[str, dict[str, bytes]]] = [
        ("empty train split", {"data/train.jsonl": b""}),
        ("binary data file", {"data/train.jsonl": binary}),
        ("no text column", {"data/train.jsonl": b'{"text": "a"}\n'}),
        ("text column of numbers", {"data/train.jsonl": b'{"story": 3}\n'}),
        ("eval split missing", {"data/test.jsonl": b"", "cfg.yaml": _lm_config(eval_split="dev")}),
        (
            "data file missing",
            {"cfg.yaml": _lm_config(dataset_name="json", data_files="none.jsonl")},
        ),
        ("model config missing", {"model/config.json": b"", "model/other.txt": b"x"}),
        ("model config binary", {"model/config.json": binary}),
        ("sequence beyond the positions", {"cfg.yaml": _lm_config(max_seq_len=64)}),
        ("incomplete tokenizer", {}),
        ("tokenizer.json binary", {"tokenizer/tokenizer.json": binary}),
        ("unknown output", {"cfg.yaml": _lm_config({"pretrained_model_output_attr": "logitz"})}),
    ]
    for kind, changed in variants:
        yield FuzzCase(f"lm files: {kind}", "lm", [f"{CASE_DIR}/cfg.yaml"], {**good, **changed})


def environment_cases(rng: random.Random) -> Iterator[FuzzCase]:
    """Malformed or contradictory environment variables, through spd-run and a script."""
    bad = [
        {"SPD_MAX_GPUS_PER_NODE": rng.choice(["eight", "1.5", "-2", "0", "８"])},
        {"RANK": "0", "WORLD_SIZE": "2"},
        {"RANK": "1", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
        {"WORLD_SIZE": rng.choice(["two", "0", "-1"])},
        {"RANK": "-1", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"},
        {"LOCAL_RANK": "x", "RANK": "0", "WORLD_SIZE": "1"},
        {"WANDB_MODE": rng.choice(["ofline", "on", "true", "local", "ünï"])},
    ]
    for env in bad:
        label = " ".join(f"{k}={v}" for k, v in env.items())
        yield FuzzCase(f"env {label}: tms script", "tms", [str(BASE_CONFIGS["tms"])], env=env)
        yield FuzzCase(
            f"env {label}: spd-run", "spd-run", ["--experiments", "tms_5-2", "--local"], env=env
        )


def option_cases(rng: random.Random) -> Iterator[FuzzCase]:
    """Every numeric option of the console scripts out of its range or not a number."""
    analyze = {
        "--tokens": ["0", "-5", "x"],
        "--batch-size": ["-4", "0", "1.5"],
        "--top-k": ["-1", "0"],
        "--n-random": ["-1", "many"],
        "--context-before": ["-2"],
        "--context-after": ["-1"],
        "--save-every": ["0"],
        "--threshold": ["1.5", "-0.1", "inf"],
    }
    for option, values in analyze.items():
        value = rng.choice(values)
        yield FuzzCase(f"spd-analyze: {option} {value}", "spd-analyze", [CASE_DIR, option, value])
    spd_run = {
        "--dp": ["-1", "x"],
        "--n-agents": ["-3", "x"],
        "--nodes": ["-1", "x"],
        "--time-minutes": ["0", "-5", "x"],
    }
    for option, values in spd_run.items():
        value = rng.choice(values)
        yield FuzzCase(
            f"spd-run: {option} {value}",
            "spd-run",
            ["--experiments", "tms_5-2", option, value],
        )
    yield FuzzCase(
        "spd-report: --out is a file it did not write",
        "spd-report",
        [f"{CASE_DIR}/run", "--out", A_FILE],
        {"a_file.txt": b"notes", "run/metrics.jsonl": b'{"step": 0}\n'},
    )


def generate(
    seed: int,
    per_config: int = 16,
    per_target: int = 6,
    sweep: int = 8,
    run_template: dict[str, bytes] | None = None,
) -> list[FuzzCase]:
    """All cases of one seed: a sample of each kind, in a seeded order. `run_template` (the
    files of a real run directory, under 'run/') adds the cases that damage a run directory."""
    rng = random.Random(seed)
    cases = [
        *config_cases(rng, per_config),
        *target_config_cases(rng, per_target),
        *sweep_cases(rng, sweep),
        *argument_cases(rng),
        *environment_cases(rng),
        *option_cases(rng),
        *lm_file_cases(rng),
        *(run_dir_cases(rng, run_template) if run_template is not None else []),
    ]
    return cases
