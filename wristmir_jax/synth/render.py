"""Rendering one wrist radiograph (and its bone boxes) from a planned study, a view and an RNG.

Anatomy lives in a canonical frame of a right wrist in millimetres (x toward the ulna in PA /
toward dorsal in lateral, y distal, origin at the distal radial physis). Each structure has a PA
and a lateral placement; a view mixes them (oblique ~ halfway). Bones are projected analytically:
an ellipsoidal or tubular body with a cortical shell gives the path length through cortex and
cancellous bone per pixel, so cortices look bright at the edges and medullary cavities darker.
The pixel grid is mapped back into the canonical frame once (rotation, scale, translation,
mirroring for a left wrist), every structure is evaluated only inside its own pixel window, and
one physical chain follows: transmission, scatter, quantum noise, one detector blur, log display.

Fractures are rigid motions of a fragment across a cut (displacement, angulation, physeal
widening), lucent bands along the cut, cortical bulges, bowing, and callus shells - all local to
the region box, and sized in millimetres so that a bone crop shows them clearly while the whole
downsampled image shows a few pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage

F32 = np.float32

# Linear attenuation per mm (relative units).
MU_SOFT, MU_FAT = 0.0155, 0.0105
MU_CORTEX, MU_CANCELLOUS, MU_MARROW = 0.115, 0.05, 0.028
MU_METAL, MU_LEAD = 1.2, 2.5


# ---------------------------------------------------------------------------------------------
# Geometry helpers.

class Canvas:
    """Pixel grid <-> canonical millimetres, with per-structure windows."""

    def __init__(self, size: int, fov_mm: float, center: tuple[float, float], rot_deg: float,
                 shift_px: tuple[float, float], mirror: bool):
        self.size = size
        self.ppm = size / fov_mm
        self.cx, self.cy = center
        self.c, self.s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
        self.shift = shift_px
        self.mirror = mirror
        j = np.arange(size, dtype=F32) + F32(0.5 - size / 2 - shift_px[0])
        i = np.arange(size, dtype=F32) + F32(0.5 - size / 2 - shift_px[1])
        U, V = np.meshgrid(j, i)
        ur = self.c * U + self.s * V
        vr = -self.s * U + self.c * V
        x = ur / F32(self.ppm)
        if mirror:
            x = -x
        self.X = (x + F32(self.cx)).astype(F32)
        self.Y = (-vr / F32(self.ppm) + F32(self.cy)).astype(F32)

    def to_px(self, x, y):
        x = np.asarray(x, dtype=float) - self.cx
        y = np.asarray(y, dtype=float) - self.cy
        if self.mirror:
            x = -x
        ur, vr = x * self.ppm, -y * self.ppm
        U = self.c * ur - self.s * vr
        V = self.s * ur + self.c * vr
        return U + self.size / 2 + self.shift[0], V + self.size / 2 + self.shift[1]

    def box_px(self, x0, y0, x1, y1) -> tuple[float, float, float, float]:
        cols, rows = self.to_px([x0, x1, x0, x1], [y0, y0, y1, y1])
        return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())

    def window(self, x0, y0, x1, y1):
        c0, r0, c1, r1 = self.box_px(x0, y0, x1, y1)
        c0, r0 = max(0, int(math.floor(c0)) - 1), max(0, int(math.floor(r0)) - 1)
        c1, r1 = min(self.size, int(math.ceil(c1)) + 1), min(self.size, int(math.ceil(r1)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return (slice(r0, r1), slice(c0, c1))


def profile(r2, depth, k, mu_c, mu_m):
    """Projected attenuation of an ellipsoidal body with a cortical shell.

    r2: squared normalised radius (1 at the outer surface); depth: half-thickness in mm at the
    centre; k: inner/outer size ratio (1 - cortex/size); mu_m may be an array (texture).
    """
    t_out = 2 * depth * np.sqrt(np.maximum(F32(0), 1 - r2))
    t_in = 2 * depth * k * np.sqrt(np.maximum(F32(0), 1 - r2 / (k * k)))
    return mu_c * (t_out - t_in) + mu_m * t_in


def rot(x, y, px, py, ang):
    c, s = math.cos(ang), math.sin(ang)
    dx, dy = x - px, y - py
    return px + c * dx - s * dy, py + s * dx + c * dy


@dataclass
class Motion:
    """A fragment's rigid motion: rotate by `ang` (rad) about the pivot, then shift."""

    px: float = 0.0
    py: float = 0.0
    ang: float = 0.0
    dx: float = 0.0
    dy: float = 0.0

    def forward(self, x, y):
        x2, y2 = rot(x, y, self.px, self.py, self.ang)
        return x2 + self.dx, y2 + self.dy

    def inverse(self, x, y):
        return rot(x - F32(self.dx), y - F32(self.dy), self.px, self.py, -self.ang)


def segments_mask(X, Y, segs, width):
    """Anti-aliased union of thick line segments (for lead letters and wires), values in [0, 1]."""
    d = np.full(X.shape, np.inf, dtype=F32)
    for (x0, y0), (x1, y1) in segs:
        vx, vy = x1 - x0, y1 - y0
        L2 = vx * vx + vy * vy
        t = np.clip(((X - x0) * vx + (Y - y0) * vy) / L2, 0, 1)
        d = np.minimum(d, np.hypot(X - x0 - t * vx, Y - y0 - t * vy))
    return d


# ---------------------------------------------------------------------------------------------
# Long bones (radius, ulna).

