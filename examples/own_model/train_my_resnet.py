"""Your model, trained your way: one epoch of plain PyTorch on 10,000 CIFAR-10 images.

python examples/own_model/train_my_resnet.py CIFAR10.npz my_resnet.pth
Normalisation is done here, in the loop, as most training code does; pagrob is told about it at import.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from my_resnet import build

MEAN, STD = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])

data_file, weights_file = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
with np.load(data_file) as archive:
    x = torch.from_numpy(archive["x_train"][:10_000]).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(archive["y_train"][:10_000]).long()
x = (x - MEAN[:, None, None]) / STD[:, None, None]
model = build(num_classes=10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
model.train()
for batch in torch.randperm(len(x)).split(128):
    loss = F.cross_entropy(model(x[batch]), y[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
Path(weights_file).parent.mkdir(parents=True, exist_ok=True)
torch.save(model.state_dict(), weights_file)
print(f"wrote {weights_file} (last batch loss {loss.item():.3f})")
