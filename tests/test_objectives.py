"""The objective as components: a user's own term trains and is logged, terms share one lazily computed policy and
reference forward, and the TAD and SFT terms equal their formulas computed by hand."""

import math

import pytest
import torch

from trl_t3d import DDOTrainer, LossTerm, TermOutput, register_loss_term, testing
from trl_t3d.losses import tad_loss


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


def config(tmp_path, **kw):
    return testing.quick_ddo_config(tmp_path / "out", **{"max_steps": 2, "learning_rate": 1e-3, **kw})


def trajectories(tok, n=4, completion_length=8, block_length=4):
    return testing.synthetic_trajectories(tok, n, completion_length, block_length, 0, prompt_lengths=(5,))


@register_loss_term
class ConfidenceTerm(LossTerm):
    """A user's term, defined here: the mean max-probability deficit of the policy at the masked positions."""

    name = "test_confidence"
    settings = ("beta",)

    def compute(self, ctx):
        top = ctx.policy_log_probs.max(-1).values.exp()  # (N,)
        per_example = torch.zeros(ctx.loss_mask.shape, device=top.device).masked_scatter(ctx.loss_mask, 1 - top)
        loss = per_example.sum(-1) / ctx.loss_mask.sum(-1).clamp(min=1)
        return TermOutput(loss, {"test_confidence/top": 1 - loss.detach()})


class _Forwards:
    def __init__(self, module):
        self.count = 0
        module.register_forward_hook(lambda *args: setattr(self, "count", self.count + 1))


def test_a_users_term_trains_and_is_logged(tmp_path, tok):
    args = config(tmp_path, loss_type=["ntd", "test_confidence"], loss_weights=[1.0, 0.5])
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok),
                         processing_class=tok)  # fmt: skip
    assert trainer.loss_terms == {"ntd": 1.0, "test_confidence": 0.5} and trainer.ref_model is None
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss_test_confidence" in h]
    assert len(logged) == 2 and all(0 < h["test_confidence/top"] < 1 for h in logged)
    for h in logged:
        assert h["loss"] == pytest.approx(h["loss_ntd"] + 0.5 * h["loss_test_confidence"], rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert "test_confidence x 0.5 (beta = 0.1)" in trainer._objective_summary()  # the model card names it


def test_registering_a_taken_name_is_refused():
    class Again(LossTerm):
        name = "ddo"

    with pytest.raises(ValueError, match="registered already"):
        register_loss_term(Again)
    with pytest.raises(ValueError, match="t3d_mf"):  # an objective's name
        register_loss_term(type("Clash", (LossTerm,), {"name": "t3d_mf"}))
    with pytest.raises(TypeError, match="LossTerm"):
        register_loss_term(object)


def test_unknown_term_names_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match="register_loss_term"):
        config(tmp_path, loss_type=["ntd", "nope"])


@pytest.mark.parametrize(
    "loss_type, policy, reference",
    [
        (["ntd"], 1, 0),  # no reference kept or run
        (["sft"], 1, 0),  # its own noising: the trajectory state is never run
        (["ddo", "path"], 1, 1),  # T3D: one of each
        (["ddo", "path", "tad"], 1, 1),  # TAD reads the same reference forward as DDO
        (["ntd", "tad"], 1, 1),
    ],
)
def test_terms_share_one_policy_and_one_reference_forward(tmp_path, tok, loss_type, policy, reference):
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=config(tmp_path, loss_type=loss_type, max_steps=1),
                         train_dataset=trajectories(tok), processing_class=tok)  # fmt: skip
    policy_forwards = _Forwards(trainer.model)
    reference_forwards = _Forwards(trainer.ref_model) if trainer.ref_model is not None else None
    assert (trainer.ref_model is not None) == bool(reference)
    trainer.train()
    assert policy_forwards.count == policy
    if reference_forwards is not None:
        assert reference_forwards.count == reference
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert {f"loss_{t}" for t in loss_type} <= set(logged)
    assert not {f"loss_{t}" for t in ("ntd", "path", "ddo", "tad", "sft")} - {f"loss_{t}" for t in loss_type} & set(
        logged
    )  # a term outside the objective is neither computed nor logged


