"""ReLU models for the tasks: MLP, small CNN, character LSTM and character ReLU RNN."""

from __future__ import annotations

import math

import torch
from torch import nn

PARAMETRIZATIONS = ("standard", "ntk")


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units.

    ``parametrization='standard'``: PyTorch layers with biases, He (Kaiming) initialised.
    ``parametrization='ntk'`` (``depth`` 1): the two-layer network of Du, Zhai, Poczos,
    Singh (ICLR 2019) that Deng, Kamani, Mahdavi (AISTATS 2022, v1) analyse::

        f(x) = m^-1/2 sum_r a_r relu(w_r^T x),   w_r ~ N(0, I_d),  a_r uniform on {-1, +1}

    no biases (m = ``width``; ``net[-1].weight`` holds the a_r, the factor m^-1/2 is applied
    in ``forward``). Its tangent kernel has an m-independent limit, so an O(1) step is
    stable at every width.
    """

    def __init__(self, in_features: int, width: int, depth: int, out_features: int,
                 parametrization: str = "standard"):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"Unknown model.parametrization {parametrization!r}; choose "
                             f"{' or '.join(PARAMETRIZATIONS)}.")
        ntk = parametrization == "ntk"
        if ntk and depth != 1:
            raise ValueError(f"model.parametrization='ntk' is the two-layer network: it needs "
                             f"model.depth=1, got {depth}.")
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_features
        for _ in range(depth):
            layers += [nn.Linear(size, width, bias=not ntk), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, out_features, bias=not ntk))
        self.net = nn.Sequential(*layers)
        self.output_scale = width**-0.5 if ntk else 1.0
        for module in self.net:
            if isinstance(module, nn.Linear):
                if not ntk:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)
                elif module is layers[-1]:
                    with torch.no_grad():
                        module.weight.copy_(torch.randint(0, 2, module.weight.shape) * 2.0 - 1.0)
                else:
                    nn.init.normal_(module.weight)

    def forward(self, x):
        out = self.net(x)
        return out if self.output_scale == 1.0 else out * self.output_scale

    def forward_masked(self, x, masks):
        """The network with its ReLU gates fixed: the i-th hidden layer's pre-activations
        are multiplied by ``masks[i]`` (0/1, shape (batch, width)) instead of passed through
        ReLU. Equal to ``forward`` when ``masks`` is this model's own pattern on ``x``."""
        if len(masks) != sum(isinstance(m, nn.ReLU) for m in self.net):
            raise ValueError(f"Need one mask per hidden layer, got {len(masks)}.")
        h, i = x, 0
        for module in self.net:
            if isinstance(module, nn.ReLU):
                h, i = h * masks[i].to(h.dtype), i + 1
            else:
                h = module(h)
        return h if self.output_scale == 1.0 else h * self.output_scale

    def hidden(self, x):
        """Pre-activations of every hidden layer (for activation-pattern diagnostics)."""
        out, h = [], x.flatten(1)
        for module in list(self.net)[1:-1]:
            h = module(h)
            if isinstance(module, nn.Linear):
                out.append(h)
        return out


class CNN(nn.Module):
    """Two 5x5 conv + ReLU + max-pool blocks, then a ReLU MLP head."""

    def __init__(self, input_shape: tuple[int, ...], width: int, out_features: int):
        super().__init__()
        channels, height, w = input_shape
        pad = 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 64 * (height // 4) * (w // 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, width), nn.ReLU(), nn.Linear(width, out_features)
        )

    def forward(self, x):
        return self.head(self.features(x))


class CharRNN(nn.Module):
    """Embedding -> LSTM (or ReLU RNN) -> linear over the vocabulary, per position."""

    def __init__(self, vocab: int, embed_dim: int, width: int, depth: int, cell: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        if cell == "lstm":
            self.rnn = nn.LSTM(embed_dim, width, num_layers=depth, batch_first=True)
        else:
            self.rnn = nn.RNN(
                embed_dim, width, num_layers=depth, nonlinearity="relu", batch_first=True
            )
            # Identity-scaled recurrent init keeps a ReLU RNN from exploding at start
            # (Le, Jaitly, Hinton 2015, "IRNN"), scaled down for stability.
            for name, param in self.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    nn.init.eye_(param)
                    param.data.mul_(0.5)
                elif name.startswith("weight_ih"):
                    nn.init.normal_(param, std=1.0 / math.sqrt(embed_dim))
                else:
                    nn.init.zeros_(param)
        self.out = nn.Linear(width, vocab)

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.out(h)


def parameter_count(name: str, input_shape: tuple[int, ...], num_outputs: int, width: int,
                    depth: int, embed_dim: int) -> int:
    """How many parameters ``build_model`` with these arguments has, without building it
    (the config funnel refuses models too large to hold before anything allocates them)."""

    def linear(fan_in: int, fan_out: int) -> int:
        return fan_in * fan_out + fan_out

    if name == "mlp":
        sizes = [math.prod(input_shape)] + [width] * depth + [num_outputs]
        return sum(linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    if name == "cnn":
        channels, height, w = input_shape
        convs = linear(channels * 25, 32) + linear(32 * 25, 64)
        return convs + linear(64 * (height // 4) * (w // 4), width) + linear(width, num_outputs)
    if name in ("lstm", "rnn"):
        gates = 4 if name == "lstm" else 1  # per layer: W_ih, W_hh, b_ih, b_hh for each gate
        layers = sum(gates * (linear(embed_dim if i == 0 else width, width) + linear(width, width))
                     for i in range(depth))
        return num_outputs * embed_dim + layers + linear(width, num_outputs)
    raise ValueError(f"Unknown model {name!r}; choose mlp, cnn, lstm or rnn.")


def output_layer(model: nn.Module) -> nn.Linear:
    """The layer that maps the last hidden features to the outputs: the last ``nn.Linear``
    registered (the MLP's ``net[-1]``, the CNN's ``head[-1]``, the RNN's ``out``)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear output layer.")
    return linears[-1]


def build_model(name: str, input_shape: tuple[int, ...], num_outputs: int, width: int,
                depth: int, embed_dim: int, parametrization: str = "standard",
                freeze_output: bool = False) -> nn.Module:
    """The model named in the config (``auto`` already resolved by the task registry);
    ``freeze_output`` turns off ``requires_grad`` of the output layer (``output_layer``):
    the training loop then never moves it and the engine does not average it."""
    if parametrization != "standard" and name != "mlp":
        raise ValueError(f"model.parametrization={parametrization!r} is for the mlp, not {name!r}.")
    if name == "mlp":
        model = MLP(math.prod(input_shape), width, depth, num_outputs, parametrization)
    elif name == "cnn":
        model = CNN(input_shape, width, num_outputs)
    elif name in ("lstm", "rnn"):
        model = CharRNN(num_outputs, embed_dim, width, depth, name)
    else:
        raise ValueError(f"Unknown model {name!r}; choose mlp, cnn, lstm or rnn.")
    if freeze_output:
        output_layer(model).requires_grad_(False)
    return model
