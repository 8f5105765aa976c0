"""TaNP: the KL between the support+query and support-only posteriors, the clustering
regulariser, FiLM/gating decoders, no use of query ratings at prediction, and learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from baselines.tanp import TaNP, clustering_loss, gaussian_kl, student_t_assignment
from metarec.nn import FiLM
from metarec.registry import get_learner, learner_entries


@pytest.fixture(scope="module")
def batch(synthetic_split):
    return synthetic_split.train.batch(torch.arange(8))


def test_registered_from_the_baselines_package():
    entry = learner_entries()["tanp"]
    assert entry.source == "baselines" and entry.origin == "entry-point"
    assert get_learner("tanp") is TaNP


def test_gaussian_kl_is_the_closed_form_summed_over_dimensions():
    g = torch.Generator().manual_seed(0)
    mu_p, lv_p, mu_q, lv_q = (torch.randn(4, 6, generator=g) for _ in range(4))
    ref = kl_divergence(Normal(mu_p, (0.5 * lv_p).exp()), Normal(mu_q, (0.5 * lv_q).exp())).sum(-1)
    assert torch.allclose(gaussian_kl(mu_p, lv_p, mu_q, lv_q), ref, atol=1e-5)
    assert torch.allclose(gaussian_kl(mu_p, lv_p, mu_p, lv_p), torch.zeros(4), atol=1e-6)


def test_training_kl_is_between_the_full_and_the_support_only_posterior(synthetic_split, batch):
    learner = TaNP.from_settings(synthetic_split.train.schema, overrides={"train_context": "support"}, seed=0)
    m = learner.model
    parts = learner.losses(batch, torch.Generator().manual_seed(0))
    feats = {k: torch.cat([batch.support_features[k], batch.query_features[k]], 1) for k in batch.support_features}
    x = m.embed(batch.user_features, feats)
    y = learner._scale(torch.cat([batch.support_ratings, batch.query_ratings], 1))
    full = torch.cat([batch.support_mask, batch.query_mask], 1)
    support_only = torch.cat([batch.support_mask, torch.zeros_like(batch.query_mask)], 1)
    ref = gaussian_kl(*m.posterior(x, y, full), *m.posterior(x, y, support_only))
    assert torch.allclose(parts["kl"], ref, atol=1e-6)
    assert (parts["kl"] > 0).all()
    # Without query ratings the target set is the context set: the two posteriors coincide.
    empty = dataclasses.replace(batch, query_mask=torch.zeros_like(batch.query_mask))
    assert torch.allclose(learner.losses(empty, torch.Generator().manual_seed(0))["kl"], torch.zeros(len(batch)), atol=1e-5)


def test_random_training_context_is_a_strict_subset_of_the_ratings(synthetic_split, batch):
    learner = TaNP.from_settings(synthetic_split.train.schema, overrides={"context_min": 5}, seed=0)
    gen = torch.Generator().manual_seed(1)
    every = torch.cat([batch.support_mask, batch.query_mask], 1)
    sizes = set()
    for _ in range(20):
        ctx = learner.context_mask(batch.support_mask, batch.query_mask, gen)
        assert not (ctx & ~every).any()
        n = int(ctx[0].sum())
        assert 5 <= n < every.shape[1]  # never all points, as in the official code
        sizes.add(n)
    assert len(sizes) > 3


def test_student_t_assignment_and_the_dec_clustering_regulariser():
    centroids = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    r = torch.tensor([[0.1, 0.0], [3.9, 0.2], [0.0, 3.5], [2.0, 2.0]])
    q = student_t_assignment(r, centroids, temperature=1.0)
    assert torch.allclose(q.sum(-1), torch.ones(4))
    assert q[:3].argmax(-1).tolist() == [0, 1, 2]
    d = (r.unsqueeze(1) - centroids).norm(dim=-1)  # unsquared, as the official code
    ref = (1 + d) ** -1.0
    assert torch.allclose(q, ref / ref.sum(-1, keepdim=True))
    # DEC: P_ik ~ Q_ik^2 / f_k, KL(P || Q) over the batch (F.kl_div, 'batchmean')
    p = q**2 / q.sum(0)
    p = p / p.sum(-1, keepdim=True)
    ref_loss = torch.nn.functional.kl_div(q.log(), p, reduction="batchmean")
    assert torch.allclose(clustering_loss(q), ref_loss, atol=1e-6)
    assert clustering_loss(q) > 0
    same = q[:1].expand(5, -1)  # identical rows: P = Q, nothing to sharpen
    assert clustering_loss(same).abs() < 1e-6
    # the regulariser pulls on the centroids (through Q), and on P unless detached
    c = centroids.clone().requires_grad_(True)
    clustering_loss(student_t_assignment(r, c, 1.0)).backward()
    assert c.grad.abs().sum() > 0
    # the official code lets the gradient flow through the target P too; detaching changes it
    grads = {}
    for detach in (False, True):
        logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        clustering_loss(torch.softmax(logits, -1), detach_target=detach).backward()
        grads[detach] = logits.grad
    assert not torch.allclose(grads[False], grads[True])


def test_film_and_gating_modulation():
    torch.manual_seed(0)
    h, cond = torch.randn(3, 5, 4), torch.randn(3, 2)
    film = FiLM(2, 4)
    gamma, beta = torch.tanh(film.gamma(cond)), torch.tanh(film.beta(cond))
    assert torch.allclose(film(h, cond), h * gamma[:, None] + beta[:, None])
    gate = FiLM(2, 4, mode="gating")
    d, e = torch.sigmoid(gate.gate(cond)), torch.tanh(gate.shared(cond))
    g2, b2 = torch.tanh(gate.gamma(cond)), torch.tanh(gate.beta(cond))
    assert torch.allclose(gate(h, cond), h * (g2 * d + e * (1 - d))[:, None] + (b2 * d + e * (1 - d))[:, None])
    assert film.gamma.bias is None  # no bias, as in the official decoder


@pytest.mark.parametrize("modulation,eval_z", [("film", "mean"), ("gating", "sample")])
def test_prediction_reads_no_query_rating(synthetic_split, batch, modulation, eval_z):
    learner = TaNP.from_settings(
        synthetic_split.train.schema, overrides={"modulation": modulation, "eval_z": eval_z}, seed=0
    )
    before = learner.adapt_and_predict(batch)
    hidden = dataclasses.replace(batch, query_ratings=torch.full_like(batch.query_ratings, float("nan")))
    after = learner.adapt_and_predict(hidden)
    assert torch.isfinite(after).all() and torch.equal(before, after)
    # ... but it does read the support ratings
    flipped = dataclasses.replace(batch, support_ratings=6.0 - batch.support_ratings)
    assert not torch.allclose(learner.adapt_and_predict(flipped), before)


def test_paper_preset_is_the_official_train_sh():
    p = TaNP.presets["paper"]
    assert (p["n_clusters"], p["temperature"], p["cluster_weight"], p["meta_lr"], p["epochs"]) == (10, 1.0, 1.0, 1e-4, 100)
    assert tuple(p["decoder_hidden"]) == (32, 32, 16) and p["task_dim"] == 16 and p["z_dim"] == 32


def test_beats_the_global_mean_on_synthetic_data(synthetic_split):
    train, test = synthetic_split.train, synthetic_split.test
    learner = TaNP.from_settings(
        train.schema, overrides={"epochs": 25, "meta_lr": 3e-3, "batch_size": 16, "drop_last": False}, seed=0
    )
    learner.meta_fit(train)
    pred = learner.predict(test)
    mae = float((pred - test.query_ratings).abs()[test.query_mask].mean())
    mu = float(train.query_ratings[train.query_mask].mean())
    base = float((mu - test.query_ratings).abs()[test.query_mask].mean())
    assert mae < 0.85 * base

    def short_run():
        over = {"epochs": 2, "meta_lr": 3e-3, "batch_size": 16}
        return TaNP.from_settings(train.schema, overrides=over, seed=0).meta_fit(train).predict(test)

    assert torch.equal(short_run(), short_run())  # seeded: the random contexts and z samples repeat
