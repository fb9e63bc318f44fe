"""Classifiers built by name. Every model takes raw inputs (images in [0, 1]) and normalises them itself,
so attacks and target sources always work in pixel space."""

from pagrob.models.factory import (ARCH_ROUTES, ARCHS, ArchEntry, ArchRoute, Classifier, Normalize, arch_choices,
                                   arch_route, build_model, default_arch, known_arch)

__all__ = ["ARCH_ROUTES", "ARCHS", "ArchEntry", "ArchRoute", "Classifier", "Normalize", "arch_choices", "arch_route",
           "build_model", "default_arch", "known_arch"]
