"""The one local training loop: equal to torch's SGD, the clipped step, batching, state."""

from __future__ import annotations

import copy

import pytest
import torch

from algorithms.settings import RoundSettings
from client.train import BatchStream, global_norm, round_seed, sgd_step
from tasks.base import Split
from tasks.models import MLP
from tests.helpers import train_steps


def toy(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen)
    y = (x @ torch.randn(5, 1, generator=gen)).squeeze(1).gt(0).long()
    torch.manual_seed(seed)
    return MLP(5, 8, 2, 2), Split(x, y)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize(("momentum", "wd"), [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-2), (0.5, 1e-3)])
def test_full_batch_loop_equals_torch_sgd(momentum, wd):
    model, data = toy()
    reference = copy.deepcopy(model)
    result = train_steps(model, data, torch.nn.functional.cross_entropy, steps=6,
                         batch_size=len(data), lr=0.1, momentum=momentum, weight_decay=wd)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(data.x), data.y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-6)
    assert result.loss == pytest.approx(sum(losses) / 6, rel=1e-6)
    assert (result.steps, result.examples) == (6, len(data))


@pytest.mark.parametrize("wd", [0.0, 0.05])
@pytest.mark.parametrize("gamma", [0.01, 100.0])  # below and above the norm * eta
def test_clipped_step_is_min_eta_gamma_over_norm_times_direction(gamma, wd):
    """x <- x - min(eta, gamma/||g||) (g + wd x), ||g|| over the raw gradient."""
    eta = 0.5
    params = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5], [3.0]])]
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # ||g|| = 5
    norm = global_norm(grads)
    assert float(norm) == pytest.approx(5.0)
    step = torch.clamp(gamma / norm, max=eta)
    expected = [p - min(eta, gamma / 5.0) * (g + wd * p) for p, g in zip(params, grads)]
    sgd_step(params, grads, [], step, 0.0, wd)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_clip_metrics_on_known_gradient_sequence():
    """Linear model, squared loss, full batch: the gradient norms are known in closed form."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    data = Split(torch.ones(1, 1), torch.zeros(1, 1))
    loss = lambda out, y: 0.5 * (out - y).pow(2).sum()
    eta, gamma = 0.5, 1.0  # clip while |w| > gamma / eta = 2
    result = train_steps(model, data, loss, steps=4, batch_size=1, lr=eta, clip_gamma=gamma)
    # w: 3 -> 3 - 1/3*3 = 2 (clipped, norm 3) -> 2 - 0.5*2 = 1 (norm 2: gamma/norm = eta, not
    # clipped) -> 0.5 (norm 1) -> 0.25 (norm 0.5)
    assert model.weight.item() == pytest.approx(0.25)
    assert result.clipped_fraction == pytest.approx(1 / 4)
    assert result.grad_norm == pytest.approx((3 + 2 + 1 + 0.5) / 4)


def test_huge_gamma_equals_unclipped_exactly():
    model, data = toy()
    clipped = copy.deepcopy(model)
    kwargs = {"steps": 5, "batch_size": 8, "lr": 0.1, "momentum": 0.9, "seed": 3}
    train_steps(model, data, torch.nn.functional.cross_entropy, **kwargs)
    result = train_steps(clipped, data, torch.nn.functional.cross_entropy, clip_gamma=1e12, **kwargs)
    assert torch.equal(flat(model), flat(clipped))
    assert result.clipped_fraction == 0.0


def test_persisted_momentum_continues_exactly():
    """Two rounds of 3 full-batch steps with the buffers carried == one run of 6 steps."""
    model, data = toy()
    split_run = copy.deepcopy(model)
    kwargs = {"batch_size": len(data), "lr": 0.1, "momentum": 0.9}
    train_steps(model, data, torch.nn.functional.cross_entropy, steps=6, **kwargs)
    first = train_steps(split_run, data, torch.nn.functional.cross_entropy, steps=3, **kwargs)
    train_steps(split_run, data, torch.nn.functional.cross_entropy, steps=3,
                momentum_buffers=first.momentum, **kwargs)
    torch.testing.assert_close(flat(model), flat(split_run), rtol=0, atol=1e-6)
    # without the buffers the second round restarts momentum and ends elsewhere
    restart = copy.deepcopy(model)
    train_steps(restart, data, torch.nn.functional.cross_entropy, steps=3, **kwargs)
    assert not torch.allclose(flat(restart), flat(model))


def test_batch_stream_visits_every_example_once_per_pass_and_is_seeded():
    stream = BatchStream(10, 3, seed=7, device=torch.device("cpu"))
    first_pass = torch.cat([stream.next() for _ in range(3)])  # 9 of 10; the rest is dropped
    assert len(set(first_pass.tolist())) == 9
    again = BatchStream(10, 3, seed=7, device=torch.device("cpu"))
    assert torch.equal(torch.cat([again.next() for _ in range(3)]), first_pass)
    other = BatchStream(10, 3, seed=8, device=torch.device("cpu"))
    assert not torch.equal(torch.cat([other.next() for _ in range(3)]), first_pass)


def test_steps_for_epochs_and_steps():
    settings = RoundSettings.fixed(lr=0.1, batch_size=32, steps=7)
    assert settings.steps(100) == 7
    assert settings.with_(local_epochs=2).steps(100) == 2 * 4
    assert settings.with_(local_epochs=1).steps(10) == 1  # batch capped at data size


def test_round_seeds_differ_per_client_and_round():
    seeds = {round_seed(0, client, rnd) for client in range(10) for rnd in range(10)}
    assert len(seeds) == 100 and round_seed(0, 1, 2) == round_seed(0, 1, 2)


def test_training_lowers_loss_and_rejects_empty_data():
    model, data = toy()
    loss = torch.nn.functional.cross_entropy
    before = loss(model(data.x), data.y).item()
    train_steps(model, data, loss, steps=30, batch_size=8, lr=0.1)
    assert loss(model(data.x), data.y).item() < before
    with pytest.raises(ValueError, match="no training data"):
        train_steps(model, data.subset([]), loss, steps=1, batch_size=8, lr=0.1)
