"""Symmetry augmentation of object inputs (seed 002): rotations in phi, flips in eta, x and y.

Works on scaled inputs: phi and eta are brought back to physics units through the scaler (their
transform must be ``none``, so scaling is affine), transformed and scaled again.  Padded objects
stay 0.  Training draws one random transformation per event; test-time augmentation averages a
model's predictions over a fixed set of transformations that is a group (rotations by 2 pi k / n,
times the configured flips), so its average is exactly invariant under each of them.
"""

from __future__ import annotations

import numpy as np

from payload.config import JobConfig
from payload.learn.scaling import Scaler


class Augmenter:
    def __init__(self, config: JobConfig, scaler: Scaler):
        modes = set(config.training.augment)
        columns = scaler.objects
        self.phi = columns.names.index("phi")
        self.eta = columns.names.index("eta") if "eta" in columns.names else None
        self.offset, self.scale = columns.offset, columns.scale
        self.rotate = "phi_rotation" in modes
        self.flip_eta = "eta_flip" in modes and self.eta is not None
        # A flip in x is a flip in y followed by a rotation by pi: either gives phi -> -phi.
        self.flip_phi = bool(modes & {"x_flip", "y_flip"})
        self.flip_x_only = modes & {"x_flip", "y_flip"} == {"x_flip"}

    def _apply(
        self, objects: np.ndarray, mask: np.ndarray, angle: np.ndarray, phi_sign: np.ndarray, eta_sign: np.ndarray
    ) -> np.ndarray:
        out = objects.copy()
        real = mask > 0
        j = self.phi
        phi = out[:, :, j] * self.scale[j] + self.offset[j]
        phi = phi_sign[:, None] * phi + angle[:, None]
        phi = (phi + np.pi) % (2 * np.pi) - np.pi
        out[:, :, j] = np.where(real, (phi - self.offset[j]) / self.scale[j], 0.0)
        if self.eta is not None:
            k = self.eta
            eta = (out[:, :, k] * self.scale[k] + self.offset[k]) * eta_sign[:, None]
            out[:, :, k] = np.where(real, (eta - self.offset[k]) / self.scale[k], 0.0)
        return out

    def random(self, objects: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(objects)
        angle = rng.uniform(-np.pi, np.pi, n) if self.rotate else np.zeros(n)
        flip = rng.random(n) < 0.5 if self.flip_phi else np.zeros(n, dtype=bool)
        if self.flip_x_only and not self.rotate:
            angle = np.where(flip, np.pi, 0.0)  # phi -> pi - phi
        phi_sign = np.where(flip, -1.0, 1.0)
        eta_sign = np.where(rng.random(n) < 0.5, -1.0, 1.0) if self.flip_eta else np.ones(n)
        return self._apply(objects, mask, angle, phi_sign, eta_sign)

    def group(self, rotations: int) -> list[tuple[float, float, float]]:
        """(angle, phi sign, eta sign) of each test-time transformation."""
        return [
            (2 * np.pi * k / rotations, s, e)
            for k in range(rotations)
            for s in ((1.0, -1.0) if self.flip_phi else (1.0,))
            for e in ((1.0, -1.0) if self.flip_eta else (1.0,))
        ]

    def transformed(
        self, objects: np.ndarray, mask: np.ndarray, angle: float, phi_sign: float, eta_sign: float
    ) -> np.ndarray:
        n = len(objects)
        return self._apply(objects, mask, np.full(n, angle), np.full(n, phi_sign), np.full(n, eta_sign))
