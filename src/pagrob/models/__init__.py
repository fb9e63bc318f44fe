"""Classifiers built by name. Every model takes raw inputs (images in [0, 1]) and normalises them itself,
so attacks and target sources always work in pixel space."""

from pagrob.models.factory import ARCHS, ArchEntry, Classifier, Normalize, build_model, default_arch

__all__ = ["ARCHS", "ArchEntry", "Classifier", "Normalize", "build_model", "default_arch"]