@dataclass
class LongBone:
    cx: float
    hw_l: float
    hw_r: float
    fl_l: float
    fl_r: float
    flare_len: float
    y0: float
    slope: float
    gap: float
    depth: float
    cortex_shaft: float
    cortex_meta: float
    density: float = 1.0
    # Epiphysis (None = not ossified): centre offset from the physeal midpoint, half-width,
    # base height, extra height toward `sty_dir` (radial styloid), superellipse exponent.
    epi: dict | None = None
    bulges: list = field(default_factory=list)  # (y, amp_l, amp_r, half_length)
    bow: tuple | None = None                     # (y_c, amp, half_length)
    sclerotic: list = field(default_factory=list)  # (y, strength) impaction bands

    @property
    def mid_phys(self) -> float:
        return self.cx + (self.hw_r - self.hw_l) / 2 + (self.fl_r - self.fl_l) / 2

    @property
    def half_phys(self) -> float:
        return (self.hw_l + self.hw_r + self.fl_l + self.fl_r) / 2

    def flare(self, Y):
        return np.clip(1 + (Y - self.y0) / self.flare_len, 0, 1) ** 2.2

    def edges(self, Y):
        f = self.flare(Y)
        xl = self.cx - self.hw_l - self.fl_l * f
        xr = self.cx + self.hw_r + self.fl_r * f
        for yb, al, ar, hl in self.bulges:
            tri = np.maximum(0, 1 - np.abs(Y - yb) / hl)
            xl = xl - al * tri
            xr = xr + ar * tri
        if self.bow is not None:
            # A compact (cos^2) bend, so the deformity stays inside the region box.
            yc, amp, hl = self.bow
            b = amp * np.cos(np.clip((Y - yc) / hl, -1, 1) * (math.pi / 2)) ** 2
            xl, xr = xl + b, xr + b
        return xl, xr, f

    def phys(self, X):
        return self.y0 + self.slope * (X - self.mid_phys)

    def meta(self, X, Y, tex):
        xl, xr, f = self.edges(Y)
        half = np.maximum((xr - xl) / 2, 0.3)
        mid = (xl + xr) / 2
        u = (X - mid) / half
        yp = self.phys(X)
        r2 = u * u
        ct = self.cortex_shaft * (1 - f) + self.cortex_meta * f
        k = np.clip(1 - ct / half, 0.2, 0.96)
        mu_m = (MU_MARROW * (1 - f) + MU_CANCELLOUS * f) * (1 + 0.15 * tex * (0.3 + f))
        d = self.depth * half
        # Soft (0.2 mm) metaphyseal end instead of a hard cut: no stair-step aliasing.
        a = profile(r2, d, k, MU_CORTEX, mu_m) * np.clip((yp - Y) * 5.0 + 0.5, 0, 1)
        # Zone of provisional calcification: a dense line at the metaphyseal end (a faint
        # physeal scar once the physis has closed).
        zpc = np.exp(-np.maximum(yp - Y, 0) / 0.5) * (Y < yp)
        chord = d * np.sqrt(np.maximum(0, 1 - u * u))
        a = a + (0.035 if self.gap > 0.05 else 0.02) * zpc * chord
        for yb, strength in self.sclerotic:
            a = a + strength * np.exp(-((Y - yb) / 0.7) ** 2) * chord * (Y < yp)
        return self.density * a

    def epiphysis(self, X, Y, tex):
        e = self.epi
        out = np.zeros(X.shape, dtype=F32)
        if e is None:
            return out
        ce = self.mid_phys + e["off"]
        u = (X - ce) * F32(1.0 / e["hw"])
        y_rel = Y - (self.phys(X) + self.gap)
        # Only pixels that can be inside the epiphysis pay for the superellipse below.
        sel = (np.abs(u) < 1) & (y_rel > 0) & (y_rel < e["h0"] + e["hs"])
        if not sel.any():
            return out
        u, y_rel, t = u[sel], y_rel[sel], tex[sel]
        # Height along the physis: rounded at both ends, rising toward the styloid side (the
        # radial styloid in PA), whose outer margin then slopes back down to the physis.
        ramp = np.clip((0.3 + u * e["sty_dir"]) / 1.12, 0, 1)
        u2 = u * u
        h = (e["h0"] + e["hs"] * ramp * np.sqrt(ramp)) * np.maximum(1 - u2 * u2, 0) ** 0.35
        v = 2 * y_rel / np.maximum(h, 0.05) - 1
        v2 = v * v
        r2 = np.cbrt(u2 * u2 * u2 + v2 * v2 * v2)
        depth = self.depth * e["hw"] * 0.85
        k = max(0.3, 1 - 0.45 / max(e["hw"], 0.5))
        out[sel] = self.density * profile(r2, depth, k, MU_CORTEX * 0.8, MU_CANCELLOUS * (1 + 0.14 * t))
        return out

    def epi_top(self) -> tuple[float, float, float, float]:
        """Canonical bbox (x0, y0, x1, y1) of the epiphysis (or of the physis if unossified)."""
        yp_l, yp_r = self.phys(self.mid_phys - self.half_phys), self.phys(self.mid_phys + self.half_phys)
        if self.epi is None:
            return (self.mid_phys - self.half_phys, min(yp_l, yp_r),
                    self.mid_phys + self.half_phys, max(yp_l, yp_r) + 1.0)
        e = self.epi
        ce = self.mid_phys + e["off"]
        x0, x1 = ce - e["hw"], ce + e["hw"]
        ys = [self.phys(x) + self.gap for x in (x0, x1)]
        top = max(ys) + e["h0"] + e["hs"]
        return x0, min(ys), x1, top


@dataclass
class Styloid:
    """A tapered capsule (the ulnar styloid) from base (bx, by) toward tip (tx, ty)."""

    bx: float
    by: float
    tx: float
    ty: float
    hw_base: float
    hw_tip: float
    depth: float

    def __call__(self, X, Y, tex):
        vx, vy = self.tx - self.bx, self.ty - self.by
        L = math.hypot(vx, vy)
        ux, uy = vx / L, vy / L
        s = (X - self.bx) * ux + (Y - self.by) * uy
        t = -(X - self.bx) * uy + (Y - self.by) * ux
        sc = np.clip(s / L, 0, 1)
        hw = self.hw_base + (self.hw_tip - self.hw_base) * sc
        over = np.where(s < 0, -s, np.where(s > L, s - L, 0)) / np.maximum(hw, 0.2)
        r2 = (t / hw) ** 2 + over ** 2
        return profile(r2, self.depth * hw, 0.6, MU_CORTEX * 0.8, MU_CANCELLOUS * (1 + 0.14 * tex))

    def bbox(self, pad: float = 0.0):
        hw = max(self.hw_base, self.hw_tip) + pad
        return (min(self.bx, self.tx) - hw, min(self.by, self.ty) - hw,
                max(self.bx, self.tx) + hw, max(self.by, self.ty) + hw)


# ---------------------------------------------------------------------------------------------
# Anatomy for one view.

def _mix(pa, lat, t):
    return pa + (lat - pa) * t


# Carpal bones: name, onset age (years), PA (x, y above articular surface, a, b, angle deg),
# lateral (x, y, a, b, angle) - adult millimetres.
CARPALS = (
    ("capitate", 0.3, (-3.0, 21.0, 5.5, 9.0, 0), (1.0, 21.0, 5.5, 10.0, 0)),
    ("hamate", 0.4, (7.0, 20.0, 5.5, 8.0, -12), (2.0, 19.0, 5.0, 8.0, 5)),
    ("triquetrum", 2.5, (9.0, 8.5, 5.0, 4.5, 20), (3.5, 8.5, 5.0, 5.0, 0)),
    ("lunate", 3.5, (-2.5, 6.5, 6.0, 5.5, 0), (0.5, 6.0, 6.0, 5.5, 0)),
    ("scaphoid", 5.0, (-14.0, 9.0, 4.5, 9.0, -40), (-3.5, 11.0, 4.5, 9.0, 35)),
    ("trapezium", 5.0, (-20.0, 21.0, 6.0, 6.0, 20), (-6.0, 22.0, 5.0, 6.0, 0)),
    ("trapezoid", 5.5, (-11.0, 24.0, 4.5, 5.5, 0), (-2.0, 24.0, 4.5, 5.0, 0)),
    ("pisiform", 9.5, (11.0, 11.0, 4.0, 4.0, 0), (-7.5, 12.0, 4.0, 4.0, 0)),
)
# Metacarpals: PA (base x, base y above articular surface, angle deg from vertical, toward ulna
# positive), lateral (x, y, angle), base half-width, shaft half-width.
METACARPALS = (
    (1, (-21.0, 26.0, -28.0), (-8.0, 24.0, -22.0), 5.0, 3.6),
    (2, (-11.0, 32.0, -6.0), (-1.5, 32.0, -1.0), 5.5, 3.6),
    (3, (-2.5, 32.5, 0.0), (0.0, 32.5, 0.0), 5.5, 3.6),
    (4, (5.5, 30.5, 5.0), (1.0, 30.5, 1.5), 4.8, 3.1),
    (5, (12.5, 28.5, 11.0), (2.0, 28.5, 3.0), 4.8, 3.1),
)


