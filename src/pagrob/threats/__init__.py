"""Threat models beyond one L_p ball: each is a value that knows how to perturb, guard and report itself.

Common corruptions (CIFAR-10-C's 15 corruptions at 5 severities) live in `pagrob.threats.corruptions`.
"""
