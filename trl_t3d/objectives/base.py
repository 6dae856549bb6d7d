"""Loss terms as components: the term interface, the step context every term reads, and the registries.

A term is one small class: a `name`, whether it reads the frozen reference, the `DDOConfig` fields it reads, and
`compute(ctx)` returning per-example losses and metrics. The `StepContext` of a micro-batch computes what terms share
lazily and once: the policy forward at the trajectory state x_t, the reference forward (with the fake tokens ŷ drawn
once from it), keyed noise. A term that nobody in the objective uses costs nothing: an objective without a term that
reads the reference never runs it, and one whose terms build their own states never runs the policy at x_t.

An objective is a named list of weighted terms (`register_objective`); `DDOConfig.loss_type` names one, or lists terms.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..losses import masked_log_probs, picked_token_logps, sample_fake_tokens

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable


@dataclasses.dataclass
class TermOutput:
    """What a term returns: `loss` per example (B,), and metrics (per example (B,) or one value) logged as
    `loss_<name>` is, by their key."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class LossTerm:
    """One term of the objective. Subclass it, set `name` (and `reads_reference`, `settings`), implement `compute`,
    and register it with `@register_loss_term`; then `DDOConfig(loss_type=[..., name])` trains with it.

    Class attributes:
        name: the term's name in `loss_type` and in the logs (`loss_<name>`).
        reads_reference: whether it reads the frozen reference (the teacher); without such a term none is kept.
        settings: the `DDOConfig` fields it reads: named on the model card; changed without the term, they warn.
        default_weight: its weight when `loss_weights` is not given: a number, or the name of a `DDOConfig` field.
        training_only: skipped at evaluation (a training signal whose extra forwards measure nothing).
    """

    name: ClassVar[str] = ""
    reads_reference: ClassVar[bool] = False
    settings: ClassVar[tuple[str, ...]] = ()
    default_weight: ClassVar[float | str] = 1.0
    training_only: ClassVar[bool] = False

    def __init__(self, args):
        self.args = args

    def compute(self, ctx: StepContext) -> TermOutput:
        raise NotImplementedError

    def describe(self) -> str:
        """Its settings as `name = value` (for the model card)."""
        return ", ".join(f"{s} = {getattr(self.args, s)}" for s in self.settings)


# ------------------------------------------------------------------------------------------------ registries
_TERMS: dict[str, type[LossTerm]] = {}
_OBJECTIVES: dict[str, tuple[tuple[str, float | str | None], ...]] = {}


def register_loss_term(cls: type[LossTerm] | None = None, *, overwrite: bool = False):
    """Class decorator that makes a `LossTerm` subclass available to `DDOConfig.loss_type` by its `name`."""

    def register(term_cls: type[LossTerm]) -> type[LossTerm]:
        if not (isinstance(term_cls, type) and issubclass(term_cls, LossTerm)):
            raise TypeError(f"{term_cls!r} is not a subclass of trl_t3d.LossTerm.")
        name = term_cls.name
        if not name or not name.isidentifier():
            raise ValueError(f"{term_cls.__name__}.name must be a non-empty identifier, got {name!r}.")
        if name in _OBJECTIVES:
            raise ValueError(f"'{name}' names an objective already: give the term another name.")
        if name in _TERMS and _TERMS[name] is not term_cls and not overwrite:
            raise ValueError(
                f"A loss term named '{name}' is registered already ({_TERMS[name].__qualname__}): pick another name, "
                "or pass overwrite=True to replace it."
            )
        _TERMS[name] = term_cls
        return term_cls

    return register(cls) if cls is not None else register


def register_objective(name: str, terms: list[tuple[str, float | str | None]] | tuple, overwrite: bool = False):
    """A named objective: `[(term, weight), ...]`, a weight `None` meaning the term's `default_weight` (a number or a
    `DDOConfig` field such as `"lambda_path"`)."""
    if name in _TERMS:
        raise ValueError(f"'{name}' names a loss term already: give the objective another name.")
    if name in _OBJECTIVES and not overwrite:
        raise ValueError(f"An objective named '{name}' is registered already; pass overwrite=True to replace it.")
    _OBJECTIVES[name] = tuple((term, weight) for term, weight in terms)


def loss_term_names() -> list[str]:
    return list(_TERMS)


def objective_names() -> list[str]:
    return list(_OBJECTIVES)


def loss_term_class(name: str) -> type[LossTerm]:
    if name not in _TERMS:
        raise ValueError(f"Unknown loss term '{name}': registered terms are {loss_term_names()}.")
    return _TERMS[name]


def resolve_objective(loss_type, loss_weights, args) -> dict[str, float]:
    """`{term: weight}` from `loss_type` (an objective's name, or a list of term names) and `loss_weights`; every
    error names the valid choices."""
    if isinstance(loss_type, (list, tuple)) and len(loss_type) == 1 and loss_type[0] in _OBJECTIVES:
        loss_type = loss_type[0]
    if isinstance(loss_type, str) and loss_type in _OBJECTIVES:
        if loss_weights is not None:
            raise ValueError(
                f"`loss_weights` applies to a list of terms, not to the named objective (a preset of terms) loss_type={loss_type!r}. Give "
                f"loss_type={[t for t, _ in _OBJECTIVES[loss_type]]} with loss_weights, or drop loss_weights."
            )
        pairs = list(_OBJECTIVES[loss_type])
    else:
        terms = [loss_type] if isinstance(loss_type, str) else list(loss_type or [])
        unknown = [t for t in terms if t not in _TERMS]
        if not terms or unknown or len(set(terms)) != len(terms):
            raise ValueError(
                f"Invalid loss_type={loss_type!r}: use an objective {sorted(_OBJECTIVES)} or a list of distinct terms "
                f"among {loss_term_names()} (`trl_t3d.register_loss_term` adds your own)."
            )
        if loss_weights is None:
            pairs = [(t, None) for t in terms]
        else:
            if len(loss_weights) != len(terms):
                raise ValueError(f"`loss_weights`={loss_weights} must give one weight per term of loss_type={terms}.")
            pairs = list(zip(terms, loss_weights))
    resolved = {}
    for term, weight in pairs:
        if weight is None:
            weight = loss_term_class(term).default_weight
        if isinstance(weight, str):
            weight = getattr(args, weight)
        if float(weight) < 0:
            raise ValueError(f"The weight of '{term}' must be >= 0, got {weight}.")
        resolved[term] = float(weight)
    return resolved