@dataclass
class Anatomy:
    g: float
    radius: LongBone
    ulna: LongBone
    styloid: Styloid | None
    y_art: float
    carpals: list  # (name, cx, cy, a, b, ang_deg, maturity)
    metacarpals: list  # (index, bx, by, ang_deg, hw_base, hw_shaft, epi)
    box_h_r: float
    box_h_u: float


def build_anatomy(age: float, anat: dict, t: float) -> Anatomy:
    """The bones of one patient at one age in one view mixture t (0 PA, 1 lateral)."""
    g = (0.5 + 0.5 * min(1.0, (age - 2.0) / 13.0) ** 0.85) * anat["size_jitter"]
    shift = anat["ossif_shift"]
    closure = anat["closure_age"]
    open_frac = float(np.clip((closure - age) / 2.0, 0, 1))
    gap = (1.9 - 0.055 * (age - 2)) * open_frac  # mm, not scaled: cartilage stays thick in the young
    # Distal radius.
    m_e = float(np.clip((age - 1.0 + shift) / 10.0, 0, 1))
    incl = math.tan(math.radians(_mix(anat["radial_incl_deg"], anat["volar_tilt_deg"], t)))
    radius = LongBone(
        cx=_mix(-10.0, 0.0, t) * g, hw_l=_mix(6.5, 6.0, t) * g, hw_r=_mix(6.5, 6.0, t) * g,
        fl_l=_mix(7.5, 3.5, t) * g, fl_r=_mix(2.5, 3.0, t) * g, flare_len=24.0 * g,
        y0=0.0, slope=-incl, gap=gap, depth=_mix(0.75, 1.3, t),
        cortex_shaft=2.2 * g, cortex_meta=0.55 * g, density=anat["bone_density"])
    rhw = radius.half_phys
    radius.epi = {"off": _mix(-0.12, 0.0, t) * rhw * (1 - m_e), "hw": rhw * (0.55 + 0.45 * m_e),
                  "h0": (2.2 + 4.3 * m_e) * g, "hs": _mix(8.0, 2.0, t) * m_e ** 1.5 * g,
                  "sty_dir": -1.0, "p": 2.0 + 1.2 * m_e}
    # Distal ulna.
    m_u = float(np.clip((age - (5.5 + shift)) / 6.0, 0, 1))
    u_y0 = (-2.5 + anat["ulnar_variance"]) * g
    ulna = LongBone(
        cx=_mix(11.0, 2.5, t) * g, hw_l=4.5 * g, hw_r=4.5 * g, fl_l=_mix(3.5, 1.5, t) * g,
        fl_r=_mix(1.0, 1.5, t) * g, flare_len=18.0 * g, y0=u_y0, slope=_mix(0.05, 0.0, t),
        gap=gap * 0.9, depth=_mix(0.9, 1.0, t), cortex_shaft=1.8 * g, cortex_meta=0.5 * g,
        density=anat["bone_density"])
    uhw = ulna.half_phys
    if age >= 5.5 + shift:
        ulna.epi = {"off": -0.1 * uhw, "hw": uhw * (0.45 + 0.45 * m_u), "h0": (1.5 + 3.5 * m_u) * g,
                    "hs": 0.0, "sty_dir": 1.0, "p": 2.0 + 0.6 * m_u}
    styloid = None
    m_s = float(np.clip((age - (7.5 + shift)) / 3.5, 0, 1))
    if ulna.epi is not None and m_s > 0:
        e = ulna.epi
        ce = ulna.mid_phys + e["off"]
        bx = ce + e["hw"] * _mix(0.55, 0.35, t)
        by = ulna.phys(bx) + ulna.gap + e["h0"] * 0.45
        L = (1.6 + 3.6 * m_s) * g
        ang = math.radians(_mix(8.0, 20.0, t))
        styloid = Styloid(bx, by, bx + L * math.sin(ang), by + L * math.cos(ang) + e["h0"] * 0.3,
                          hw_base=(1.3 + 1.0 * m_s) * g, hw_tip=(0.75 + 0.3 * m_s) * g, depth=1.1)
    y_art = gap + radius.epi["h0"]
    carpals = []
    cj = anat["carpal_jitter"]
    for i, (name, onset, pa, lat) in enumerate(CARPALS):
        m = (age - (onset + shift)) / 7.0
        if m <= 0:
            continue
        m = min(1.0, m)
        sz = 0.35 + 0.65 * m ** 0.8
        # Young children's carpal ossicles sit further apart (cartilage fills the gaps).
        spread = 1.0 + 0.25 * (1 - g)
        cx = _mix(pa[0], lat[0], t) * g * spread + cj[i][0] * g
        cy = y_art + _mix(pa[1], lat[1], t) * g * spread + cj[i][1] * g
        a = _mix(pa[2], lat[2], t) * g * sz
        b = _mix(pa[3], lat[3], t) * g * (sz if m < 1 else 1.0) * (0.6 + 0.4 * m)
        b = max(b, a * 0.7) if m < 0.5 else b
        carpals.append((name, cx, cy, a, b, _mix(pa[4], lat[4], t), m))
    mcs = []
    for idx, pa, lat, hwb, hws in METACARPALS:
        bx = _mix(pa[0], lat[0], t) * g
        by = y_art + _mix(pa[1], lat[1], t) * g * (1.0 + 0.15 * (1 - g))
        ang = _mix(pa[2], lat[2], t)
        epi = idx == 1 and age < closure - 1.0
        mcs.append((idx, bx, by, ang, hwb * g, hws * g, epi))
    return Anatomy(g=g, radius=radius, ulna=ulna, styloid=styloid, y_art=y_art, carpals=carpals,
                   metacarpals=mcs, box_h_r=0.95 * 2 * rhw, box_h_u=1.1 * 2 * uhw)


# ---------------------------------------------------------------------------------------------
# Fractures.

