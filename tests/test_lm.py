"""Language-model decomposition on a tiny version of the offline example, built in tmp_path.

The tiny pipeline is the real one (`make_offline_example.build_example`: generated corpus,
byte-level BPE tokenizer, a Llama trained for a few steps, all saved to disk) at toy sizes.
"""

import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import datasets.config
import pytest
import torch
from huggingface_hub import constants as hub_constants
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from spd.config.evaluators import registry
from spd.config.loading import config_from_dict, load_config
from spd.config.schema import Config
from spd.data.lm_data import lm_batches, load_tokenizer
from spd.errors import SPDUserError
from spd.eval.context import EvalContext
from spd.experiments.lm import task as lm_task
from spd.experiments.lm.config import LMTaskConfig
from spd.experiments.lm.make_offline_example import EOS, TEXT_COLUMN, build_example
from spd.experiments.lm.sources import EXAMPLE_DIRNAME, resolve_sources
from spd.experiments.registry import EXPERIMENT_REGISTRY
from spd.experiments.run_decomposition import run_decomposition
from spd.launch.plan import LaunchSettings, plan_runs
from spd.loading.hf_hub import HubResource, require_hub_resources
from spd.loading.targets import load_target_model
from spd.models.ci_fns.mlp import MLPCIFn
from spd.models.component_model import ComponentModel, build_component_model
from spd.train.data_shard import data_shard
from spd.train.optimize import optimize
from tests.tiny_lm import SEQ_LEN, TINY

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TinyExample:
    root: Path  # plays the output root: the example is root/lm_offline_example
    tokenizer: PreTrainedTokenizerBase

    @property
    def dir(self) -> Path:
        return self.root / EXAMPLE_DIRNAME

    def stories(self, split: str) -> set[str]:
        lines = (self.dir / "data" / f"{split}.jsonl").read_text().splitlines()
        return {json.loads(line)[TEXT_COLUMN] for line in lines}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> TinyExample:
    root = tmp_path_factory.mktemp("out")
    build_example(root / EXAMPLE_DIRNAME, TINY, log=False)
    return TinyExample(root, load_tokenizer(str(root / EXAMPLE_DIRNAME / "model")))


def _task(example: TinyExample, **changes: object) -> LMTaskConfig:
    fields: dict[str, object] = {
        "dataset_name": str(example.dir / "data"),
        "text_column": TEXT_COLUMN,
        "max_seq_len": SEQ_LEN,
        "tokenizer_name": str(example.dir / "model"),
        **changes,
    }
    return LMTaskConfig.model_validate(fields)


def _documents(tokens: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The complete documents in a token stream: the pieces between EOS tokens, decoded."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    flat = tokens.flatten().tolist()
    cuts = [i for i, t in enumerate(flat) if t == eos]
    docs = [flat[: cuts[0]]] + [flat[a + 1 : b] for a, b in itertools.pairwise(cuts)]
    return [str(tokenizer.decode(d)) for d in docs]


# ----- data -----


@pytest.mark.parametrize("streaming", [False, True])
def test_batches_are_packed_documents_of_one_split(
    example: TinyExample, tmp_path: Path, streaming: bool
) -> None:
    task = _task(example, streaming=streaming)
    train = lm_batches(task, example.tokenizer, "train", 3, seed=0, cache_dir=tmp_path)
    batches = [next(train) for _ in range(6)]
    for batch in batches:
        assert batch.shape == (3, SEQ_LEN)
        assert batch.dtype == torch.int64
        assert int(batch.max()) < len(example.tokenizer)
    # Packing loses nothing and mixes nothing: the stream starts at a document boundary and
    # every complete piece between EOS tokens is one whole training story, none from the test set.
    docs = _documents(torch.cat(batches), example.tokenizer)
    assert len(docs) >= 3
    train_stories, test_stories = example.stories("train"), example.stories("test")
    assert all(d in train_stories for d in docs)
    assert not any(d in test_stories for d in docs)
    evals = lm_batches(task, example.tokenizer, "test", 3, seed=0, cache_dir=tmp_path)
    eval_docs = _documents(torch.cat([next(evals) for _ in range(4)]), example.tokenizer)
    assert eval_docs and all(d in test_stories for d in eval_docs)


def test_saved_dataset_and_data_files_are_read_too(example: TinyExample, tmp_path: Path) -> None:
    splits = {split: sorted(example.stories(split)) for split in ("train", "test")}
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({TEXT_COLUMN: texts}) for split, texts in splits.items()}
    ).save_to_disk(str(saved))
    files = {split: str(example.dir / "data" / f"{split}.jsonl") for split in splits}
    tasks = [
        _task(example, dataset_name=str(saved)),
        _task(example, dataset_name=str(saved), streaming=True),
        _task(example, dataset_name="json", data_files=files),
    ]
    for task in tasks:
        stream = lm_batches(task, example.tokenizer, "test", 2, seed=0, cache_dir=tmp_path / "c")
        docs = _documents(torch.cat([next(stream) for _ in range(3)]), example.tokenizer)
        assert docs and all(d in splits["test"] for d in docs)


