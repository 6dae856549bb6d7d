"""The mean-field reverse-KL term: query layout, the KL itself by hand, the reference forwards it costs, and its value
against a naive per-position recomputation."""

import math

import pytest
import torch

from trl_t3d import DDOTrainer, testing
from trl_t3d.losses import mean_field_kl, mean_field_queries


@pytest.fixture(scope="module")
def tok():
    return testing.make_tokenizer()


def config(tmp_path, **kw):
    settings = {"max_steps": 1, "learning_rate": 1e-3, "random_token_ratio": 0.0, "loss_type": ["ntd", "mean_field"]}
    return testing.quick_ddo_config(tmp_path / "out", **{**settings, **kw})


def trajectories(tok, n=4, completion_length=8, block_length=4):
    return testing.synthetic_trajectories(tok, n, completion_length, block_length, 0, prompt_lengths=(4, 5, 6))


class _Counter:
    def __init__(self, module):
        self.count = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.count += 1


def test_queries_take_one_masked_position_per_block_each():
    mask = torch.tensor([[1, 1, 0, 1, 0, 1, 1, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    queries = mean_field_queries(mask, block_length=4, num_queries=4, generator=torch.Generator().manual_seed(0))
    assert queries.shape == (4, 2, 10)
    assert torch.equal(queries.sum(0), mask.long())  # every masked position in exactly one query, nothing else
    per_block = torch.nn.functional.pad(queries.long(), (0, 2)).view(4, 2, 3, 4).sum(-1)
    assert int(per_block.max()) == 1  # never two positions of one block in one query
    few = mean_field_queries(mask, block_length=4, num_queries=2, generator=torch.Generator().manual_seed(0))
    covered = torch.nn.functional.pad(few.any(0).long(), (0, 2)).view(2, 3, 4).sum(-1)
    assert covered.tolist() == [[2, 2, 2], [0, 2, 0]]  # min(masked in the block, queries)
    with pytest.raises(ValueError, match="mean_field_queries"):
        mean_field_queries(mask, 4, 0)


def test_kl_by_hand():
    q = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    p = torch.tensor([[0.25, 0.75], [0.9, 0.1]]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert mean_field_kl(q, p).tolist() == pytest.approx([expected, 0.0], abs=1e-6)


def test_one_reference_forward_per_query_and_none_for_empty_queries(tmp_path, tok):
    args = config(tmp_path, mask_ratios=[1.0], mean_field_queries=6, per_device_train_batch_size=2)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    assert trainer.ref_model is not None  # the term reads the frozen teacher
    policy, ref = _Counter(trainer.model), _Counter(trainer.ref_model)
    trainer.train()
    # one optimizer step: 1 policy forward; 4 reference forwards (a fully masked block of 4 has 4 positions, so
    # queries 5 and 6 are empty and skipped)
    assert (policy.count, ref.count) == (1, 4)
    assert [h for h in trainer.state.log_history if "loss_mean_field" in h]


def test_value_equals_a_naive_per_position_recomputation(tmp_path, tok):
    """Argmax filling and as many queries as the block is long: the term is the mean over masked positions of
    KL(q_i || p_ref(. | x_t with every other masked position set to the student's argmax))."""
    policy = testing.make_generic_mlm(tok, seed=1)
    args = config(tmp_path, loss_type=["mean_field"], mean_field_temperature=0.0, mean_field_queries=4)
    trainer = DDOTrainer(policy, args=args, train_dataset=trajectories(tok), processing_class=tok)
    with torch.no_grad():  # make the reference differ from the policy
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model.train(), batch)

    with torch.no_grad():
        q = trainer._completion_logits(trainer.model, batch).float().log_softmax(-1)
        argmax = q.argmax(-1)
        per_example, agreement = [], []
        for b in range(batch["xt"].shape[0]):
            kls, agrees = [], []
            for i in batch["loss_mask"][b].nonzero().flatten().tolist():
                others = batch["loss_mask"][b].clone()
                others[i] = False
                xt = batch["xt"].clone()
                xt[b, others] = argmax[b, others]
                p = trainer._completion_logits(trainer.ref_model, dict(batch, xt=xt))[b, i].float().log_softmax(-1)
                kls.append(float((q[b, i].exp() * (q[b, i] - p)).sum()))
                agrees.append(float(p.argmax() == q[b, i].argmax()))
            per_example.append(sum(kls) / max(len(kls), 1))
            agreement.append(sum(agrees) / max(len(agrees), 1))
    assert loss.item() == pytest.approx(sum(per_example) / len(per_example), rel=1e-5)
    assert trainer._metrics["train"]["loss_mean_field"][-1] == pytest.approx(loss.item(), rel=1e-5)
    expected_agreement = sum(agreement) / len(agreement)
    assert trainer._metrics["train"]["mean_field/teacher_agrees"][-1] == pytest.approx(expected_agreement, abs=1e-6)


def test_gradient_reaches_the_policy_only(tmp_path, tok):
    args = config(tmp_path, loss_type=["mean_field"])
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    with torch.no_grad():
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.compute_loss(trainer.model.train(), batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    assert all(p.grad is None for p in trainer.ref_model.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mean_field_queries": 0}, "mean_field_queries"), ({"mean_field_temperature": -1.0}, "mean_field_temperature")],
)
def test_bad_settings_name_the_field(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **kwargs)


def test_t3d_mf_on_block_causal_lora_costs_three_forwards(tmp_path, tok, sdar_dir):
    """The objective recommended for block-causal families in blocks of 4 (`t3d_mf`) on SDAR with LoRA: the reference
    is the base model with adapters disabled; DDO reads it once and the one default query once more. The cost guard
    of issue #23: 3 forwards per micro-step against T3D's 2 (the 4-query setting ran 6 and cost 1.7-1.9x a T3D step)."""

    args = config(tmp_path, loss_type="t3d_mf", trust_remote_code=True, mask_ratios=[1.0])  # fully masked blocks
    trainer = testing.ddo_trainer(sdar_dir, args, trajectories(tok, completion_length=10), tok, lora=True)
    assert trainer.loss_terms == {"ddo": 1.0, "path": 0.2, "mean_field": 1.0} and trainer.ref_model is None
    root = _Counter(trainer.model.get_base_model())
    trainer.train()
    assert root.count == 1 + 1 + 1  # policy, DDO's reference, 1 query (blocks of 4: one position per block)
    logged = [h for h in trainer.state.log_history if "loss_mean_field" in h]
    assert logged and math.isfinite(logged[0]["loss_mean_field"])


def test_a_teacher_that_ignores_context_agrees_everywhere_and_costs_nothing(tmp_path, tok):
    """With attention outputs zeroed, each position's prediction depends on its own token only: the teacher's
    conditional at a queried (noised) position equals the student's prediction there, whatever fills the rest."""
    model = testing.make_generic_mlm(tok, seed=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    trainer = DDOTrainer(model, args=config(tmp_path), train_dataset=trajectories(tok), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model.train(), batch)
    metrics = trainer._metrics["train"]
    assert metrics["loss_mean_field"][-1] == pytest.approx(0.0, abs=1e-6)
    assert metrics["mean_field/teacher_agrees"][-1] == 1.0
    assert loss.item() == pytest.approx(metrics["loss_ntd"][-1], abs=1e-6)


# ---------------------------------------------------------------------------------------------- what the teacher sees
def _query_states(trainer, batch):
    """The states x_t the reference scores for the mean-field queries of one training step on `batch`."""
    seen, original = [], trainer._completion_logits

    def recording(model, inputs):
        seen.append((model, inputs["xt"].clone()))
        return original(model, inputs)

    trainer._completion_logits = recording
    trainer.compute_loss(trainer.model.train(), batch)
    del trainer._completion_logits
    return [xt for model, xt in seen if model is trainer.ref_model]


def test_queried_positions_show_the_teacher_the_mask_token(tmp_path, tok):
    """With random tokens in x_t (random_token_ratio 0.5) every queried position still holds the mask token: each
    masked position is queried once (4 queries, blocks of 4), so the query states hold |M| mask tokens in all."""
    args = config(tmp_path, loss_type=["mean_field"], random_token_ratio=0.5, mask_ratios=[1.0], mean_field_queries=4)
    trainer = DDOTrainer(
        testing.make_generic_mlm(tok), args=args, train_dataset=trajectories(tok), processing_class=tok
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    mask_id = trainer.adapter.mask_token_id
    assert bool(((batch["xt"] != mask_id) & batch["loss_mask"]).any())  # the collator placed random tokens
    states = _query_states(trainer, batch)
    assert len(states) == 4
    shown = sum(int(((xt == mask_id) & batch["loss_mask"]).sum()) for xt in states)
    assert shown == int(batch["loss_mask"].sum())


def test_the_fill_never_holds_the_mask_token(tmp_path, tok):
    """A student whose every prediction is the mask token: the fill takes its best other token, so a query state
    holds the mask at its queried positions only (one per block)."""
    model = testing.make_generic_mlm(tok)
    mask_id = tok.mask_token_id
    with torch.no_grad():
        model.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.get_output_embeddings().bias[mask_id] = 100.0
    args = config(tmp_path, loss_type=["mean_field"], mask_ratios=[1.0], mean_field_queries=4)
    trainer = DDOTrainer(model, args=args, train_dataset=trajectories(tok), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for xt in _query_states(trainer, batch):
        per_block = ((xt == mask_id) & batch["loss_mask"]).view(4, 2, 4).sum(-1)
        assert int(per_block.max()) == 1, per_block


def test_keyed_noise_does_not_depend_on_the_batch(tmp_path, tok):
    """Fake tokens at temperature 1, the mean-field fill at temperature 1 and the query order (4 queries in blocks of
    8) are drawn per example from its state key: one batch of 4 gives the mean of the four batches of 1, which is what
    makes N processes train the numbers of one."""
    rows = testing.synthetic_trajectories(tok, 4, 16, 8, 0, prompt_lengths=(5,))
    args = config(
        tmp_path,
        loss_type=["ddo", "mean_field"],
        reference_temperature=1.0,
        mean_field_temperature=1.0,
        mean_field_queries=4,
        mask_ratios=[1.0],
    )
    trainer = DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=rows, processing_class=tok)
    with torch.no_grad():
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    features = [trainer.train_dataset[k] for k in range(4)]
    with torch.no_grad():
        together = trainer.compute_loss(trainer.model.train(), trainer.data_collator(features))
        alone = [trainer.compute_loss(trainer.model, trainer.data_collator([f])) for f in features]
    assert together.item() == pytest.approx(sum(a.item() for a in alone) / 4, rel=1e-6)


def test_evaluation_does_not_change_training(tmp_path, tok):
    """Evaluating every step (the default objective: DDO + path + mean-field, fake tokens at temperature 1) leaves
    the training losses and weights exactly those of a run without evaluation; evaluation skips the mean-field term's
    extra forwards."""

    def run(name, **kw):
        args = testing.quick_ddo_config(
            tmp_path / name, max_steps=3, learning_rate=1e-2, reference_temperature=1.0, mean_field_temperature=1.0,
            loss_type="t3d_mf", mean_field_queries=4, **kw,
        )  # fmt: skip
        data = trajectories(tok, n=6, completion_length=16, block_length=8)
        trainer = DDOTrainer(testing.make_generic_mlm(tok), args=args, train_dataset=data, eval_dataset=data,
                             processing_class=tok)  # fmt: skip
        counter = _Counter(trainer.ref_model)
        trainer.train()
        return trainer, counter

    plain, _ = run("plain")
    evaluated, counter = run("evaluated", eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=2)
    train_losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert any("eval_loss" in h for h in evaluated.state.log_history)
    assert not any("eval_loss_mean_field" in h for h in evaluated.state.log_history)
    assert train_losses(evaluated) == train_losses(plain)
    for (name, a), b in zip(evaluated.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(a, b), name
    # 3 training steps x (1 DDO + 4 queries) + 3 evaluations x 3 batches x 1 DDO forward
    assert counter.count == 3 * 5 + 3 * 3