@dataclass
class Fracture:
    """Parts of one long bone that move (membership functions), the motion and the lucent band."""

    motion: Motion | None = None
    member: dict = field(default_factory=dict)  # part -> None | "all" | fn(X, Y) -> bool array
    band: Callable | None = None                # fn(X, Y) -> [0, 1] lucent band strength
    contrast: float = 0.0
    callus: tuple | None = None                 # (y_f, half_length, thickness)
    extra_box: list = field(default_factory=list)  # canonical points the region box must cover


def _line_band(xm, yf, slope, width, extent_fn=None):
    norm = math.sqrt(1 + slope * slope)

    def band(X, Y):
        d = np.abs(Y - (yf + slope * (X - xm))) / norm
        b = np.exp(-(d / width) ** 2)
        if extent_fn is not None:
            b = b * extent_fn(X, Y)
        return b
    return band


def _vline_band(x_of_y, slope, width, ymask=None):
    norm = math.sqrt(1 + slope * slope)

    def band(X, Y):
        d = np.abs(X - x_of_y(Y)) / norm
        b = np.exp(-(d / width) ** 2)
        if ymask is not None:
            b = b * ymask(X, Y)
        return b
    return band


def make_fracture(bone: LongBone, r: dict, geo: dict, g: float, view_t: float, box_h: float) -> Fracture:
    """Turns a region finding + its study geometry into bone edits and a Fracture (or None)."""
    pattern = r["pattern"]
    unc = r["fracture"] == "uncertain"
    side = int(geo["side"])
    half = bone.half_phys
    mid = bone.mid_phys
    yf = bone.y0 - geo["level"] * box_h
    xl, xr, _ = bone.edges(np.array([yf], dtype=F32))
    xm, hf = float((xl[0] + xr[0]) / 2), float((xr[0] - xl[0]) / 2)
    view_amp = 0.65 + 0.35 * view_t
    lw = geo["line_width"] * (0.8 + 0.2 * g)
    contrast = geo["line_contrast"] * (0.5 if r["healing"] else 1.0)
    fr = Fracture(contrast=contrast)
    if pattern == "buckle":
        amp = geo["bulge"] * g
        al = amp if (side < 0 or geo["both_sides"]) else 0.0
        ar = amp if (side > 0 or geo["both_sides"]) else 0.0
        hl = 2.6 * g
        bone.bulges.append((yf, al, ar, hl))
        bone.sclerotic.append((yf, 0.012 if unc else 0.03))
        fr.contrast = 0.0
        if r["healing"]:
            fr.callus = (yf, 6.0 * g, geo["callus"] * g * 0.6)
        return fr
    if pattern == "plastic_bowing":
        bone.bow = (bone.y0 - 0.5 * box_h, geo["bow"] * g * side * view_amp, 0.42 * box_h)
        fr.contrast = 0.0
        if r["healing"]:
            fr.callus = (bone.y0 - 0.55 * box_h, 6.0 * g, geo["callus"] * g * 0.5)
        return fr
    if pattern == "salter_harris":
        grade = r["salter_harris"]
        shift = geo["shift"] * g * view_amp * 0.6
        widen = 0.0 if grade == 5 else (1.1 if grade == 1 else 0.7)
        mot = Motion(px=mid, py=bone.y0, ang=math.radians(geo["angle_deg"] * 0.5 * view_amp),
                     dx=shift, dy=widen)
        yp_a = bone.phys(mid)
        if grade == 5:
            bone.gap *= 0.3
            bone.sclerotic.append((bone.y0 - 0.4, 0.05))
            return fr
        if grade == 1:
            fr.motion, fr.member = mot, {"E": "all", "S": "all"}
            fr.contrast = 0.0
        elif grade == 2:
            x_a = mid - side * 0.15 * half
            k = 1.4

            def x_line(Y, x_a=x_a, k=k):
                return x_a + side * (yp_a - Y) * k

            m = lambda X, Y: (side * (X - x_line(Y)) > 0) & (Y > yp_a - 0.6 * half)
            fr.motion, fr.member = mot, {"M": m, "E": "all", "S": "all"}
            fr.band = _vline_band(x_line, k, lw, lambda X, Y: (Y < bone.phys(X)) & (Y > yp_a - 0.7 * half))
        else:
            e = bone.epi or {"hw": half * 0.6, "off": 0.0}
            x_s = mid + e["off"] + (geo["sh_offset"] - 0.5) * e["hw"] * 1.2
            k = 0.0 if grade == 3 else 0.45

            def x_line(Y, x_s=x_s, k=k):
                return x_s + side * np.maximum(yp_a - Y, 0) * k * 2.2

            m = lambda X, Y: side * (X - x_line(Y)) > 0
            mot.dx = shift * 0.5 + side * 0.6
            mot.dy = 0.5
            mot.ang = 0.0
            fr.motion = mot
            fr.member = {"E": m, "S": "all" if side > 0 else None} if grade == 3 else {"E": m, "M": m, "S": "all" if side > 0 else None}
            ymask = (lambda X, Y: Y > bone.phys(X)) if grade == 3 else (lambda X, Y: Y > yp_a - 0.6 * half)
            fr.band = _vline_band(x_line, k * 2.2, lw, ymask)
        fr.extra_box = [(mid - half - abs(shift) - 1, yp_a), (mid + half + abs(shift) + 1, yp_a)]
        if r["healing"]:
            fr.callus = (yp_a - 0.3 * box_h, 5.0 * g, geo["callus"] * g * 0.45)
        return fr
    # Line fractures: complete, greenstick, uncertain without a pattern.
    slope = geo["line_slope"]
    if pattern == "greenstick":
        depth = geo["greenstick_depth"]
        extent = lambda X, Y: np.clip((side * (X - xm) / hf - (1 - 2 * depth)) * 3 + 0.5, 0, 1)
        ang = math.radians(abs(geo["angle_deg"]) * view_amp) * side
        fr.motion = Motion(px=xm - side * hf, py=yf, ang=ang)
        fr.member = {"M": lambda X, Y: Y > yf + slope * (X - xm), "E": "all", "S": "all"}
        fr.band = _line_band(xm, yf, slope, lw, extent)
    elif pattern == "complete":
        fr.band = _line_band(xm, yf, slope, lw)
        if r["displaced"] or r["angulated"]:
            ang = math.radians(geo["angle_deg"] * view_amp)
            fr.motion = Motion(px=xm, py=yf, ang=ang, dx=geo["shift"] * g * view_amp,
                               dy=-0.4 if r["displaced"] else 0.0)
            fr.member = {"M": lambda X, Y: Y > yf + slope * (X - xm), "E": "all", "S": "all"}
    else:  # uncertain, no pattern: a faint partial line
        extent = lambda X, Y: np.clip((side * (X - xm) / hf - 0.1) * 3 + 0.5, 0, 1)
        fr.band = _line_band(xm, yf, slope, lw, extent)
    if r["healing"]:
        fr.callus = (yf, 7.0 * g, geo["callus"] * g)
    return fr


