"""Small digits classifiers the evaluation tests share, trained in seconds."""

import torch
import torch.nn.functional as F

from pagrob.models import build_model


def digits_cnn(digits, epochs: int, seed: int = 0, noise: float = 0.0):
    """A width-8 CNN trained with Adam; `noise` adds Gaussian noise to the training images (a little robustness)."""
    torch.manual_seed(seed)
    model = build_model("cnn", digits.input_shape, 10, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for i in range(0, len(digits.x_train), 64):
            x = digits.x_train[i:i + 64]
            if noise:
                x = (x + noise * torch.randn_like(x)).clamp(0, 1)
            loss = F.cross_entropy(model(x), digits.y_train[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
