"""Builders shared by several test modules (importable because pytest puts tests/ on sys.path)."""

import torch

from transfer import Sparta, create_backbone, inject


def sparta_model(arch="resnet18", variant="dw", seed=0, width=8, input_size=16):
    """A tiny timm model with Sparta at every site, its parameters moved off the Swish initialisation
    (so that "trained" tensors are distinguishable from fresh ones without training)."""
    torch.manual_seed(seed)
    model = create_backbone(arch, 10, input_size=input_size, width=width)
    inject(model, "sparta", variant=variant)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Sparta):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return model
