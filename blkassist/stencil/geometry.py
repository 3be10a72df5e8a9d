"""The five Platonic solids from their exact vertices, placed in a scene and seen through a
perspective camera, with per-face visibility (hidden-line removal for a convex solid).

World frame: the camera sits at the origin looking down +z; x is right, y is up. Image
coordinates have y down. Every solid is scaled to circumradius 1 in its own frame.

scipy.spatial is imported where it is used: it takes 0.3 s, and the workflow imports this
module (through the Stencil config check) every time it parses.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

PHI = (1 + math.sqrt(5)) / 2
SOLIDS = ("tetrahedron", "cube", "octahedron", "dodecahedron", "icosahedron")


def _signs(*values):
    """Every sign combination of the non-zero entries of `values`."""
    combos = [()]
    for value in values:
        options = (value, -value) if value else (0.0,)
        combos = [(*c, o) for c in combos for o in options]
    return combos


def _raw_vertices(name: str) -> np.ndarray:
    if name == "tetrahedron":
        points = [(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)]
    elif name == "cube":
        points = _signs(1, 1, 1)
    elif name == "octahedron":
        points = [
            p for axis in range(3) for p in _signs(*(1 if i == axis else 0 for i in range(3)))
        ]
    elif name == "dodecahedron":
        points = _signs(1, 1, 1) + _signs(0, 1 / PHI, PHI) + _signs(1 / PHI, PHI, 0)
        points += _signs(PHI, 0, 1 / PHI)
    elif name == "icosahedron":
        points = _signs(0, 1, PHI) + _signs(1, PHI, 0) + _signs(PHI, 0, 1)
    else:
        raise ValueError(f"unknown solid {name!r}; choose one of {', '.join(SOLIDS)}")
    return np.array(sorted(set(points)), dtype=np.float64)


@dataclass(frozen=True)
class Solid:
    name: str
    vertices: np.ndarray  # (V, 3), circumradius 1
    faces: tuple[tuple[int, ...], ...]  # vertex indices, counter-clockwise seen from outside
    normals: np.ndarray  # (F, 3) outward unit normals

    @functools.cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        found = set()
        for face in self.faces:
            for a, b in zip(face, face[1:] + face[:1], strict=True):
                found.add((min(a, b), max(a, b)))
        return tuple(sorted(found))

    @functools.cached_property
    def edge_faces(self) -> dict[tuple[int, int], tuple[int, int]]:
        """The two faces that meet at each edge."""
        owners: dict[tuple[int, int], list[int]] = {}
        for index, face in enumerate(self.faces):
            for a, b in zip(face, face[1:] + face[:1], strict=True):
                owners.setdefault((min(a, b), max(a, b)), []).append(index)
        return {edge: tuple(pair) for edge, pair in owners.items()}


@functools.cache
def solid(name: str) -> Solid:
    """The solid's polygonal faces: the convex hull's triangles merged by plane."""
    from scipy.spatial import ConvexHull

    vertices = _raw_vertices(name)
    vertices /= np.linalg.norm(vertices, axis=1).max()
    hull = ConvexHull(vertices)
    planes: dict[tuple, set[int]] = {}
    exact: dict[tuple, np.ndarray] = {}
    for simplex, equation in zip(hull.simplices, hull.equations, strict=True):
        key = tuple(np.round(equation, 6))  # triangles of one face share their plane
        planes.setdefault(key, set()).update(simplex.tolist())
        exact.setdefault(key, equation[:3])
    faces, normals = [], []
    for key, members in sorted(planes.items()):
        normal = exact[key]
        centre = vertices[list(members)].mean(axis=0)
        # Order the face's vertices counter-clockwise around the outward normal.
        u = vertices[min(members)] - centre
        u /= np.linalg.norm(u)
        v = np.cross(normal, u)
        angle = {
            i: math.atan2(np.dot(vertices[i] - centre, v), np.dot(vertices[i] - centre, u))
            for i in members
        }
        faces.append(tuple(sorted(members, key=angle.__getitem__)))
        normals.append(normal / np.linalg.norm(normal))
    return Solid(name, vertices, tuple(faces), np.array(normals))


def random_rotation(rng: np.random.Generator) -> list[float]:
    """A uniformly random orientation as a unit quaternion (x, y, z, w)."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(rng=rng).as_quat().tolist()


def facing_camera(direction) -> list[float]:
    """The orientation that turns `direction` (in the solid's frame) towards the camera."""
    from scipy.spatial.transform import Rotation

    direction = np.asarray(direction, dtype=np.float64)
    rotation, _ = Rotation.align_vectors(
        [[0.0, 0.0, -1.0]], [direction / np.linalg.norm(direction)]
    )
    return rotation.as_quat().tolist()


@dataclass(frozen=True)
class Placed:
    """A solid in the world: orientation (quaternion x, y, z, w), centre and circumradius."""

    name: str
    rotation: tuple[float, float, float, float]
    centre: tuple[float, float, float]
    radius: float = 1.0

    def world_vertices(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        shape = solid(self.name)
        rotated = Rotation.from_quat(self.rotation).apply(shape.vertices)
        return rotated * self.radius + np.asarray(self.centre)

    def world_normals(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        return Rotation.from_quat(self.rotation).apply(solid(self.name).normals)

    def front_faces(self) -> list[bool]:
        """Faces turned towards the camera (at the origin): the visible ones of a convex solid."""
        vertices, normals = self.world_vertices(), self.world_normals()
        centres = np.array([vertices[list(face)].mean(axis=0) for face in solid(self.name).faces])
        return [bool(d < 0) for d in np.einsum("ij,ij->i", normals, centres)]

    def visible_edges(self) -> list[tuple[tuple[int, int], bool]]:
        """(edge, is_silhouette) for every edge of a front face; a silhouette edge borders
        exactly one front face."""
        front = self.front_faces()
        shape = solid(self.name)
        found = []
        for edge in shape.edges:
            a, b = (front[f] for f in shape.edge_faces[edge])
            if a or b:
                found.append((edge, a != b))
        return found

    def depth_range(self) -> tuple[float, float]:
        z = self.world_vertices()[:, 2]
        return float(z.min()), float(z.max())


def project(points: np.ndarray) -> np.ndarray:
    """Perspective projection to the image plane at unit focal length (image y down)."""
    points = np.asarray(points, dtype=np.float64)
    if np.any(points[:, 2] <= 1e-6):
        raise ValueError("a point lies at or behind the camera plane")
    return np.stack([points[:, 0] / points[:, 2], -points[:, 1] / points[:, 2]], axis=1)


def outline(placed: Placed) -> np.ndarray:
    """The solid's projected outline: the convex hull of its projected vertices, in order."""
    from scipy.spatial import ConvexHull

    projected = project(placed.world_vertices())
    return projected[ConvexHull(projected).vertices]


def check_depth_order(objects: list[Placed]) -> None:
    """Objects must lie in disjoint depth slabs, listed far to near: then painting them in
    that order is exact occlusion (every point of a nearer object is nearer)."""
    for far, near in itertools.pairwise(objects):
        if near.depth_range()[1] >= far.depth_range()[0]:
            raise ValueError(
                f"{near.name} at z={near.centre[2]:.3f} is not wholly in front of {far.name} "
                f"at z={far.centre[2]:.3f}; separate their depth slabs"
            )
