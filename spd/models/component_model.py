"""`ComponentModel`: a frozen target with chosen layers decomposed into subcomponents.

Decomposed modules are swapped in place for a `DecomposedModule` that runs either the original
layer or its components, so every forward mode of the method is one pass through the target's
own `forward`:
- `model(x)`                          — the unmodified target;
- `model.forward_with_pre_acts(x)`    — the target, plus the input each decomposed layer received;
- `model.forward_with_components(x, masks)` — the layers named in `masks` replaced by their
  components (masked, or unmasked for a `None` mask; a `ModuleMask` adds the delta component
  and a route), every other layer original.
"""

import fnmatch
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from spd.config.module_c import module_C
from spd.config.schema import Config, SigmoidType, TiedWeightsMode
from spd.errors import SPDUserError
from spd.loading.run_paths import resolve_run_path
from spd.loading.targets import load_target_model
from spd.models.ci_fns.base import (
    LayerShape,
    LayerwiseCIFunctions,
    ci_function_type,
    module_key,
)
from spd.models.components import Components, EmbeddingComponents
from spd.models.low_rank_stream import LowRankStream, read_stream, write_stream
from spd.models.module_mask import MaskLike, ModuleMask, as_module_mask
from spd.models.sigmoids import get_sigmoids
from spd.persistence.checkpoints import checkpoint_config, latest_checkpoint, read_checkpoint

GPT2_CONV1D = "transformers.pytorch_utils.Conv1D"
SUPPORTED_KINDS = "torch.nn.Linear, torch.nn.Embedding, transformers' GPT-2 Conv1D"


def _is_conv1d(module: nn.Module) -> bool:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}" == GPT2_CONV1D


def _is_decomposable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Embedding) or _is_conv1d(module)


class DecomposedModule(nn.Module):
    """Stands in for a target layer; runs the original or the (masked) components."""

    def __init__(self, original: nn.Module, components: Components) -> None:
        super().__init__()
        self.original = original
        self.components = components
        self.mode: Literal["original", "components"] = "original"
        self.mask: ModuleMask | None = None
        self.capture_input = False
        self.captured_input: Tensor | None = None
        self.captured_stream: LowRankStream | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.capture_input:
            self.captured_input = x
        if self.mode == "components":
            return self.masked_forward(x, self._active_mask())
        return self.original(x)

    def masked_forward(self, x: Tensor, mask: ModuleMask) -> Tensor:
        """The layer under `mask`: U (m ⊙ V x) + m_Δ · (Δ x) + bias where routed to the
        components, and exactly the original layer's output elsewhere (docs/method.md)."""
        out = self.components(x, mask.component)
        if mask.delta is not None:
            weight = self.original.weight
            assert isinstance(weight, Tensor)
            out = out + mask.delta.unsqueeze(-1) * self.components.delta_output(x, weight)
        if mask.route is not None:
            # A select, not a blend: a routed-away position gets the original's output bit for bit.
            out = torch.where(mask.route.unsqueeze(-1), out, self.original(x))
        return out

    def _active_mask(self) -> ModuleMask:
        assert self.mask is not None, "set by ComponentModel.forward_with_components"
        return self.mask

    def read_stream(self, stream: LowRankStream) -> Tensor:
        """The layer applied to a `LowRankStream` input, through its small factors."""
        if self.capture_input:
            self.captured_stream = stream
        if self.mode == "original":
            return read_stream(self.original, stream)
        mask = self._active_mask()
        if mask.delta is None and mask.route is None:
            return self.components.output(stream.project(self.components.V), mask.component)
        # The delta component and a route read the dense input (docs/method.md).
        return self.masked_forward(stream.dense(), mask)

    def write_stream(self, x: Tensor) -> LowRankStream:
        """The layer's output as `LowRankStream` terms, for a target that adds it to a stream."""
        if self.capture_input:
            self.captured_input = x
        if self.mode == "original":
            return write_stream(self.original, x)
        mask = self._active_mask()
        if mask.delta is None and mask.route is None:
            return self.components.write_stream(x, mask.component)
        return LowRankStream(dense_part=self.masked_forward(x, mask))


def _build_components(module: nn.Module, C: int) -> Components:
    if isinstance(module, nn.Embedding):
        return EmbeddingComponents(module.num_embeddings, module.embedding_dim, C)
    if isinstance(module, nn.Linear):
        return Components(module.in_features, module.out_features, C, "out_in", module.bias)
    weight = module.weight
    assert isinstance(weight, Tensor)
    bias = module.bias
    assert bias is None or isinstance(bias, Tensor)
    d_in, d_out = weight.shape
    return Components(d_in, d_out, C, "in_out", bias)


