"""A network pagrob has never seen: torchvision's ResNet-18, built by a factory function."""

from torchvision.models import resnet18


def build(num_classes: int = 10):
    return resnet18(num_classes=num_classes)  # random init, nothing downloaded
