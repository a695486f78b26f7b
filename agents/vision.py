"""Reference agents of the vision group: FaceRecognitionAgent, VisionProcessingAgent.

Images are grayscale 2-D lists of ints 0..255 (rows of equal length), the form msgpack carries without
any codec. The work is real image processing in pure Python (block means, Sobel gradients, orientation
histograms, thresholds, connected components); what stands in is the model: a face "embedding" made of
normalised image statistics instead of a trained network. `synthetic_face` draws deterministic test
faces, so that callers (tests, the language group's Responder) have something to recognise.
"""
from __future__ import annotations

import math
import random
import zlib
from array import array
from typing import Any

from sunsetd.agent import BadRequest, RemoteError

from agents.infrastructure import field
from agents.pc2_core import EdgeAgent
from agents.speech import ModelBacked

RC = "RequestCoordinator"
CACHE = "CacheManager"

MIN_SIDE, MAX_SIDE = 16, 256
GRID = 16  # faces are compared on a 16x16 resampling
CELL = 4  # orientation histograms over 4x4 cells of that grid
BINS = 8  # unsigned gradient orientations, 22.5 degrees each
HIST_WEIGHT = 0.7


# ---- images ----------------------------------------------------------------------------------------------
def check_image(image: Any, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> list[list[int]]:
    """A 2-D list of ints 0..255 with rows of equal length, each side within bounds; BadRequest otherwise."""
    if not isinstance(image, list) or not image or not isinstance(image[0], list):
        raise BadRequest("image must be a 2-D list of ints 0..255 (a list of rows)")
    h, w = len(image), len(image[0])
    if not (min_side <= h <= max_side and min_side <= w <= max_side):
        raise BadRequest(f"image is {h}x{w}; each side must be {min_side}..{max_side} pixels")
    for y, row in enumerate(image):
        if not isinstance(row, list) or len(row) != w:
            raise BadRequest(f"image row {y} is not a list of {w} pixels")
        if not all(type(v) is int for v in row) or min(row) < 0 or max(row) > 255:
            raise BadRequest(f"image row {y} has a pixel that is not an int 0..255")
    return image


def image_key(image: list[list[int]]) -> str:
    """A 64-bit fingerprint of the pixels and the shape (crc32 and adler32): a cache key, not a security hash."""
    data = bytes(v for row in image for v in row)
    return f"{len(image)}x{len(image[0])}-{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def resample(image: list[list[int]], rows: int, cols: int) -> list[list[float]]:
    """Area average onto a rows x cols grid (each output cell averages the pixels it covers)."""
    h, w = len(image), len(image[0])
    ys = [(r * h // rows, max(r * h // rows + 1, (r + 1) * h // rows)) for r in range(rows)]
    xs = [(c * w // cols, max(c * w // cols + 1, (c + 1) * w // cols)) for c in range(cols)]
    out = []
    for y0, y1 in ys:
        band = image[y0:y1]
        out.append([sum(sum(row[x0:x1]) for row in band) / ((y1 - y0) * (x1 - x0)) for x0, x1 in xs])
    return out


def sobel(image: list[list[float]] | list[list[int]]) -> tuple[list[list[float]], list[list[float]]]:
    """Horizontal and vertical Sobel gradients; borders replicate the edge pixels."""
    h, w = len(image), len(image[0])
    gx = [[0.0] * w for _ in range(h)]
    gy = [[0.0] * w for _ in range(h)]
    for y in range(h):
        up, row, down = image[max(y - 1, 0)], image[y], image[min(y + 1, h - 1)]
        for x in range(w):
            xl, xr = max(x - 1, 0), min(x + 1, w - 1)
            gx[y][x] = (up[xr] + 2 * row[xr] + down[xr]) - (up[xl] + 2 * row[xl] + down[xl])
            gy[y][x] = (down[xl] + 2 * down[x] + down[xr]) - (up[xl] + 2 * up[x] + up[xr])
    return gx, gy


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 1e-12 else [0.0] * len(v)


def face_embedding(image: list[list[int]]) -> list[float]:
    """384 numbers describing a face, invariant to brightness and contrast (the stand-in for a network).

    The image is resampled to 16x16 and standardised (zero mean, unit variance): those 256 values are the
    layout of light and dark; then 8-bin histograms of gradient orientation, weighted by magnitude, over
    4x4 cells (128 values: where the edges of eyes, mouth and outline run). Each part is scaled to unit
    length, the histograms weighted by HIST_WEIGHT (they are the noisier part), the whole to unit length.
    """
    g = resample(image, GRID, GRID)
    flat = [v for row in g for v in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / len(flat)) or 1.0
    g = [[(v - mean) / std for v in row] for row in g]
    gx, gy = sobel(g)
    hist = [0.0] * ((GRID // CELL) ** 2 * BINS)
    for y in range(GRID):
        for x in range(GRID):
            mag = math.hypot(gx[y][x], gy[y][x])
            if mag < 1e-9:
                continue
            angle = math.atan2(gy[y][x], gx[y][x]) % math.pi
            b = min(int(angle / math.pi * BINS), BINS - 1)
            hist[((y // CELL) * (GRID // CELL) + x // CELL) * BINS + b] += mag
    return _unit(_unit([v for row in g for v in row]) + [h * HIST_WEIGHT for h in _unit(hist)])


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))  # both are unit vectors


def synthetic_face(seed: int, size: int = 32, noise: int = 0, brightness: int = 0, contrast: float = 1.0,
                   noise_seed: int | None = None) -> list[list[int]]:
    """A deterministic cartoon face: `seed` is the person (head shape, skin, eyes, brows, nose, mouth),
    the other arguments are the shot (pixel noise of +-`noise`, a brightness shift, a contrast factor)."""
    p = random.Random(seed)
    cx, cy = p.uniform(0.42, 0.58), p.uniform(0.46, 0.56)
    head_w, head_h = p.uniform(0.26, 0.46), p.uniform(0.34, 0.48)
    skin, hair, bg = p.randint(110, 220), p.randint(10, 90), p.randint(20, 200)
    hair_line, beard = p.uniform(0.10, 0.32), p.random() < 0.3
    eye_y, eye_dx, eye_r = p.uniform(0.34, 0.48), p.uniform(0.08, 0.20), p.uniform(0.03, 0.075)
    brow, glasses = p.random() < 0.5, p.random() < 0.3
    nose_len = p.uniform(0.05, 0.18)
    mouth_y, mouth_w, smile = p.uniform(0.64, 0.80), p.uniform(0.08, 0.26), p.uniform(-0.06, 0.07)
    shot = random.Random(noise_seed if noise_seed is not None else seed * 7919 + 1)
    img = []
    for yi in range(size):
        y = (yi + 0.5) / size
        row = []
        for xi in range(size):
            x = (xi + 0.5) / size
            dx, dy = (x - cx) / head_w, (y - cy) / head_h
            v = float(bg) + 40.0 * (y - 0.5)  # a lit background gradient
            if dx * dx + dy * dy <= 1.0:
                v = float(hair) if y < cy - head_h + hair_line + 0.12 * abs(dx) else float(skin)
                if beard and y > mouth_y - 0.04:
                    v = (skin + hair) / 2.0
                for ex in (cx - eye_dx, cx + eye_dx):
                    if (x - ex) ** 2 + (y - eye_y) ** 2 <= eye_r ** 2:
                        v = 25.0
                    elif glasses and abs(math.hypot(x - ex, y - eye_y) - 1.6 * eye_r) < 0.015:
                        v = 15.0
                    elif brow and abs(y - (eye_y - 2.2 * eye_r)) < 0.02 and abs(x - ex) < 1.6 * eye_r:
                        v = float(hair)
                if abs(x - cx) < 0.025 and eye_y + eye_r < y < eye_y + eye_r + nose_len:
                    v = skin * 0.7
                mx = (x - cx) / mouth_w
                if abs(mx) <= 1.0 and abs(y - (mouth_y + smile * (1 - mx * mx))) < 0.022:
                    v = 60.0
            v = 128.0 + (v - 128.0) * contrast + brightness
            if noise:
                v += shot.randint(-noise, noise)
            row.append(min(255, max(0, int(round(v)))))
        img.append(row)
    return img


# ---- FaceRecognitionAgent --------------------------------------------------------------------------------
class FaceRecognitionAgent(ModelBacked):
    """Enrols faces and identifies them by nearest neighbour.

    Real: validation of the image, the embedding computed from it (standardised block means and gradient
    orientation histograms, see `face_embedding`: robust to brightness, contrast and pixel noise), the
    gallery of enrolled embeddings and the nearest-neighbour identification with a cosine-similarity
    threshold; the model is admitted by SystemDigitalTwin and pinned in ModelManagerSuite's budget, each
    identification counted there as a use; `command` lets RequestCoordinator classify a spoken request
    ("remember this face as 'Ada'", "who is this?"). Stands in: the statistics stand in for a trained face
    network, `weights_mb` of held memory for its weights. The gallery lives in this process: a restart
    forgets the enrolled faces (`config.gallery` may seed it with embeddings).
    Ops used by others: `identify` {image} -> {person: name or None, score: 0..1}.
    """

    CAPABILITIES = ("vision.faces", "vision.identify")
    MODEL = "face-embedder"

    def setup(self) -> None:
        self.threshold = float(self.config.get("threshold", 0.90))
        self.gallery: dict[str, list[list[float]]] = {}
        for name, vectors in sorted((self.config.get("gallery") or {}).items()):
            self.gallery[str(name)] = [_unit([float(v) for v in vec]) for vec in vectors]
        self.load_model()
        super().setup()

    def _nearest(self, emb: list[float]) -> tuple[str | None, float]:
        best, best_score = None, 0.0
        for name in sorted(self.gallery):
            score = max(cosine(emb, ref) for ref in self.gallery[name])
            if score > best_score + 1e-12:
                best, best_score = name, score
        return best, max(0.0, min(1.0, best_score))

    def _identify(self, image: Any) -> dict:
        emb = face_embedding(check_image(image))
        self.use_model()
        best, score = self._nearest(emb)
        person = best if best is not None and score >= self.threshold else None
        self.counters["identified" if person else "unknown"] += 1
        return {"person": person, "score": round(score, 4)}

    def handle_identify(self, body: Any) -> dict:
        """{image} -> {person: the enrolled name or None, score: similarity 0..1 to the nearest enrolled face}."""
        return self._identify(field(body, "image", list))

    def handle_enroll(self, body: Any) -> dict:
        """{name, image}: add a view of this person's face to the gallery."""
        name = field(body, "name", str).strip()
        if not name:
            raise BadRequest("name must not be empty")
        emb = face_embedding(check_image(field(body, "image", list)))
        self.use_model()
        views = self.gallery.setdefault(name, [])
        views.append(emb)
        self.counters["enrolled"] += 1
        self.report({"gallery_people": len(self.gallery), "gallery_views": sum(map(len, self.gallery.values()))})
        return {"name": name, "views": len(views), "people": len(self.gallery)}

    def handle_forget(self, body: Any) -> dict:
        name = field(body, "name", str)
        return {"name": name, "forgotten": self.gallery.pop(name, None) is not None, "people": len(self.gallery)}

    def handle_gallery(self, body: Any) -> dict:
        return {"people": {n: len(v) for n, v in sorted(self.gallery.items())}, "threshold": self.threshold}

    def handle_compare(self, body: Any) -> dict:
        """{a, b}: similarity of two images, and whether they pass the threshold as one person."""
        a = face_embedding(check_image(field(body, "a", list)))
        b = face_embedding(check_image(field(body, "b", list)))
        score = round(max(0.0, cosine(a, b)), 4)
        return {"score": score, "same": score >= self.threshold}

    def handle_embed(self, body: Any) -> dict:
        emb = face_embedding(check_image(field(body, "image", list)))
        return {"embedding": [round(v, 6) for v in emb], "dims": len(emb)}

    def handle_command(self, body: Any) -> dict:
        """{text, image}: RequestCoordinator classifies the text; `remember` enrols the image under the
        quoted name, anything else identifies it."""
        text, image = field(body, "text", str), field(body, "image", list)
        c = self.call(RC, "classify", {"text": text}, timeout=2.0)
        quoted = c.get("entities", {}).get("quoted") or []
        if c.get("intent") == "remember":
            if not quoted:
                raise BadRequest("to remember a face, quote the name: remember this face as 'Ada'")
            return {"intent": "remember", "action": "enroll", **self.handle_enroll({"name": quoted[0], "image": image})}
        return {"intent": c.get("intent"), "action": "identify", **self._identify(image)}


# ---- VisionProcessingAgent -------------------------------------------------------------------------------
def image_stats(image: list[list[int]], bins: int = 8) -> dict:
    flat = [v for row in image for v in row]
    n = len(flat)
    mean = sum(flat) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / n)
    hist = [0] * bins
    for v in flat:
        hist[v * bins // 256] += 1
    ordered = sorted(flat)
    return {"height": len(image), "width": len(image[0]), "mean": round(mean, 3), "std": round(std, 3),
            "min": ordered[0], "max": ordered[-1], "median": ordered[n // 2], "histogram": hist}


def otsu_threshold(image: list[list[int]]) -> int:
    """Otsu's threshold: the grey level that best splits the histogram into two classes."""
    hist = [0] * 256
    for row in image:
        for v in row:
            hist[v] += 1
    total = sum(hist)
    sum_all = sum(i * c for i, c in enumerate(hist))
    w0 = sum0 = 0
    best_t, best_var = 0, -1.0
    for t in range(256):
        w0 += hist[t]
        if w0 == 0:
            continue
        w1 = total - w0
        if w1 == 0:
            break
        sum0 += t * hist[t]
        m0, m1 = sum0 / w0, (sum_all - sum0) / w1
        var = w0 * w1 * (m0 - m1) ** 2
        if var > best_var:
            best_t, best_var = t, var
    return best_t


def edge_map(image: list[list[int]], threshold: float) -> tuple[list[list[int]], int]:
    """Sobel magnitude above `threshold` -> 1; returns the map and the number of edge pixels."""
    gx, gy = sobel(image)
    edges = [[1 if math.hypot(a, b) > threshold else 0 for a, b in zip(rx, ry)] for rx, ry in zip(gx, gy)]
    return edges, sum(map(sum, edges))


def components(mask: list[list[int]]) -> list[dict]:
    """4-connected components of the 1-pixels, largest first: area, bounding box [y0, x0, y1, x1], centroid."""
    h, w = len(mask), len(mask[0])
    seen = array("b", bytes(h * w))
    out = []
    for y in range(h):
        for x in range(w):
            if not mask[y][x] or seen[y * w + x]:
                continue
            stack, area, sy, sx = [(y, x)], 0, 0, 0
            seen[y * w + x] = 1
            y0, x0, y1, x1 = y, x, y, x
            while stack:
                cy, cx = stack.pop()
                area, sy, sx = area + 1, sy + cy, sx + cx
                y0, x0, y1, x1 = min(y0, cy), min(x0, cx), max(y1, cy), max(x1, cx)
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny][nx] and not seen[ny * w + nx]:
                        seen[ny * w + nx] = 1
                        stack.append((ny, nx))
            out.append({"area": area, "bbox": [y0, x0, y1, x1], "centroid": [round(sy / area, 2), round(sx / area, 2)]})
    out.sort(key=lambda c: (-c["area"], c["bbox"]))
    return out


class VisionProcessingAgent(EdgeAgent):
    """Image statistics, edge maps, thresholds and blobs, with results cached in CacheManager.

    Real: `image_stats` (mean, spread, median, histogram), `edges` (Sobel magnitude over a threshold: the map,
    the edge density), `threshold` (Otsu's level and the binary mask), `blobs` (4-connected components of
    the mask, largest first, with boxes and centroids), `analyze` (all of it in one summary); every result
    is cached in CacheManager under the image's fingerprint and the op, so a repeated image costs a cache
    hit. Stands in: these classical operators stand in for a vision model; `weights_mb` of held memory for
    its weights.
    """

    CAPABILITIES = ("vision.stats", "vision.edges", "vision.segment")

    def setup(self) -> None:
        self.hold_weights()
        self.cache_ttl_s = float(self.config.get("cache_ttl_s", 600))
        super().setup()

    def _cached(self, op: str, body: Any, compute) -> dict:
        image = check_image(field(body, "image", list), min_side=1)
        params = {k: v for k, v in sorted(body.items()) if k != "image"}
        key = f"{op}:{image_key(image)}:{params}"
        try:
            hit = self.call(CACHE, "get", {"ns": "vision", "key": key}, timeout=2.0)
        except RemoteError as exc:  # the cache is an optimisation: without it, compute
            self.log(f"{CACHE} unreachable: {exc}")
            hit = {"hit": False}
        if hit.get("hit"):
            self.counters["cache_hits"] += 1
            return {**hit["value"], "cached": True}
        result = compute(image)
        self.counters["computed"] += 1
        try:
            self.call(CACHE, "put", {"ns": "vision", "key": key, "value": result, "ttl_s": self.cache_ttl_s},
                      timeout=2.0)
        except RemoteError as exc:
            self.log(f"{CACHE} unreachable: {exc}")
        return {**result, "cached": False}

    def handle_image_stats(self, body: Any) -> dict:
        """{image} -> size, mean, standard deviation, min, max, median and an 8-bin histogram."""
        return self._cached("stats", body, image_stats)

    def handle_edges(self, body: Any) -> dict:
        """{image, threshold?} -> Sobel edge map (rows of 0/1), edge pixel count and density."""
        threshold = field(body, "threshold", float, 128.0)

        def compute(image):
            edges, n = edge_map(image, threshold)
            return {"edges": edges, "edge_pixels": n, "density": round(n / (len(image) * len(image[0])), 4)}
        return self._cached("edges", body, compute)

    def handle_threshold(self, body: Any) -> dict:
        """{image, level?} -> binary mask of pixels above the level (Otsu's when not given)."""
        level = field(body, "level", int, None)

        def compute(image):
            t = otsu_threshold(image) if level is None else level
            mask = [[1 if v > t else 0 for v in row] for row in image]
            return {"level": t, "mask": mask, "foreground": sum(map(sum, mask))}
        return self._cached("threshold", body, compute)

    def handle_blobs(self, body: Any) -> dict:
        """{image, level?, min_area?} -> connected bright regions, largest first."""
        level = field(body, "level", int, None)
        min_area = field(body, "min_area", int, 1)

        def compute(image):
            t = otsu_threshold(image) if level is None else level
            mask = [[1 if v > t else 0 for v in row] for row in image]
            blobs = [c for c in components(mask) if c["area"] >= min_area]
            return {"level": t, "count": len(blobs), "blobs": blobs}
        return self._cached("blobs", body, compute)

    def handle_analyze(self, body: Any) -> dict:
        """{image} -> statistics, Otsu level, edge density and the largest blobs, in one summary."""
        def compute(image):
            t = otsu_threshold(image)
            _, n = edge_map(image, 128.0)
            blobs = components([[1 if v > t else 0 for v in row] for row in image])
            return {"stats": image_stats(image), "level": t,
                    "edge_density": round(n / (len(image) * len(image[0])), 4),
                    "blobs": len(blobs), "largest": blobs[:3]}
        result = self._cached("analyze", body, compute)
        self.report({"images_analyzed": self.counters["op.analyze"]})
        return result

