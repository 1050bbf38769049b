"""How fast spd-app's attribution graph and intervention answer on this CPU, and the memory of the
analysis pass's co-firing counts against the number of subcomponents.

    python scripts/benchmark_app.py EXAMPLE_DIR [--tokens 512] [--C 400] [--whole-C 1000]

EXAMPLE_DIR is the offline LM example (`python spd/experiments/lm/make_offline_example.py`).
Two decompositions of its Llama are timed, both with their CI functions untrained (how many
nodes pass the threshold is then arbitrary, so the node cap `--max-nodes` is what sets the work):
the lm_example_mlp shape (one MLP matrix, C = `--C`) and the whole model (every linear map of every
block, `--whole-C` each). For a `--tokens`-long prompt of the example's test text it reports the
time to the first graph (CI, one forward and one backward per target node) and to an intervention
(the target and two masked forwards).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from spd.analysis.accumulators import AccumulatorSettings, AnalysisAccumulator
from spd.app.attribution import attribution_graph, ci_masks, masked_output
from spd.app.intervention import token_intervention
from spd.data.lm_data import load_tokenizer
from spd.experiments.lm.make_offline_example import TEXT_COLUMN
from spd.experiments.lm.task import prepare_target
from spd.models.component_model import ComponentModel

WHOLE = ["model.layers.*.self_attn.*_proj", "model.layers.*.mlp.*_proj"]


def prompt_tokens(example: Path, n: int) -> torch.Tensor:
    tokenizer = load_tokenizer(str(example / "model"))
    text = " ".join(
        json.loads(line)[TEXT_COLUMN]
        for line in (example / "data" / "test.jsonl").open().readlines()[:200]
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    assert len(ids) == n
    return torch.tensor([ids])


def time_one(
    example: Path, patterns: list[str], C: int, tokens: torch.Tensor, max_nodes: int
) -> dict[str, float]:
    start = time.perf_counter()
    target = LlamaForCausalLM.from_pretrained(str(example / "model"))
    prepare_target(target)
    model = ComponentModel(
        target, patterns, C=C, gate_type="mlp", gate_hidden_dims=[4], output_attr="logits"
    )
    model.init_components_from_target(0)
    model.eval()
    built = time.perf_counter()
    masks = ci_masks(model, tokens, "leaky_hard")
    last = masked_output(model, tokens, masks)[0, -1]
    top = last.softmax(-1).topk(3).indices.tolist()
    graph = attribution_graph(
        model, tokens, "leaky_hard", [(tokens.shape[1] - 1, t) for t in top], 0.1, max_nodes
    )
    graphed = time.perf_counter()
    strongest = graph.nodes[graph.edges[0][0]]
    node = (graph.layer_names[strongest.layer], strongest.position, strongest.index)
    token_intervention(model, tokens, "leaky_hard", [node], "ablate")
    done = time.perf_counter()
    return {
        "matrices": len(model.module_names),
        "subcomponents": len(model.module_names) * C,
        "load_s": built - start,
        "graph_s": graphed - built,
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "intervention_s": done - graphed,
    }


def cofire_bytes(total: int, m: int) -> int:
    acc = AnalysisAccumulator(
        {"all": total}, 1, AccumulatorSettings(0.1, 1, 1, 0, 0, 2, m), torch.device("cpu")
    )
    return acc.cofire.index.nbytes + acc.cofire.count.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("example", type=Path)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--C", type=int, default=400)
    parser.add_argument("--whole-C", type=int, default=1000)
    parser.add_argument("--max-nodes", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokens = prompt_tokens(args.example, args.tokens)
    for name, patterns, C in (
        ("lm_example_mlp", ["model.layers.0.mlp.gate_proj"], args.C),
        ("whole model", WHOLE, args.whole_C),
    ):
        print(
            name,
            json.dumps(
                {
                    k: round(v, 2)
                    for k, v in time_one(args.example, patterns, C, tokens, args.max_nodes).items()
                }
            ),
            flush=True,
        )
    for total in (4_000, 28_000, 100_000):
        print(
            f"co-firing counts, ΣC = {total}: {cofire_bytes(total, 32) / 2**20:.1f} MiB (dense: {8 * total**2 / 2**20:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