def styloid_fracture(sty: Styloid, r: dict, geo: dict, g: float) -> Fracture:
    """Avulsion (or an unspecified fracture) across the styloid: a tip fragment and a gap."""
    unc = r["fracture"] == "uncertain"
    vx, vy = sty.tx - sty.bx, sty.ty - sty.by
    L = math.hypot(vx, vy)
    ux, uy = vx / L, vy / L
    cut = 0.4 * L
    cxp, cyp = sty.bx + ux * cut, sty.by + uy * cut
    fr = Fracture(contrast=geo["line_contrast"] * (0.5 if r["healing"] else 1.0))
    w = geo["line_width"] * 0.7 * (0.8 + 0.2 * g)

    def band(X, Y):
        s = (X - cxp) * ux + (Y - cyp) * uy
        return np.exp(-(s / w) ** 2)
    fr.band = band
    if not unc:
        gap = geo["avulsion_gap"] * g * (1.8 if r["displaced"] else 0.6)
        side = geo["side"]
        fr.motion = Motion(px=cxp, py=cyp, ang=math.radians(18 * side) if r["displaced"] else 0.0,
                           dx=ux * gap + (uy * side * gap * 0.5 if r["displaced"] else 0),
                           dy=uy * gap - (ux * side * gap * 0.5 if r["displaced"] else 0))
        fr.member = {"S": lambda X, Y: (X - cxp) * ux + (Y - cyp) * uy > 0}
    return fr


# ---------------------------------------------------------------------------------------------
# Drawing.

def _eval_long_bone(bone: LongBone, sty: Styloid | None, X, Y, tex, fr: Fracture | None,
                    sty_fr: Fracture | None):
    def sty_fn(Xa, Ya):
        if sty is None:
            return np.zeros_like(Xa)
        if sty_fr is None or sty_fr.motion is None:
            a = sty(Xa, Ya, tex)
        else:
            m = sty_fr.member["S"]
            Xp, Yp = sty_fr.motion.inverse(Xa, Ya)
            a = sty(Xa, Ya, tex) * ~m(Xa, Ya) + sty(Xp, Yp, tex) * m(Xp, Yp)
        if sty_fr is not None and sty_fr.band is not None:
            a = a * (1 - sty_fr.contrast * sty_fr.band(Xa, Ya))
        return a

    parts = {"M": lambda a, b: bone.meta(a, b, tex), "E": lambda a, b: bone.epiphysis(a, b, tex),
             "S": sty_fn}
    if fr is None or fr.motion is None:
        total = sum(fn(X, Y) for fn in parts.values())
    else:
        Xp, Yp = fr.motion.inverse(X, Y)
        total = np.zeros_like(X)
        for name, fn in parts.items():
            m = fr.member.get(name)
            if m is None:
                total = total + fn(X, Y)
            elif isinstance(m, str):
                total = total + fn(Xp, Yp)
            else:
                total = total + fn(X, Y) * ~m(X, Y) + fn(Xp, Yp) * m(Xp, Yp)
    if fr is not None and fr.band is not None and fr.contrast > 0:
        total = total * (1 - fr.contrast * fr.band(X, Y))
    if fr is not None and fr.callus is not None:
        yf, hl, th = fr.callus
        xl, xr, _ = bone.edges(Y)
        half = (xr - xl) / 2
        dx = X - (xl + xr) / 2
        outer = np.sqrt(np.maximum(0, (half + th) ** 2 - dx * dx))
        inner = np.sqrt(np.maximum(0, half ** 2 - dx * dx))
        env = np.clip(1 - ((Y - yf) / hl) ** 2, 0, 1) ** 0.7
        total = total + 0.05 * (outer - inner) * env * (0.55 + 0.9 * np.abs(tex))
    return total


def _bone_bbox(bone: LongBone, y_low: float, pad: float = 2.0):
    xl, xr, _ = bone.edges(np.linspace(y_low, bone.y0, 48, dtype=F32))
    ex0, ey0, ex1, ey1 = bone.epi_top()
    return (min(xl.min(), ex0) - pad, y_low, max(xr.max(), ex1) + pad, ey1 + pad)


def _interp_index(n_out: int, n_in: int):
    """Source indices and weights for linear interpolation between pixel-centre grids."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.minimum(np.floor(src).astype(np.intp), max(n_in - 2, 0))
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(F32)


def upsample2(a: np.ndarray) -> np.ndarray:
    """Exact 2x linear upsampling between pixel-centre grids, with slices only (fast)."""
    def axis0(x):
        prev = np.concatenate([x[:1], x[:-1]], axis=0)
        nxt = np.concatenate([x[1:], x[-1:]], axis=0)
        out = np.empty((2 * x.shape[0],) + x.shape[1:], dtype=F32)
        out[0::2] = 0.75 * x + 0.25 * prev
        out[1::2] = 0.75 * x + 0.25 * nxt
        return out
    return axis0(axis0(a).T).T


def upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear upsampling of a smooth field: repeated exact 2x steps when the sizes allow it,
    else separable gathers (no BLAS)."""
    while small.shape[0] * 2 <= shape[0] and small.shape[1] * 2 <= shape[1] \
            and shape[0] % (small.shape[0] * 2) == 0 and shape[1] % (small.shape[1] * 2) == 0:
        small = upsample2(small)
    if small.shape == tuple(shape):
        return np.ascontiguousarray(small, dtype=F32)
    r0, r1, wr = _interp_index(shape[0], small.shape[0])
    c0, c1, wc = _interp_index(shape[1], small.shape[1])
    rows = small[r0] * (1 - wr)[:, None] + small[r1] * wr[:, None]
    return (rows[:, c0] * (1 - wc) + rows[:, c1] * wc).astype(F32)