# ------------------------------------------------------------------------------------------------ step context
@dataclasses.dataclass
class ReferenceOutputs:
    """The one reference forward at x_t, read by every term that needs it: the masked rows' log-probs (N, V), the
    fake tokens ŷ (B, L; drawn once, scored by reference and policy) and log p_ref of y and ŷ per position (B, L)."""

    log_probs: torch.Tensor
    fake: torch.Tensor
    real_token_logps: torch.Tensor
    fake_token_logps: torch.Tensor


class StepContext:
    """What the terms of one micro-batch share, each computed at most once and only when a term asks for it.

    Attributes: `inputs` (the collator's batch), `loss_mask` (B, L) bool, `labels` (x_0), `block_length`, `mode`
    ("train" / "eval"), `args`, `adapter`, `forwards` (a Counter of the forwards run: "policy", "reference", ...).
    """

    def __init__(
        self,
        inputs: dict,
        *,
        args,
        adapter,
        mode: str,
        policy_forward: Callable[[dict], torch.Tensor],
        reference_forward: Callable[[dict], torch.Tensor] | None,
        uniform: Callable[[str, dict, torch.Tensor, int, Any], torch.Tensor],
    ):
        self.inputs, self.args, self.adapter, self.mode = inputs, args, adapter, mode
        self.loss_mask = inputs["loss_mask"].bool()
        self.labels = inputs["x0"]
        self.block_length = int(inputs["block_length"][0])
        self.forwards: Counter = Counter()
        self._policy_forward, self._reference_forward, self._uniform = policy_forward, reference_forward, uniform
        self._cache: dict[str, Any] = {}

    # the policy at x_t ---------------------------------------------------------------------------------
    @property
    def policy_log_probs(self) -> torch.Tensor:
        """fp32 log-softmax of the policy at the masked rows (N, V), with gradient: one policy forward."""
        if "policy_log_probs" not in self._cache:
            self._cache["policy_log_probs"] = masked_log_probs(self.policy_logits(self.inputs), self.loss_mask)
        return self._cache["policy_log_probs"]

    @property
    def policy_token_logps(self) -> torch.Tensor:
        """log p_θ(y_i | x_t) at the masked positions, (B, L), 0 elsewhere."""
        if "policy_token_logps" not in self._cache:
            self._cache["policy_token_logps"] = picked_token_logps(self.policy_log_probs, self.loss_mask, self.labels)
        return self._cache["policy_token_logps"]

    def policy_logits(self, state: dict) -> torch.Tensor:
        """Completion logits of the policy at another state (e.g. a term's own noising of x_0), with gradient."""
        self.forwards["policy"] += 1
        return self._policy_forward(state)

    # the reference -------------------------------------------------------------------------------------
    @property
    def reference(self) -> ReferenceOutputs:
        """The reference at x_t (no gradient): one forward, shared by every term that reads it."""
        if "reference" not in self._cache:
            with torch.no_grad():
                rows = self.reference_logits(self.inputs)[self.loss_mask].float()
                noise = None
                if self.args.reference_temperature > 0:
                    counts = self.loss_mask.sum(-1)
                    noise = self.uniform("fake_tokens", counts, rows.shape[-1], rows.device)
                fake_rows = sample_fake_tokens(
                    rows, self.args.reference_temperature, uniform=noise, never_id=self.never_id
                )
                log_probs = rows.log_softmax(-1)
                del rows
                fake = self.labels.masked_scatter(self.loss_mask, fake_rows)
                self._cache["reference"] = ReferenceOutputs(
                    log_probs=log_probs,
                    fake=fake,
                    real_token_logps=picked_token_logps(log_probs, self.loss_mask, self.labels),
                    fake_token_logps=picked_token_logps(log_probs, self.loss_mask, fake),
                )
        return self._cache["reference"]

    def reference_logits(self, state: dict) -> torch.Tensor:
        """Completion logits of the frozen reference at a state (no gradient)."""
        if self._reference_forward is None:
            raise RuntimeError("This objective keeps no reference: a term reading it must set `reads_reference`.")
        self.forwards["reference"] += 1
        with torch.no_grad():
            return self._reference_forward(state)

    # randomness and ids --------------------------------------------------------------------------------
    def uniform(self, name: str, counts: torch.Tensor, width: int, device=None) -> torch.Tensor:
        """Uniform noise (counts.sum(), width), example i's `counts[i]` rows keyed by its state key (see
        `trl_t3d/trainer/randomness.py`): independent of processes, batches and evaluation."""
        return self._uniform(name, self.inputs, counts, width, device or self.loss_mask.device)

    @property
    def never_id(self) -> int | None:
        """The mask token, which one-shot predictions never write (None for uniform-noise families)."""
        return self.adapter.mask_token_id if self.adapter.noise == "mask" else None

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """A value several terms read (computed by the first that asks)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]