def test_batches_reproducible_from_the_seed(example: TinyExample, tmp_path: Path) -> None:
    task = _task(example)

    def first(seed: int, n: int = 4) -> torch.Tensor:
        stream = lm_batches(task, example.tokenizer, "train", 2, seed=seed, cache_dir=tmp_path)
        return torch.cat([next(stream) for _ in range(n)])

    torch.testing.assert_close(first(0), first(0), rtol=0, atol=0)
    assert not torch.equal(first(0), first(1))


def test_stream_continues_past_one_epoch(example: TinyExample, tmp_path: Path) -> None:
    task = _task(example, max_seq_len=64)
    n_tokens = sum(len(example.tokenizer(s)["input_ids"]) + 1 for s in example.stories("test"))
    stream = lm_batches(task, example.tokenizer, "test", 4, seed=0, cache_dir=tmp_path)
    n_batches = n_tokens // (4 * 64) + 3  # more than one epoch's worth
    batches = [next(stream) for _ in range(n_batches)]
    assert all(b.shape == (4, 64) for b in batches)


def test_same_train_and_eval_split_is_rejected(example: TinyExample) -> None:
    with pytest.raises(ValueError, match="held-out"):
        _task(example, eval_split="train")


def test_unknown_text_column_lists_the_columns(example: TinyExample, tmp_path: Path) -> None:
    task = _task(example, text_column="text")
    with pytest.raises(SPDUserError, match="its columns are: story"):
        next(lm_batches(task, example.tokenizer, "train", 2, seed=0, cache_dir=tmp_path))


# ----- decomposing Embedding, Linear and Conv1D with a KL output loss -----