def _soft_tissue(canvas: Canvas, anat: Anatomy, meta: dict, t: float, swelling: tuple | None,
                 cast: dict | None, out: np.ndarray):
    """Forearm and hand envelope (muscle core + subcutaneous fat) and an optional cast shell.

    Evaluated on a half-resolution grid (the envelope is smooth) and upsampled linearly."""
    if canvas.size % 2 == 0:
        X = (canvas.X[0::2, 0::2] + canvas.X[1::2, 1::2]) / 2
        Y = (canvas.Y[0::2, 0::2] + canvas.Y[1::2, 1::2]) / 2
    else:
        X, Y = canvas.X, canvas.Y
    g = anat.g
    r, u = anat.radius, anat.ulna
    # In lateral the forearm is seen through its width, so more soft tissue lies beyond the
    # overlapping radius and ulna.
    margin = meta["soft_margin"] * g * (1 + 0.9 * t)
    ya = anat.y_art
    # Envelope edges at knots along y (forearm -> wrist -> hand).
    knots = np.array([-200.0, -30 * g, ya, ya + 20 * g, ya + 45 * g, 300.0], dtype=F32)
    left_bone = r.cx - r.hw_l
    right_bone = u.cx + u.hw_r
    thenar = _mix(9.0, 3.0, t) * g
    wl = np.array([left_bone - margin, left_bone - margin, r.cx - r.hw_l - r.fl_l - margin * 0.6,
                   left_bone - margin * 0.6 - thenar, left_bone - margin * 0.6 - thenar * 1.3,
                   left_bone - margin * 0.6 - thenar * 1.3], dtype=F32)
    wr = np.array([right_bone + margin, right_bone + margin, right_bone + margin * 0.7,
                   right_bone + margin * 0.8 + _mix(4.0, 1.0, t) * g,
                   right_bone + margin * 0.8 + _mix(6.0, 1.0, t) * g,
                   right_bone + margin * 0.8 + _mix(6.0, 1.0, t) * g], dtype=F32)
    xl_env = np.interp(Y.ravel(), knots, wl).astype(F32).reshape(Y.shape)
    xr_env = np.interp(Y.ravel(), knots, wr).astype(F32).reshape(Y.shape)
    if swelling is not None:
        ysw, amp, side = swelling
        bump = amp * np.exp(-((Y - ysw) / (14 * g)) ** 2)
        if side < 0:
            xl_env = xl_env - bump
        else:
            xr_env = xr_env + bump
    half = (xr_env - xl_env) / 2
    mid = (xr_env + xl_env) / 2
    dx = X - mid
    depth_scale = 0.8 - 0.25 * np.clip((Y - (ya + 8 * g)) / (16 * g), 0, 1)
    fat = 3.0 * g
    outer = np.sqrt(np.maximum(0, half * half - dx * dx))
    inner_h = np.maximum(half - fat, 1.0)
    inner = np.sqrt(np.maximum(0, inner_h * inner_h - dx * dx))
    a = depth_scale * (MU_FAT * 2 * (outer - inner) + MU_SOFT * 2 * inner)
    # Thumb: a soft-tissue sleeve around the first metacarpal, merged with the hand outline.
    _, bx, by, ang_deg, hwb, _, _ = anat.metacarpals[0]
    ang = math.radians(ang_deg)
    p0 = (bx - math.sin(ang) * 6 * g, by - math.cos(ang) * 6 * g)
    p1 = (bx + math.sin(ang) * 60 * g, by + math.cos(ang) * 60 * g)
    rt = hwb + 5.5 * g
    w = canvas.window(min(p0[0], p1[0]) - rt, min(p0[1], p1[1]) - rt, max(p0[0], p1[0]) + rt,
                      max(p0[1], p1[1]) + rt)
    if w is not None:
        if X.shape != canvas.X.shape:  # half-resolution grid
            w = (slice(w[0].start // 2, (w[0].stop + 1) // 2), slice(w[1].start // 2, (w[1].stop + 1) // 2))
        d = segments_mask(X[w], Y[w], [(p0, p1)], 0)
        thumb = 0.8 * MU_SOFT * 2 * np.sqrt(np.maximum(0, rt * rt - d * d))
        a[w] = np.maximum(a[w], thumb)
    if cast is not None:
        pad, th, mu, mesh = cast["pad"] * g, cast["thick"] * g, cast["mu"], cast["mesh"]
        ci = half + pad
        co = ci + th
        shell = 2 * (np.sqrt(np.maximum(0, co * co - dx * dx)) - np.sqrt(np.maximum(0, ci * ci - dx * dx)))
        end = ya + cast["end"] * g
        fade = np.clip((end - Y) / (3 * g), 0, 1)
        tex = 1.0
        if mesh:
            p = 2.2 * g
            tex = 1 + 0.18 * np.sin((X + Y) * (6.283 / p)) * np.sin((X - Y) * (6.283 / p))
        a = a + mu * shell * fade * depth_scale * tex
    out += a.astype(F32) if a.shape == out.shape else upsample(a.astype(F32), out.shape)


def _carpal(canvas, out, tex, name, cx, cy, a, b, ang, m, line=None):
    r = max(a, b) + 1
    w = canvas.window(cx - r, cy - r, cx + r, cy + r)
    if w is None:
        return
    X, Y, T = canvas.X[w], canvas.Y[w], tex[w]
    c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    dx, dy = X - cx, Y - cy
    xs = (c * dx + s * dy) / a
    ys = (-s * dx + c * dy) / b
    p = 2.0 + 0.8 * m
    r2 = (np.abs(xs) ** p + np.abs(ys) ** p) ** (2 / p)
    k = max(0.35, 1 - 0.6 / max(min(a, b), 0.5))
    val = profile(r2, min(a, b) * 1.35, k, MU_CORTEX * 0.85, MU_CANCELLOUS * (1 + 0.14 * T))
    if line is not None:
        val = val * (1 - line[0] * np.exp(-(ys / line[1]) ** 2))
    out[w] += val


def _metacarpal(canvas, out, tex, bx, by, ang_deg, hwb, hws, epi, g, length, frac_line=None):
    ang = math.radians(ang_deg)
    ux, uy = math.sin(ang), math.cos(ang)
    ex, ey = bx + ux * length, by + uy * length
    r = hwb + 2
    ex, ey = ex + ux * 2 * hws, ey + uy * 2 * hws
    w = canvas.window(min(bx, ex) - r, min(by, ey) - r, max(bx, ex) + r, max(by, ey) + r)
    if w is None:
        return
    X, Y, T = canvas.X[w], canvas.Y[w], tex[w]
    s = (X - bx) * ux + (Y - by) * uy
    tt = -(X - bx) * uy + (Y - by) * ux
    hw = hws + (hwb - hws) * np.exp(-np.maximum(s, 0) / (7 * g)) \
        + 0.35 * hws * np.exp(-np.maximum(length - s, 0) / (4 * g))
    cap = np.where(s < 0, -s / (0.9 * hwb), np.maximum(s - length, 0) / (1.2 * hws))
    r2 = (tt / hw) ** 2 + cap ** 2
    f = np.exp(-np.maximum(s, 0) / (10 * g))
    k = np.clip(1 - (1.6 * g * (1 - f) + 0.5 * g * f) / hw, 0.25, 0.95)
    val = profile(r2, hw * 0.9, k, MU_CORTEX, (MU_MARROW * (1 - f) + MU_CANCELLOUS * f) * (1 + 0.14 * T))
    if frac_line is not None:
        s0, slope, contrast = frac_line
        d = np.abs(s - s0 - slope * tt) / math.sqrt(1 + slope * slope)
        val = val * (1 - contrast * np.exp(-(d / (0.9 * g)) ** 2))
    out[w] += val
    if epi:
        # First metacarpal: proximal epiphysis separated by its physis.
        ecx, ecy = bx - ux * (1.6 + 2.2 * g), by - uy * (1.6 + 2.2 * g)
        _carpal(canvas, out, tex, "mc1_epi", ecx, ecy, hwb * 0.9, 2.0 * g, -ang_deg, 0.6)


def _wire(canvas, out, p0, p1, radius):
    pad = radius + 1
    w = canvas.window(min(p0[0], p1[0]) - pad, min(p0[1], p1[1]) - pad, max(p0[0], p1[0]) + pad,
                      max(p0[1], p1[1]) + pad)
    if w is None:
        return
    d = segments_mask(canvas.X[w], canvas.Y[w], [(p0, p1)], 0)
    out[w] += MU_METAL * 2 * np.sqrt(np.maximum(0, radius * radius - d * d))


LETTERS = {
    "L": [((0.0, 0.0), (0.0, 1.0)), ((0.0, 1.0), (0.62, 1.0))],
    "R": [((0.0, 0.0), (0.0, 1.0)), ((0.0, 0.0), (0.38, 0.0)), ((0.38, 0.0), (0.55, 0.08)),
          ((0.55, 0.08), (0.62, 0.25)), ((0.62, 0.25), (0.55, 0.42)), ((0.55, 0.42), (0.38, 0.5)),
          ((0.38, 0.5), (0.0, 0.5)), ((0.28, 0.5), (0.64, 1.0))],
}


def _marker(size: int, out: np.ndarray, letter: str, rng: np.random.Generator):
    """A lead letter in a plastic holder, burned in near a corner (image pixel space)."""
    h = max(8.0, size * rng.uniform(0.055, 0.075))
    corner = int(rng.integers(4))
    mx = size * rng.uniform(0.04, 0.1)
    my = size * rng.uniform(0.04, 0.1)
    x0 = mx if corner in (0, 2) else size - mx - h * 0.8
    y0 = my if corner in (0, 1) else size - my - h
    c0, c1 = int(max(0, x0 - h * 0.3)), int(min(size, x0 + h * 1.1))
    r0, r1 = int(max(0, y0 - h * 0.3)), int(min(size, y0 + h * 1.3))
    jj, ii = np.meshgrid(np.arange(c0, c1, dtype=F32) + 0.5, np.arange(r0, r1, dtype=F32) + 0.5)
    segs = [((x0 + a * h, y0 + b * h), (x0 + c * h, y0 + d * h)) for (a, b), (c, d) in LETTERS[letter]]
    d = segments_mask(jj, ii, segs, 0)
    stroke = 0.075 * h
    ink = np.clip(stroke - d + 0.5, 0, 1)
    holder = ((jj > x0 - h * 0.2) & (jj < x0 + h * 0.85) & (ii > y0 - h * 0.2) & (ii < y0 + h * 1.2))
    out[r0:r1, c0:c1] += MU_LEAD * ink + 0.12 * holder


def _boxes(canvas: Canvas, anat: Anatomy, fr_r: Fracture | None, fr_u: Fracture | None,
           fr_s: Fracture | None) -> dict[str, list[float]]:
    """Region boxes in canonical mm (covering moved fragments and callus), then in pixels."""
    r, u, g = anat.radius, anat.ulna, anat.g

    def cover(bone, fr, y_low, pad, extra=None):
        x0, y0, x1, y1 = _bone_bbox(bone, y_low, pad)
        if extra is not None:  # the styloid belongs to the distal ulnar epiphysis
            x0, y0, x1, y1 = min(x0, extra[0]), min(y0, extra[1]), max(x1, extra[2]), max(y1, extra[3])
        pts = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
        if fr is not None:
            pts += fr.extra_box
            if fr.motion is not None:
                pts += [fr.motion.forward(px, py) for px, py in pts]
            if fr.callus is not None:
                pts += [(x0 - fr.callus[2], y0), (x1 + fr.callus[2], y0)]
        xs, ys = zip(*pts)
        return min(xs), min(ys), max(xs), max(ys)

    boxes_mm = {
        "distal_radius": cover(r, fr_r, r.y0 - anat.box_h_r - 0.5 * g, 1.2 * g),
        "distal_ulna": cover(u, fr_u, u.y0 - anat.box_h_u - 0.5 * g, 1.2 * g,
                             anat.styloid.bbox(pad=0.8 * g) if anat.styloid is not None else None),
    }
    if anat.styloid is not None:
        s = anat.styloid
        x0, y0, x1, y1 = s.bbox(pad=1.6 * g)
        pts = [(x0, y0), (x1, y1), (x0, y1), (x1, y0)]
        for fr in (fr_s, fr_u):
            if fr is not None and fr.motion is not None and (fr is fr_s or fr.member.get("S")):
                pts += [fr.motion.forward(px, py) for px, py in pts]
        xs, ys = zip(*pts)
        boxes_mm["ulnar_styloid"] = (min(xs), min(ys), max(xs), max(ys))
    else:
        # Unossified styloid: the distal ulnar corner where it will form.
        x0, y0, x1, y1 = u.epi_top()
        cx = u.mid_phys + u.half_phys * 0.55
        hw = 3.2 * g
        boxes_mm["ulnar_styloid"] = (cx - hw, y1 - hw * 1.2, cx + hw, y1 + hw * 0.8)
    out = {}
    for name, (x0, y0, x1, y1) in boxes_mm.items():
        c0, r0, c1, r1 = canvas.box_px(x0, y0, x1, y1)
        c0, r0 = max(0.0, c0), max(0.0, r0)
        c1, r1 = min(float(canvas.size), c1), min(float(canvas.size), r1)
        if c1 - c0 < 2 or r1 - r0 < 2:  # should not happen with the jitter limits used
            c1, r1 = min(canvas.size, c0 + 2), min(canvas.size, r0 + 2)
            c0, r0 = c1 - 2, r1 - 2
        out[name] = [round(c0, 1), round(r0, 1), round(c1, 1), round(r1, 1)]
    return out


VIEW_T = {"pa": 0.0, "oblique": 0.5, "lateral": 1.0}


def render_image(study: dict, view: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """uint16[size, size] radiograph of one view of a study + its region boxes (pixels)."""
    A, boxes, ppm, cast = attenuation_map(study, view, rng, size)
    return expose(A, rng, ppm, cast), boxes


def attenuation_map(study: dict, view: str, rng: np.random.Generator, size: int):
    """(attenuation f32[size, size], boxes, pixels per mm, has cast) before the detector chain."""
    f = study["findings"]
    regions, g_find, geometry = f["regions"], f["global"], f["geometry"]
    base_t = VIEW_T[view]
    t = float(np.clip(base_t + (rng.normal(0, 0.05) if view != "oblique" else rng.normal(0, 0.08)), 0, 1))
    anat = build_anatomy(study["age"], study["anat"], t)
    g = anat.g
    # Fractures edit bone parameters before drawing.
    fr_r = fr_u = fr_s = None
    if regions["distal_radius"]["fracture"] != "absent":
        fr_r = make_fracture(anat.radius, regions["distal_radius"], geometry["distal_radius"], g, t,
                             anat.box_h_r)
    if regions["distal_ulna"]["fracture"] != "absent":
        fr_u = make_fracture(anat.ulna, regions["distal_ulna"], geometry["distal_ulna"], g, t,
                             anat.box_h_u)
    if regions["ulnar_styloid"]["fracture"] != "absent" and anat.styloid is not None:
        fr_s = styloid_fracture(anat.styloid, regions["ulnar_styloid"], geometry["ulnar_styloid"], g)
    # View geometry: field of view, rotation, translation, mirroring for a left wrist.
    fov = 150.0 * g ** 0.8 * rng.uniform(0.9, 1.12)
    center = (_mix(0.5, 1.0, t) * g + rng.normal(0, 2.0) * g, anat.y_art + 4.0 * g + rng.normal(0, 3.0) * g)
    canvas = Canvas(size, fov, center, rot_deg=float(rng.uniform(-11, 11)),
                    shift_px=(float(rng.normal(0, 0.03) * size), float(rng.normal(0, 0.03) * size)),
                    mirror=study["laterality"] == "left")
    tex = rng.standard_normal((size, size)).astype(F32)
    sig = max(0.6, 0.26 * canvas.ppm)
    tex = ndimage.gaussian_filter(tex, sigma=(1.6 * sig, sig), mode="reflect", truncate=3.0)
    tex *= F32(1.0 / max(1e-6, float(tex.std())))
    tex = np.clip(tex, -2.5, 2.5).astype(F32)
    A = np.zeros((size, size), dtype=F32)
    swelling = None
    if g_find["soft_tissue_swelling"]:
        side = f["swelling_side"]
        swelling = (-0.35 * anat.box_h_r, float(rng.uniform(3.5, 6.0)) * g, side)
    cast = None
    if g_find["cast"]:
        plaster = f.get("cast_type") == "plaster"
        cast = {"pad": 1.5, "thick": 3.0 if plaster else 2.2, "mu": 0.075 if plaster else 0.045,
                "mesh": not plaster, "end": 30.0}
    _soft_tissue(canvas, anat, study["anat"], t, swelling, cast, A)
    # Radius and ulna.
    for bone, fr, sty, sty_fr, box_h in ((anat.radius, fr_r, None, None, anat.box_h_r),
                                          (anat.ulna, fr_u, anat.styloid, fr_s, anat.box_h_u)):
        x0, y0, x1, y1 = _bone_bbox(bone, -400.0, pad=6.0 * g + 5.0)
        if sty is not None:
            sx0, sy0, sx1, sy1 = sty.bbox(pad=4.0)
            x0, x1, y1 = min(x0, sx0), max(x1, sx1), max(y1, sy1)
        w = canvas.window(x0, y0, x1, y1 + 4.0)
        if w is not None:
            A[w] += _eval_long_bone(bone, sty, canvas.X[w], canvas.Y[w], tex[w], fr, sty_fr)
    # Carpus, metacarpals, confounder fractures.
    other = f["other"]
    for name, cx, cy, a, b, ang, m in anat.carpals:
        line = None
        if other is not None and other["site"] == "scaphoid" and name == "scaphoid":
            line = (0.85, 0.12)
        _carpal(canvas, A, tex, name, cx, cy, a, b, ang, m, line)
    for idx, bx, by, ang, hwb, hws, epi in anat.metacarpals:
        fl = None
        if other is not None and other["site"] == "metacarpal" and other["metacarpal"] == idx:
            fl = (8 * g + other["level"] * 30 * g, other["slope"], 0.85)
        _metacarpal(canvas, A, tex, bx, by, ang, hwb, hws, epi, g, (42.0 if idx == 1 else 70.0) * g, fl)
    if g_find["hardware"]:
        r = anat.radius
        e_x0, _, _, e_y1 = r.epi_top()
        for k in range(2 if study["study_index"] % 2 == 0 else 1):
            p0 = (r.mid_phys - r.half_phys - 6 * g + 2 * k * g, e_y1 + 2 * g - 3 * k * g)
            p1 = (r.mid_phys + r.half_phys * (0.3 + 0.5 * k), r.y0 - anat.box_h_r * (0.8 + 0.2 * k))
            _wire(canvas, A, p0, p1, 0.8)
            _wire(canvas, A, p0, (p0[0] - 6 * g, p0[1] + 4 * g), 0.8)
    _marker(size, A, "L" if study["laterality"] == "left" else "R", rng)
    boxes = _boxes(canvas, anat, fr_r, fr_u, fr_s)
    return A, boxes, canvas.ppm, cast is not None


def expose(A: np.ndarray, rng: np.random.Generator, ppm: float, cast: bool) -> np.ndarray:
    """Attenuation -> detector image: transmission, scatter, quantum noise, one blur, log display."""
    k = rng.uniform(1.6, 2.1)
    T = np.exp(-F32(k) * A)
    size = A.shape[0]
    step = max(1, size // 64)
    small = T[::step, ::step]
    scatter = ndimage.gaussian_filter(small, sigma=max(1.0, 6.0 * small.shape[0] / 64), mode="nearest")
    scatter = upsample(scatter.astype(F32), T.shape)
    s_frac = rng.uniform(0.04, 0.12) * (1.6 if cast else 1.0)
    T = T + F32(s_frac) * scatter.astype(F32)
    noise = rng.uniform(0.008, 0.02)
    T = T + F32(noise) * np.sqrt(T) * rng.standard_normal(T.shape, dtype=F32)
    T = ndimage.gaussian_filter(T, sigma=max(0.4, rng.uniform(0.12, 0.22) * ppm), mode="nearest", truncate=3.0)
    D = -np.log(np.maximum(T, F32(1e-4)))
    sub = D[::4, ::4]
    lo = float(np.percentile(sub, 1.0)) - 0.03
    hi = float(np.percentile(sub, 99.8)) * rng.uniform(1.0, 1.12)
    v = np.clip((D - lo) * F32(1.0 / (hi - lo)), 0, 1)
    # Display gamma through a lookup table on a 16-bit index, then 12-bit detector depth stored
    # in 16 bits (low nibble = bit replication of the high one, so white is 65535).
    lut = np.round((np.arange(65536) / 65535.0) ** rng.uniform(0.78, 1.0) * 4095).astype(np.uint16)
    q = lut[(v * F32(65535) + F32(0.5)).astype(np.uint16)]
    # Collimator shutters on some images: unexposed (bright) or electronically masked (dark)
    # bands along one or two edges.
    if rng.random() < 0.35:
        level = int(rng.uniform(3300, 3900)) if rng.random() < 0.6 else int(rng.uniform(0, 150))
        for edge in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            w = max(1, int(size * rng.uniform(0.015, 0.05)))
            band = ((slice(0, w), slice(None)), (slice(size - w, size), slice(None)),
                    (slice(None), slice(0, w)), (slice(None), slice(size - w, size)))[int(edge)]
            q[band] = level
    return (q << 4) | (q >> 8)
