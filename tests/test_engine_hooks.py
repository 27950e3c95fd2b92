"""``engine.run``'s ``on_client`` hook: every sampled client of every round once, right
after its client half, with its trained model in the engine's model and the round's
global model as ``start``; a run with the hook gives the same numbers as one without.
And what the hook made visible: a round without a sound reply keeps the global model."""

from __future__ import annotations

import pytest
import torch

import engine
import tasks
from algorithms.fedavg import FedAvg
from conf import load_config
from tests.test_clipped import CLIENTS, FIXED

ROUNDS = 3
SETTINGS = {**FIXED, "train.batch_size": 8, "train.local_steps": 2, "train.lr": 0.2}


def recording():
    """FedAvg whose client half also keeps (a copy of) every reply it returns."""
    replies = []

    class Recording(FedAvg):
        @classmethod
        def client_update(cls, model, *args, **kwargs):
            update = super().client_update(model, *args, **kwargs)
            replies.append({k: v.detach().clone() for k, v in update.arrays.items()})
            return update

    return Recording, replies


def hooked(cfg):
    """A run with the hook: what it saw, (round, client, W_k, W_bar), and the replies."""
    algorithm, replies = recording()
    seen = []

    def on_client(r, i, model, start):
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        seen.append((r, i, trained, {n: t.clone() for n, t in start.items()}))

    return engine.run(cfg, CLIENTS, rounds=ROUNDS, algorithm=algorithm, on_client=on_client), seen, replies


def without_seconds(records):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


@pytest.mark.parametrize("attack", ["none", "sign_flip"])
def test_on_client_sees_each_client_once_with_its_reply_and_the_global_model(attack):
    cfg = load_config({**SETTINGS, "attack.kind": attack, "attack.fraction": 0.5})
    out, seen, replies = hooked(cfg)
    assert [(r, i) for r, i, _, _ in seen] == [(r, i) for r in range(1, ROUNDS + 1) for i in range(CLIENTS)]
    for (_, _, trained, _), reply in zip(seen, replies, strict=True):  # W_k, before any attack
        assert trained.keys() <= reply.keys()
        for name, value in trained.items():
            torch.testing.assert_close(value, reply[name], rtol=0, atol=0)
    initial = dict(tasks.make_model(cfg, tasks.load_task(cfg)).named_parameters())
    for r in range(1, ROUNDS + 1):
        starts = [start for rr, _, _, start in seen if rr == r]
        for start in starts[1:]:  # one W_bar for the whole round
            for name, value in start.items():
                torch.testing.assert_close(value, starts[0][name], rtol=0, atol=0)
        if attack != "none":
            continue
        # W_bar: the initial model, then the uniform average of the last round's replies
        previous = replies[(r - 2) * CLIENTS : (r - 1) * CLIENTS]
        for name, value in starts[0].items():
            expected = initial[name].detach() if r == 1 else torch.stack([p[name] for p in previous]).mean(0)
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    # the hook changes no number
    assert without_seconds(out.records) == without_seconds(engine.run(cfg, CLIENTS, rounds=ROUNDS).records)


def test_on_client_needs_a_server_centred_algorithm():
    cfg = load_config({**SETTINGS, "strategy.name": "gossip_pga"})
    with pytest.raises(ValueError, match="server-centred"):
        engine.run(cfg, CLIENTS, rounds=1, on_client=lambda *args: None)


def test_a_round_without_a_sound_reply_keeps_the_global_model():
    """Every client an attacker sending NaN: no reply is taken, W_bar stays (not the last
    client's W_k, which the engine's model holds after the client loop)."""
    cfg = load_config({**SETTINGS, "attack.kind": "nan", "attack.fraction": 1.0})
    out = engine.run(cfg, CLIENTS, rounds=2)
    assert [r["num_replies"] for r in out.records] == [0, 0]
    initial = tasks.make_model(cfg, tasks.load_task(cfg)).state_dict()
    for name, value in out.state.items():
        torch.testing.assert_close(value, initial[name], rtol=0, atol=0)