def test_tad_loss_by_hand():
    """One example, one block of 4, decode ranks 0..3, ranks 1-3 masked; near = the first 2 of them."""
    vocab = 3
    policy = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]]).log()  # rows of masked ranks 1, 2, 3
    teacher = torch.tensor([[0.3, 0.4, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]).log()
    mask = torch.tensor([[False, True, True, True]])
    labels = torch.tensor([[0, 1, 0, 2]])
    rank = torch.tensor([[0, 1, 2, 3]])
    token_logps = torch.zeros(1, 4)
    token_logps[mask] = policy.gather(-1, labels[mask][:, None])[:, 0]
    loss, near = tad_loss(policy, teacher, token_logps, mask, rank, 4, near_tokens=2, distant_weight=0.5)
    assert near.tolist() == [[False, True, True, False]]
    kl = sum(math.exp(float(teacher[2, v])) * float(teacher[2, v] - policy[2, v]) for v in range(vocab))
    expected = (-math.log(0.5) - math.log(0.6) + 0.5 * kl) / 3
    assert loss.tolist() == pytest.approx([expected], rel=1e-6)


def test_sft_term_by_hand(tmp_path, tok):
    """The SFT term's value equals the masked-diffusion loss recomputed from the state it drew: Σ_masked CE / t over
    the completion length; it masks at least one position per example and never the prompt."""
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=config(tmp_path, loss_type=["sft"]),
                         train_dataset=trajectories(tok), processing_class=tok)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[k] for k in range(4)])
    seen = {}
    original = trainer._completion_logits

    def recording(model, state):
        seen["state"] = state
        return original(model, state)

    trainer._completion_logits = recording
    loss = trainer.compute_loss(trainer.model.train(), batch)
    state = seen["state"]
    masked = state["loss_mask"]
    assert bool((masked.sum(-1) >= 1).all()) and torch.equal(state["prompt_ids"], batch["prompt_ids"])
    assert torch.equal(state["xt"][masked], torch.full((int(masked.sum()),), trainer.adapter.mask_token_id))
    ratio = masked.sum(-1).float() / batch["completion_mask"].sum(-1)
    with torch.no_grad():
        logp = original(trainer.model, state).float().log_softmax(-1).gather(-1, batch["x0"][..., None])[..., 0]
    # t is not returned; recover it from the logged mask ratio's expectation is impossible, so recompute with the
    # term's own keyed draw of t
    t = 1e-3 + (1 - 1e-3) * trainer._uniform("sft_time", batch, torch.ones(4, dtype=torch.long), 1, "cpu")[:, 0]
    expected = (-(logp * masked) / t[:, None].float()).sum(-1) / batch["completion_mask"].sum(-1)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert trainer._metrics["train"]["sft/mask_ratio"][-1] == pytest.approx(ratio.mean().item(), rel=1e-6)


def test_the_readme_term_trains(tmp_path, tok, monkeypatch):
    """The README's "Your own loss term" example, run as written (its DDOConfig in a temp folder), then trained."""
    import re
    from pathlib import Path

    from trl_t3d.objectives import base

    monkeypatch.setattr(base, "_TERMS", dict(base._TERMS))  # the README's registration ends with this test

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("#### Your own loss term") :]
    code = re.search(r"```py\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(code.replace('output_dir="out"', f'output_dir="{tmp_path}"'), "README", "exec"), namespace)  # noqa: S102
    args = namespace["args"]
    assert args.loss_terms() == {"ddo": 1.0, "path": 0.2, "confidence": 0.5}
    args.max_steps, args.logging_steps, args.report_to, args.use_cpu = 1, 1, [], True
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok),
                         processing_class=tok)  # fmt: skip
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert 0 < logged["confidence/top"] < 1 and "loss_confidence" in logged
