"""The app's maths without the server: attribution edges against finite differences, and
interventions against direct masked forward passes."""

import pytest
import torch
from jaxtyping import Float
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast

from spd.app.attribution import attribution_graph, ci_masks
from spd.app.intervention import edited_masks, token_intervention
from spd.app.runs import token_labels
from spd.models.component_model import ComponentModel

SEQ, D, H, C = 3, 3, 4, 5


class CausalMix(nn.Module):
    """fc1, a running sum over positions (so later positions read earlier ones), ReLU, fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.fc2 = nn.Linear(H, D)

    def forward(self, x: Float[Tensor, "batch seq d"]) -> Float[Tensor, "batch seq d"]:
        return self.fc2(torch.relu(self.fc1(x).cumsum(dim=1)))


@pytest.fixture
def model() -> ComponentModel:
    torch.manual_seed(0)
    model = ComponentModel(CausalMix(), ["fc1", "fc2"], C=C, ci_fn_hidden_dims=[3])
    model.init_components_from_target(0)
    return model.double()


def _by_hand(
    model: ComponentModel, x: Tensor, m1: Tensor, m2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The layers' inner activations and the output, written out from the factors."""
    c1, c2 = model.components["fc1"], model.components["fc2"]
    assert c1.bias is not None and c2.bias is not None
    a1 = x @ c1.V
    h1 = (a1 * m1) @ c1.U + c1.bias
    a2 = torch.relu(h1.cumsum(dim=1)) @ c2.V
    return a1, a2, (a2 * m2) @ c2.U + c2.bias


def test_attributions_match_finite_differences(model: ComponentModel) -> None:
    x = torch.randn(1, SEQ, D, dtype=torch.float64)
    logits = [(SEQ - 1, 0), (1, 2)]
    graph = attribution_graph(model, x, "leaky_hard", logits, threshold=-1.0, max_nodes=10_000)
    masks = ci_masks(model, x, "leaky_hard")
    assert len(graph.nodes) == 2 * SEQ * C + len(logits)
    edges = {(s, t): w for s, t, w in graph.edges}
    # The targets: the logits, and the fc2 nodes that attribute to a logit (max_targets allows all).
    logit_nodes = {t for t, node in enumerate(graph.nodes) if node.layer == 2}
    targets = logit_nodes | {
        s for (s, t) in edges if t in logit_nodes and graph.nodes[s].layer == 1
    }
    assert len(targets) > len(logits) + 2
    eps = 1e-6
    checked = 0
    for s, source in enumerate(graph.nodes):
        if source.layer == 2:
            continue
        for t, target in enumerate(graph.nodes):
            if target.layer <= source.layer or t not in targets:
                continue
            bumped = []
            for sign in (1.0, -1.0):
                m = [masks["fc1"].clone(), masks["fc2"].clone()]
                m[source.layer][0, source.position, source.index] += sign * eps
                with torch.no_grad():
                    _, a2, out = _by_hand(model, x, m[0], m[1])
                value = out if target.layer == 2 else a2
                bumped.append(value[0, target.position, target.index])
            mask = masks[graph.layer_names[source.layer]][0, source.position, source.index]
            expected = float((bumped[0] - bumped[1]) / (2 * eps) * mask)
            assert edges.get((s, t), 0.0) == pytest.approx(expected, rel=1e-5, abs=1e-9)
            checked += expected != 0.0
    # The running sum reaches later positions only: some pairs have no edge, many do.
    assert checked > SEQ * C
    assert not any(graph.nodes[s].position > graph.nodes[t].position for s, t, _ in graph.edges)


def test_ablating_a_node_is_the_masked_forward_without_it(model: ComponentModel) -> None:
    x = torch.randn(1, SEQ, D, dtype=torch.float64)
    masks = ci_masks(model, x, "leaky_hard")
    ablated = edited_masks(masks, [("fc1", 0, 2)], "ablate")
    assert ablated["fc1"][0, 0, 2] == 0.0
    assert torch.equal(ablated["fc1"][0, 1:], masks["fc1"][0, 1:])
    kept = edited_masks(masks, [("fc2", 1, 3)], "keep")
    assert kept["fc2"].count_nonzero() == (masks["fc2"][0, 1, 3] != 0)
    assert kept["fc1"].count_nonzero() == 0

    # Treat the 3 outputs as a vocabulary: the distributions follow from the masked forwards.
    result = token_intervention(model, x, "leaky_hard", [("fc1", 0, 2)], "ablate", top_k=3)
    with torch.no_grad():
        _, _, before = _by_hand(model, x, masks["fc1"], masks["fc2"])
        _, _, after = _by_hand(model, x, ablated["fc1"], ablated["fc2"])
        target_out = model(x)
    for position in range(SEQ):
        p_after = torch.softmax(after[0, position], dim=-1)
        top = result.after[position]
        assert [i for i, _ in top] == p_after.argsort(descending=True).tolist()
        assert [p for _, p in top] == pytest.approx(p_after.sort(descending=True).values.tolist())
        target = torch.softmax(target_out[0, position], dim=-1)
        kl = float((target * (target.log() - torch.log_softmax(before[0, position], -1))).sum())
        assert result.kl_before[position] == pytest.approx(kl)


def _one_id(value: int | list[int]) -> int:
    assert isinstance(value, int)
    return value


def test_a_token_inside_a_multibyte_character_is_labelled_by_its_vocabulary_entry() -> None:
    # A real byte-level BPE: its alphabet has every byte, so the lead byte of "é" is a token.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["the café is open", "a dog"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    # "é" is the bytes C3 A9, the byte-level tokens "Ã" and "©".
    lead, cont, dog = (_one_id(tokenizer.convert_tokens_to_ids(t)) for t in ("Ã", "©", "d"))
    assert tokenizer.decode([lead]) == "\ufffd" == tokenizer.decode([cont])
    labels = token_labels(tokenizer, [lead, cont, dog])
    assert labels == ["⟨Ã⟩", "⟨©⟩", "d"]
