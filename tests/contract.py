"""The PAG loss contract written out literally, shared by the tests that check our fast implementations."""

import torch
import torch.nn.functional as F


def brute_force(model, x, target_grads, classes):
    """A fresh forward per image, torch's own log_softmax, one gradient per class."""
    total = 0.0
    for b in range(len(x)):
        xb = x[b:b + 1].clone().requires_grad_(True)
        logp = F.log_softmax(model(xb), dim=1)[0]
        for j, t in enumerate(classes[b]):
            (g,) = torch.autograd.grad(logp[t], xb, create_graph=True)
            total = total + 1 - F.cosine_similarity(g.flatten(), target_grads[b, j].flatten(), dim=0)
    return total / classes.numel()