class Recorder:
    """A sink that keeps every logged metric."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append((step, metrics))

    def save_figure(self, step: int, name: str, figure: object) -> None:
        del step, name, figure


def _tiny_gpt2_dir(example: TinyExample, tmp_path: Path) -> Path:
    """A tiny GPT-2 (transformers' Conv1D layers) built from a config, trained for a few steps on
    the stories (an untrained one predicts almost uniformly) and saved to disk."""
    torch.manual_seed(0)
    eos = example.tokenizer.convert_tokens_to_ids(EOS)
    assert isinstance(eos, int)
    config = GPT2Config(
        vocab_size=len(example.tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=SEQ_LEN,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stream = lm_batches(_task(example), example.tokenizer, "train", 8, seed=0, cache_dir=tmp_path)
    for _ in range(20):
        tokens = next(stream)
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path / "gpt2"
    model.save_pretrained(path)
    return path


def _lm_config(model_dir: Path, model_class: str, pattern: str, task: LMTaskConfig) -> Config:
    fields: dict[str, object] = {
        "C": 8,
        "target_module_patterns": [pattern],
        "losses": [
            {"name": "faithfulness", "coeff": 1.0},
            {"name": "stochastic_recon", "coeff": 1.0},
            {"name": "importance_minimality", "coeff": 1e-3},
        ],
        "output_loss_type": "kl",
        "lr": 1e-2,
        "steps": 40,
        "batch_size": 2,
        "train_log_freq": 1,
        "eval_freq": 1000,
        "slow_eval_freq": 1000,
        "slow_eval_on_first_step": False,
        "eval_batch_size": 2,
        "metrics": [],
        "pretrained_model_class": model_class,
        "pretrained_model_name_hf": str(model_dir),
        "pretrained_model_output_attr": "logits",
        "task_config": task.model_dump(),
    }
    return config_from_dict(fields)


@pytest.mark.parametrize(
    ("model_class", "pattern", "kind"),
    [
        ("transformers.LlamaForCausalLM", "model.embed_tokens", "Embedding"),
        ("transformers.LlamaForCausalLM", "model.layers.0.mlp.gate_proj", "Linear"),
        ("transformers.GPT2LMHeadModel", "transformer.h.0.mlp.c_fc", "Conv1D"),
    ],
)
def test_decomposition_trains_with_kl_loss(
    example: TinyExample,
    tmp_path: Path,
    model_class: str,
    pattern: str,
    kind: str,
    device: torch.device,
) -> None:
    model_dir = example.dir / "model" if kind != "Conv1D" else _tiny_gpt2_dir(example, tmp_path)
    task = _task(example)
    config = _lm_config(model_dir, model_class, pattern, task)
    target = load_target_model(config)  # from_pretrained on the local directory
    assert type(target.get_submodule(pattern)).__name__ == kind
    train, evals = lm_task.make_data(config, target, device, data_shard(config))
    probe = next(lm_batches(task, example.tokenizer, "test", 2, seed=5, cache_dir=tmp_path))
    with torch.no_grad():
        target_logits = target(probe).logits

    def unmasked_kl(model: ComponentModel) -> float:
        with torch.no_grad():
            on = next(model.parameters()).device
            logits = model.forward_with_components(probe.to(on), dict.fromkeys(model.module_names))
            logits = logits.cpu()
            log_p, log_q = target_logits.log_softmax(-1), logits.log_softmax(-1)
            return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())

    # The model optimize() starts from: the same seeded initialisation, on a copy of the target.
    initial = build_component_model(copy.deepcopy(target), config)
    initial.init_components_from_target(config.seed)
    recorder = Recorder()
    result = optimize(target, config, device, train, evals, sinks=[recorder], show_progress=False)
    losses = [m["train/loss/total"] for _, m in recorder.rows if "train/loss/total" in m]
    assert len(losses) == config.steps + 1
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert unmasked_kl(result.model) < unmasked_kl(initial)


# ----- the CE/KL metric on a planted decomposition -----


def _planted_embedding(
    example: TinyExample, tmp_path: Path, cancelling_pair: bool
) -> tuple[dict[str, float], ComponentModel, Config, list[torch.Tensor]]:
    """The CE/KL metric on an embedding (vocab × d) decomposed by hand into C = 3d subcomponents.

    Group 1 (d subcomponents) reproduces the weight exactly (V = W, U = I) and has CI 1. Groups
    2 and 3 share a random V = A; with `cancelling_pair` they write +B and −B (so all 3d sum to
    W) and group 2 has CI 1, group 3 CI 0; otherwise both write nothing (U = 0) and have CI 0.
    """
    task = _task(example)
    config = _lm_config(
        example.dir / "model", "transformers.LlamaForCausalLM", "model.embed_tokens", task
    )
    target = load_target_model(config)
    embedding = target.get_submodule("model.embed_tokens")
    assert isinstance(embedding, torch.nn.Embedding)
    weight = embedding.weight.detach().clone()
    vocab, d = weight.shape
    model = ComponentModel(
        target, ["model.embed_tokens"], C=3 * d, ci_fn_hidden_dims=[4], output_attr="logits"
    )
    comp = model.components["model.embed_tokens"]
    ci_fn = model.ci_fn("model.embed_tokens")
    assert isinstance(ci_fn, MLPCIFn)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        comp._V[:, :d] = weight
        a = torch.randn(vocab, d, generator=generator)
        comp._V[:, d : 2 * d] = a
        comp._V[:, 2 * d :] = a
        comp._U.zero_()
        comp._U[:d] = torch.eye(d)
        if cancelling_pair:
            b = torch.randn(d, d, generator=generator) * 0.1
            comp._U[d : 2 * d] = b
            comp._U[2 * d :] = -b
        # Last CI layer: weights 0, so the raw CI is its bias; the hard sigmoid clamps ±2 to 1 / 0.
        ci_fn.weights[1].zero_()
        ci_fn.biases[1][:] = -2.0
        ci_fn.biases[1][: 2 * d if cancelling_pair else d] = 2.0
    assert (
        float((model.target_weight("model.embed_tokens") - comp.weight).abs().max().detach()) < 1e-5
    )
    tokens = [
        next(lm_batches(task, example.tokenizer, "test", 3, seed=s, cache_dir=tmp_path))
        for s in (1, 2)
    ]
    ctx = EvalContext(model=model, config=config, inputs=tokens, step=0)
    return registry("metric")["ce_and_kl"].fn(ctx), model, config, tokens


def test_ce_kl_metric_when_inactive_subcomponents_write_nothing(
    example: TinyExample, tmp_path: Path
) -> None:
    scores, model, _, tokens = _planted_embedding(example, tmp_path, cancelling_pair=False)
    target = model.target
    # The target's CE, computed independently by the model's own loss.
    with torch.no_grad():
        hf_losses = [float(target(input_ids=t, labels=t).loss) for t in tokens]
    assert scores["ce_kl/ce_target"] == pytest.approx(sum(hf_losses) / 2, rel=1e-5)
    # Every mask that keeps group 1 at 1 reproduces the target exactly.
    for exact in ("ci", "stochastic", "unmasked", "rounded"):
        assert scores[f"ce_kl/kl/{exact}"] == pytest.approx(0.0, abs=1e-6)
        assert scores[f"ce_kl/ce_diff/{exact}"] == pytest.approx(0.0, abs=1e-4)
        assert scores[f"ce_kl/ce_unrecovered/{exact}"] == pytest.approx(0.0, abs=1e-3)
    assert scores["ce_kl/ce_unrecovered/zero"] == pytest.approx(1.0)
    assert 1e-3 < scores["ce_kl/kl/random"] < scores["ce_kl/kl/zero"]
    assert 0.0 < scores["ce_kl/ce_unrecovered/random"] < 1.0

    # The all-zeros mask is the target with a zero embedding: KL computed without components.
    d = model.components["model.embed_tokens"].d_out
    kls = []
    with torch.no_grad():
        for t in tokens:
            hidden = target.get_submodule("model").forward(inputs_embeds=torch.zeros(*t.shape, d))
            log_q = target.get_submodule("lm_head")(hidden.last_hidden_state).log_softmax(-1)
            log_p = model(t).log_softmax(-1)
            kls.append(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()))
    assert scores["ce_kl/kl/zero"] == pytest.approx(sum(kls) / 2, rel=1e-4)


def test_ce_kl_metric_when_only_the_unmasked_sum_is_exact(
    example: TinyExample, tmp_path: Path
) -> None:
    scores, _, _, _ = _planted_embedding(example, tmp_path, cancelling_pair=True)
    # All ones: +B and −B cancel. CI (and CI rounded, identical for CI in {0, 1}) keeps +B only;
    # stochastic masks keep +B and a random part of −B.
    assert scores["ce_kl/kl/unmasked"] == pytest.approx(0.0, abs=1e-6)
    assert scores["ce_kl/kl/ci"] > 1e-3
    assert scores["ce_kl/kl/rounded"] == pytest.approx(scores["ce_kl/kl/ci"], rel=1e-6)
    assert 1e-4 < scores["ce_kl/kl/stochastic"] < scores["ce_kl/kl/ci"]
    assert scores["ce_kl/ce_unrecovered/zero"] == pytest.approx(1.0)
    assert scores["ce_kl/ce_unrecovered/unmasked"] == pytest.approx(0.0, abs=1e-3)


# ----- sources: local example, offline hub -----


def test_registered_lm_configs_load() -> None:
    lm = {name: spec for name, spec in EXPERIMENT_REGISTRY.items() if spec.task_name == "lm"}
    assert {"ss_emb", "gpt2", "lm_example_emb", "lm_example_mlp"} <= set(lm)
    ss_emb = load_config(lm["ss_emb"].config_path)
    assert (ss_emb.C, ss_emb.target_module_patterns, ss_emb.output_loss_type) == (
        100,
        ["model.embed_tokens"],
        "kl",
    )
    for spec in lm.values():
        config = load_config(spec.config_path)
        assert isinstance(config.task_config, LMTaskConfig)


def test_example_not_built_names_the_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    config = load_config(EXPERIMENT_REGISTRY["lm_example_emb"].config_path)
    with pytest.raises(SPDUserError, match=r"make_offline_example\.py") as err:
        resolve_sources(config)
    assert str(tmp_path / EXAMPLE_DIRNAME) in str(err.value)


def test_launcher_finds_the_example_in_the_output_root(
    example: TinyExample, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # spd-run moves each run's output root to a launch directory; the example stays where it was
    # built, so the launcher pins its paths first, and refuses up front when it is not built.
    monkeypatch.setenv("SPD_OUT_DIR", str(example.root))
    (run,) = plan_runs(["lm_example_emb"], {}, None, LaunchSettings(launch_id="L"))
    assert run.config.out_dir == str(example.root.resolve() / "L")
    assert run.config.pretrained_model_name_hf == str((example.dir / "model").resolve())
    task = run.config.task_config
    assert isinstance(task, LMTaskConfig)
    assert task.dataset_name == str((example.dir / "data").resolve())
    assert task.tokenizer_name == str((example.dir / "model").resolve())
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    with pytest.raises(SPDUserError, match=r"not been built yet .*make_offline_example\.py"):
        plan_runs(["lm_example_emb"], {}, None, LaunchSettings(launch_id="L"))


def test_registered_example_runs_from_the_output_root(
    example: TinyExample, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(example.root))
    overrides = {
        "steps": 3,
        "eval_freq": 3,
        "slow_eval_freq": 3,
        "task_config.max_seq_len": SEQ_LEN,
        "figures": [],
    }
    config = resolve_sources(
        load_config(EXPERIMENT_REGISTRY["lm_example_emb"].config_path, overrides)
    )
    assert config.pretrained_model_name_hf == str((example.dir / "model").resolve())
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))  # keep ~/.cache clean
    run = run_decomposition(config, "lm", lm_task.make_data, lm_task.summarize, show_progress=False)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["ce_kl/ce_unrecovered/zero"] == pytest.approx(1.0)
    assert 0.0 <= summary["ci_l0/model.embed_tokens"] <= config.C
    assert str(example.dir) in (run.path / "final_config.yaml").read_text()
    # The saved decomposition loads back onto the Hugging Face target and gives the same outputs.
    loaded = ComponentModel.from_pretrained(run.path)
    probe = torch.tensor([example.tokenizer("Tom found a red ball.")["input_ids"]])
    masks = dict.fromkeys(loaded.module_names)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.forward_with_components(probe, masks),
            run.result.model.forward_with_components(probe, masks),
            rtol=0,
            atol=0,
        )


def test_unreachable_hub_fails_fast_naming_every_resource(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub is the boundary this test cannot reach: the endpoint is pointed at a closed
    # local port (what HF_ENDPOINT does), and the cache at an empty directory.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    resources = [
        HubResource("model", "someone/model-x", "pretrained_model_name_hf"),
        HubResource("dataset", "someone/data-y", "task_config.dataset_name"),
    ]
    with pytest.raises(SPDUserError) as err:
        require_hub_resources(resources)
    message = str(err.value)
    assert "cannot be reached" in message
    assert "someone/model-x" in message and "someone/data-y" in message
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message


def _fill_hub_cache(cache: Path, repo_id: str, files: Path) -> None:
    """Lay out `files` as huggingface_hub's cache holds a downloaded model repository: a snapshot
    directory per commit and refs/main naming the commit."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_load_from_the_cache_in_offline_mode(
    example: TinyExample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub is the boundary: the cache is filled by hand with the tiny model, as a download
    # would leave it, and the hub libraries are put in offline mode (what HF_HUB_OFFLINE=1 and
    # HF_HUB_CACHE do at start-up).
    cache = tmp_path / "hub"
    _fill_hub_cache(cache, "spd-test/tiny-llama", example.dir / "model")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    task = _task(example, tokenizer_name="spd-test/tiny-llama")
    config = _lm_config(
        Path("spd-test/tiny-llama"), "transformers.LlamaForCausalLM", "model.embed_tokens", task
    )
    resolved = resolve_sources(config)  # passes: both hub ids are cached
    assert resolved.pretrained_model_name_hf == "spd-test/tiny-llama"
    target = load_target_model(resolved)
    assert isinstance(resolved.task_config, LMTaskConfig)
    tokenizer = load_tokenizer(resolved.task_config.tokenizer_name)
    tokens = example.tokenizer("Lily found a ball.")["input_ids"]
    assert tokenizer("Lily found a ball.")["input_ids"] == tokens
    expected = load_target_model(
        config.model_copy(update={"pretrained_model_name_hf": str(example.dir / "model")})
    )
    probe = torch.tensor([tokens])
    with torch.no_grad():
        torch.testing.assert_close(target(probe).logits, expected(probe).logits)

    # With the hub online but unreachable, cached ids are named with the switch to offline mode.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SPDUserError, match="HF_HUB_OFFLINE=1 alone will do"):
        resolve_sources(config)


def test_offline_mode_stops_before_training_with_one_message(tmp_path: Path) -> None:
    # The hub is the boundary: with HF_HUB_OFFLINE=1 and an empty cache (HF_HOME) the libraries
    # may not contact it, so ids that are not cached must stop the run, in one line, before
    # any run directory is made.
    config = yaml_config(tmp_path)
    out_dir = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "SPD_OUT_DIR": str(out_dir),
        "PYTHONPATH": str(REPO),
    }
    script = REPO / "spd" / "experiments" / "lm" / "lm_decomposition.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(config), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("spd: error: cannot fetch from the Hugging Face hub")
    assert "HF_HUB_OFFLINE is set and they are not in the cache" in line
    for name in ("spd-test/not-cached-model", "spd-test/not-cached-data"):
        assert name in line
    assert "HF_HUB_OFFLINE=1" in line and "--local-dir" in line
    assert not out_dir.exists()


def yaml_config(tmp_path: Path) -> Path:
    """A config naming a model, tokenizer and dataset on the hub that no cache holds."""
    path = tmp_path / "offline.yaml"
    path.write_text(
        "C: 4\n"
        'target_module_patterns: ["model.embed_tokens"]\n'
        "output_loss_type: kl\n"
        "pretrained_model_class: transformers.LlamaForCausalLM\n"
        "pretrained_model_name_hf: spd-test/not-cached-model\n"
        "pretrained_model_output_attr: logits\n"
        "task_config:\n"
        "  task_name: lm\n"
        "  dataset_name: spd-test/not-cached-data\n"
        "  text_column: story\n"
        "  tokenizer_name: spd-test/not-cached-model\n"
    )
    return path
