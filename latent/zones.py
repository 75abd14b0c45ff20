"""Dark zones: dark probe points clustered (scikit-learn KMeans) and described: size, spread,
shape (principal axes), nearest corpus texts. A zone's volume is the share of envelope probes
that fell dark in it (a Monte-Carlo estimate of its share of the envelope's volume)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the map, scikit-learn and FAISS load only where a map is fitted or read
    from latent.occupancy import OccupancyMap


@dataclass
class ZoneInfo:
    label: int
    n_points: int
    centre: np.ndarray
    radius: float
    volume: float
    axes: list[float]
    neighbours: list[int]  # corpus indices nearest the centre


def find_zones(occ: OccupancyMap, dark_points: np.ndarray, n_probe: int, n_zones: int, seed: int) -> list[ZoneInfo]:
    """Cluster dark probe points into zones and describe each: size, spread, neighbours.

    volume = share of all envelope probes that fell dark in this zone (a Monte-Carlo estimate
    of the zone's share of the envelope's volume).
    """
    from sklearn.cluster import KMeans  # lazy: the samplers' registry and the CLI start without scikit-learn

    if len(dark_points) == 0:
        return []
    k = min(n_zones, len(dark_points))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(dark_points)
    zones = []
    for lab in range(k):
        pts = dark_points[km.labels_ == lab]
        centre = pts.mean(axis=0)
        spread = np.linalg.norm(pts - centre, axis=1)
        if len(pts) > 1:
            sv = np.linalg.svd(pts - centre, compute_uv=False)[:3] / np.sqrt(len(pts) - 1)
        else:
            sv = np.zeros(1)
        zones.append(ZoneInfo(
            label=lab, n_points=len(pts), centre=centre.astype(np.float32), radius=float(spread.mean()),
            volume=len(pts) / n_probe, axes=[float(s) for s in sv],
            neighbours=[int(i) for i in occ.nearest(centre[None], 3)[0]],
        ))
    return zones


def assign_zone(zones: list[ZoneInfo], points: np.ndarray) -> list[int | None]:
    if not zones:
        return [None] * len(points)
    centres = np.stack([z.centre for z in zones])
    d = np.linalg.norm(points[:, None, :] - centres[None], axis=-1)
    return [int(zones[i].label) for i in d.argmin(axis=1)]


def zones_from_rows(rows) -> list[ZoneInfo]:
    """ZoneInfo from stored Zone rows (storage.models.Zone): what the samplers need of them."""
    return [ZoneInfo(z.label, z.n_points, np.frombuffer(z.centre, dtype=np.float32).copy(), z.radius, z.volume, [], [])
            for z in rows]