def match_module_names(target: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the modules matched by fnmatch `patterns`, in the target's module order.

    A pattern that matches nothing, or a match that cannot be decomposed, is a user error that
    lists what exists.
    """
    names = [name for name, _ in target.named_modules() if name]
    modules = dict(target.named_modules())
    selected: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:40]) + (" …" if len(names) > 40 else "")
            raise SPDUserError(
                f"target_module_patterns: '{pattern}' matches no module of "
                f"{type(target).__name__}; its modules are: {shown}"
            )
        for name in hits:
            if not _is_decomposable(modules[name]):
                raise SPDUserError(
                    f"target_module_patterns: '{pattern}' matches '{name}', a "
                    f"{type(modules[name]).__name__}, which cannot be decomposed "
                    f"(supported: {SUPPORTED_KINDS}); narrow the pattern"
                )
            if name not in selected:
                selected.append(name)
    order = {n: i for i, n in enumerate(names)}
    return sorted(selected, key=order.__getitem__)


def _per_module_C(C: int | Mapping[str, int], module_names: list[str]) -> dict[str, int]:
    if isinstance(C, int):
        return dict.fromkeys(module_names, C)
    missing = [n for n in module_names if n not in C]
    extra = [n for n in C if n not in module_names]
    if missing or extra:
        raise SPDUserError(
            f"C names modules {sorted(C)}, but the decomposed modules are {module_names}; "
            "give one C per decomposed module"
        )
    return {n: C[n] for n in module_names}


def config_module_C(target: nn.Module, config: Config) -> dict[str, int]:
    """Each module of `target` that `config` decomposes, with its C (`spd.config.module_c`).

    Raises `SPDUserError` on a bad pattern of `target_module_patterns` or of `C:`; run before
    anything is written, so a run that cannot be built fails with one line.
    """
    return module_C(config.C, match_module_names(target, config.target_module_patterns))


class ComponentModel(nn.Module):
    """A frozen target model whose chosen layers are decomposed into subcomponents, C of them
    per layer: one number for every layer, or a number per decomposed module name (`module_C`)."""

    def __init__(
        self,
        target: nn.Module,
        target_module_patterns: list[str],
        C: int | Mapping[str, int],
        ci_fn_type: str = "mlp",
        ci_fn_hidden_dims: list[int] | None = None,
        ci_fn_params: Mapping[str, Any] | None = None,
        output_attr: str | None = None,
        tied_weights: list[tuple[str, str]] | None = None,
        tied_weights_mode: TiedWeightsMode = "shared_storage",
    ) -> None:
        super().__init__()
        self.output_attr = output_attr
        target.requires_grad_(False)
        self.target = target
        self.module_names = match_module_names(target, target_module_patterns)
        self.module_C = _per_module_C(C, self.module_names)
        self.decomposed: dict[str, DecomposedModule] = {}
        for name in self.module_names:
            original = target.get_submodule(name)
            wrapper = DecomposedModule(original, _build_components(original, self.module_C[name]))
            target.set_submodule(name, wrapper)
            self.decomposed[name] = wrapper
        self.ci_fn_type = ci_function_type(ci_fn_type)
        # Built after every layer's components (which draw no random numbers), in module order.
        self.ci_fns = self.ci_fn_type.build(
            {name: layer_shape(comp) for name, comp in self.components.items()},
            [16] if ci_fn_hidden_dims is None else ci_fn_hidden_dims,
            self.ci_fn_type.params_model.model_validate(ci_fn_params or {}),
        )
        for source, tied in tied_weights or []:
            for name in (source, tied):
                if name not in self.decomposed:
                    raise SPDUserError(
                        f"tied_weights names '{name}', which is not a decomposed module "
                        f"(decomposed: {', '.join(self.module_names)})"
                    )
            if self.module_C[source] != self.module_C[tied]:
                raise SPDUserError(
                    f"tied_weights ['{source}', '{tied}']: C is {self.module_C[source]} and "
                    f"{self.module_C[tied]}; give tied modules the same C"
                )
            self.components[tied].tie_to(self.components[source], tied_weights_mode)
        # Set once the first training batch has confirmed the target's `independent_rows`
        # promise (`spd.losses.row_selection.check_independent_rows`).
        self.independent_rows_checked = False

    def _apply(self, fn: Any, recurse: bool = True) -> "ComponentModel":  # pyright: ignore[reportIncompatibleMethodOverride]
        # `.to(device)` and the like give every parameter a tensor of its own; a shared-storage
        # tie must share again afterwards.
        super()._apply(fn, recurse)
        for comp in self.components.values():
            comp.retie()
        return self

    def optimizer_param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """`params` as AdamW parameter groups: the shared-storage tied factors in a group of their own.

        A fused (or foreach) AdamW updates the tensors of one group in one kernel; two parameters
        over the same storage in one kernel could race on CUDA and lose an update. One group after
        the other applies both updates, in order, on every device.
        """
        aliased = {
            id(p)
            for comp in self.components.values()
            if comp.tied_mode == "shared_storage"
            for p in comp.parameters()
        }
        groups = [
            [p for p in params if id(p) not in aliased],
            [p for p in params if id(p) in aliased],
        ]
        return [{"params": group} for group in groups if group]

    @property
    def components(self) -> dict[str, Components]:
        return {name: wrapper.components for name, wrapper in self.decomposed.items()}

    def ci_fn(self, name: str) -> nn.Module:
        """Layer `name`'s own CI function (a CI-function type with one function per layer)."""
        assert isinstance(self.ci_fns, LayerwiseCIFunctions), "the CI function sees every layer"
        return self.ci_fns[module_key(name)]

    def init_components_from_target(self, seed: int) -> None:
        """Initialise every layer's factors from its target weight (docs/method.md, 'Objects')."""
        generator = torch.Generator().manual_seed(seed)
        for wrapper in self.decomposed.values():
            weight = wrapper.original.weight
            assert isinstance(weight, Tensor)
            wrapper.components.init_from_target(weight, generator)

    def target_weight(self, name: str) -> Tensor:
        weight = self.decomposed[name].original.weight
        assert isinstance(weight, Tensor)
        return weight

    # ----- forward modes -----

    def _output(self, out: Any) -> Tensor:
        if self.output_attr is not None:
            out = getattr(out, self.output_attr)
        assert isinstance(out, Tensor)
        return out

    def forward(self, x: Tensor) -> Tensor:  # pyright: ignore[reportIncompatibleMethodOverride]
        """The unmodified target."""
        return self._output(self.target(x))

    def forward_with_pre_acts(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The target's output and the input each decomposed layer received."""
        out, pre_acts, streams = self.forward_with_pre_act_streams(x)
        dense = {
            name: streams[name].dense() if name in streams else pre_acts[name]
            for name in self.module_names
        }
        return out, dense

    def forward_with_pre_act_streams(
        self, x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, LowRankStream]]:
        """`forward_with_pre_acts`, except that an input the target passed as a `LowRankStream`
        (`spd.models.low_rank_stream`) is returned in `streams` in its factored form, and not
        formed densely: `pre_acts` holds the other layers' inputs."""
        for wrapper in self.decomposed.values():
            wrapper.capture_input = True
        try:
            out = self.forward(x)
            pre_acts: dict[str, Tensor] = {}
            streams: dict[str, LowRankStream] = {}
            for name, wrapper in self.decomposed.items():
                if wrapper.captured_stream is not None:
                    streams[name] = wrapper.captured_stream
                    continue
                assert wrapper.captured_input is not None, f"layer '{name}' was not called"
                pre_acts[name] = wrapper.captured_input
        finally:
            for wrapper in self.decomposed.values():
                wrapper.capture_input = False
                wrapper.captured_input = None
                wrapper.captured_stream = None
        return out, pre_acts, streams

    @contextmanager
    def _components_active(self, masks: Mapping[str, MaskLike]) -> Iterator[None]:
        unknown = set(masks) - set(self.decomposed)
        if unknown:
            raise KeyError(f"no decomposed module named {sorted(unknown)}")
        try:
            for name, mask in masks.items():
                self.decomposed[name].mode = "components"
                self.decomposed[name].mask = as_module_mask(mask)
            yield
        finally:
            for name in masks:
                self.decomposed[name].mode = "original"
                self.decomposed[name].mask = None

    def forward_with_components(self, x: Tensor, masks: Mapping[str, MaskLike]) -> Tensor:
        """Run with the layers in `masks` replaced by their components: each under its
        `ModuleMask` (delta component, route), or a plain component mask (`None`: unmasked)."""
        with self._components_active(masks):
            return self.forward(x)

    def forward_with_components_and_inputs(
        self, x: Tensor, masks: Mapping[str, MaskLike]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`forward_with_components`, plus the input every decomposed layer received in that
        pass (dense), as `forward_with_pre_acts` returns the target's."""
        with self._components_active(masks):
            return self.forward_with_pre_acts(x)

    # ----- causal importance -----

    def causal_importances(
        self,
        pre_acts: Mapping[str, Tensor],
        sigmoid_type: SigmoidType,
        detach_inputs: bool = False,
        streams: Mapping[str, LowRankStream] | None = None,
    ) -> tuple[dict[str, Float[Tensor, "... C"]], dict[str, Float[Tensor, "... C"]]]:
        """(mask-side CI, loss-side 'upper' CI) per decomposed layer, each in [0, 1] (upper may exceed 1).

        The layers are those of `pre_acts` and of `streams` (factored inputs, from
        `forward_with_pre_act_streams`), whose inner activations are computed through the small
        factors.
        """
        mask_fn, loss_fn = get_sigmoids(sigmoid_type)
        raw: dict[str, Tensor] = self.ci_fns(
            self._ci_fn_inputs(pre_acts, streams or {}, detach_inputs)
        )
        ci = {name: mask_fn(r) for name, r in raw.items()}
        ci_upper = {name: loss_fn(r) for name, r in raw.items()}
        return ci, ci_upper

    def _ci_fn_inputs(
        self,
        pre_acts: Mapping[str, Tensor],
        streams: Mapping[str, LowRankStream],
        detach: bool,
    ) -> dict[str, Tensor]:
        """What the CI functions read (`ci_fn_type.reads`) of each layer in `pre_acts` or
        `streams`, in module order: its inner activations x @ V, or its input x."""
        inputs: dict[str, Tensor] = {}
        for name in self.module_names:
            if name not in pre_acts and name not in streams:
                continue
            stream = streams.get(name)
            if self.ci_fn_type.reads == "inner_acts":
                x = (
                    self.components[name].inner_acts(pre_acts[name])
                    if stream is None
                    else stream.project(self.components[name].V)
                )
            else:
                x = pre_acts[name] if stream is None else stream.dense()
            inputs[name] = x.detach() if detach else x
        return inputs

    # ----- persistence -----

    def decomposition_state(self) -> dict[str, dict[str, Tensor]]:
        """The trained parameters only (components and CI functions), without the target.

        A tied module's factors are left out (they are its source's, transposed), so the state
        is the same whichever `tied_weights_mode` wrote it.
        """
        return {
            "components": {
                f"{module_key(name)}.{k}": v
                for name, comp in self.components.items()
                for k, v in comp.state_dict().items()
                if not (comp.is_tied and k in TIED_FACTORS)
            },
            "ci_fns": self.ci_fns.state_dict(),
        }

    def load_decomposition_state(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load what `decomposition_state` returned, or what an earlier version wrote (the CI
        functions under 'gates')."""
        for name, comp in self.components.items():
            prefix = f"{module_key(name)}."
            own = {
                k[len(prefix) :]: v for k, v in state["components"].items() if k.startswith(prefix)
            }
            if not comp.is_tied:
                comp.load_state_dict(own)
                continue
            # A shared-storage tie's own factors are filled by loading its source.
            missing, unexpected = comp.load_state_dict(own, strict=False)
            bad_missing = [k for k in missing if k not in TIED_FACTORS]
            if bad_missing or unexpected:
                raise RuntimeError(
                    f"state of tied module '{name}': missing {bad_missing}, unexpected {unexpected}"
                )
        self.ci_fns.load_state_dict(state["ci_fns" if "ci_fns" in state else "gates"])

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ComponentModel":
        """Load a trained decomposition from a run directory, a checkpoint file inside one, or a
        W&B run `wandb:<entity>/<project>/runs/<id>` (downloaded once, then cached).

        The target is rebuilt from the checkpoint's config; the model is returned in eval mode.
        """
        return cls.from_pretrained_with_config(path)[0]

    @classmethod
    def from_pretrained_with_config(cls, path: str | Path) -> tuple["ComponentModel", Config]:
        """`from_pretrained`, with the config the checkpoint was trained with."""
        resolved = resolve_run_path(path)
        if resolved is None:
            raise SPDUserError(f"no such run directory or checkpoint: {path}")
        file = latest_checkpoint(resolved) if resolved.is_dir() else resolved
        data = read_checkpoint(file)
        config = checkpoint_config(data, file)
        model = build_component_model(load_target_model(config), config)
        try:
            model.load_decomposition_state(data["decomposition"])
        except (RuntimeError, KeyError) as err:
            raise SPDUserError(
                f"{file} does not match its config's architecture: {err}".split("\n")[0]
            ) from None
        model.eval()
        return model, config


def build_component_model(target: nn.Module, config: Config) -> ComponentModel:
    """Wrap `target` as the config says (patterns, C, CI functions, tied weights)."""
    return ComponentModel(
        target,
        target_module_patterns=config.target_module_patterns,
        C=config_module_C(target, config),
        ci_fn_type=config.ci_fn_type,
        ci_fn_hidden_dims=config.ci_fn_hidden_dims,
        ci_fn_params=config.ci_fn_params,
        output_attr=config.pretrained_model_output_attr,
        tied_weights=config.tied_weights,
        tied_weights_mode=config.tied_weights_mode,
    )


# The parameter names of a `Components`; a tied module's are its source's, never stored.
TIED_FACTORS = ("_V", "_U")


def layer_shape(components: Components) -> LayerShape:
    """What a CI function knows of the layer `components` decomposes."""
    return LayerShape(
        components.d_in,
        components.d_out,
        components.C,
        token_input=isinstance(components, EmbeddingComponents),
    )
