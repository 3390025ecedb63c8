"""Click-train latency analysis for scripts/bench (cross-correlation).

A signal is `lead` seconds of silence and then `clicks` chirps (20 ms, 300-3400 Hz, Hann
window) every `spacing` seconds. Given the sent and received timelines of one loop
(same clock, same start), each click is found in the sent timeline, then searched for
in the received timeline within `max_delay` after it; the lag of the normalised
cross-correlation peak is that click's loop delay.
"""

from __future__ import annotations

import numpy as np


def chirp(rate: int, seconds: float = 0.02, f0: float = 300.0, f1: float = 3400.0) -> np.ndarray:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    k = (f1 - f0) / seconds
    x = np.sin(2 * np.pi * (f0 * t + 0.5 * k * t * t))
    return x * np.hanning(n)


def click_train(rate: int, clicks: int = 30, spacing: float = 0.6, lead: float = 1.0,
                amplitude: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """The signal and the sample index where each click starts."""
    c = chirp(rate) * amplitude
    n = int(rate * (lead + clicks * spacing + 0.5))
    x = np.zeros(n)
    starts = []
    for i in range(clicks):
        s = int(rate * (lead + i * spacing))
        x[s:s + len(c)] = c
        starts.append(s)
    return x, starts


def _ncc_peak(hay: np.ndarray, template: np.ndarray) -> tuple[int, float]:
    """Index and value of the normalised cross-correlation peak of template in hay."""
    m = len(template)
    if len(hay) < m:
        return 0, 0.0
    t = template - template.mean()
    tn = np.sqrt(np.sum(t * t)) or 1.0
    corr = np.correlate(hay, t, mode="valid")
    # local energy of hay under the template
    c = np.concatenate([[0.0], np.cumsum(hay * hay)])
    energy = np.sqrt(np.maximum(c[m:] - c[:-m], 1e-12))
    ncc = corr / (energy * tn)
    i = int(np.argmax(ncc))
    return i, float(ncc[i])


def loop_delays(sent: np.ndarray, recv: np.ndarray, rate: int, starts: list[int],
                spacing: float = 0.6, max_delay: float = 0.55,
                min_ncc: float = 0.3) -> list[float]:
    """Delay (ms) of every click that came back, in order (missing clicks are left out).

    `starts` are the clicks' positions in the signal that was sent; in the sent timeline
    they are shifted by when sending began, so each is located there first.
    """
    template = chirp(rate)
    out = []
    offset = 0  # the sent timeline starts when sending began: within a few ms of 0
    for s in starts:
        lo = max(0, s + offset - int(0.1 * rate))
        hi = s + offset + int(0.1 * rate) + len(template)
        i, v = _ncc_peak(sent[lo:hi], template)
        if v < 0.9:
            continue
        p = lo + i
        offset = p - s
        q_lo = p
        q_hi = min(len(recv), p + int(max_delay * rate) + len(template))
        j, w = _ncc_peak(recv[q_lo:q_hi], template)
        if w >= min_ncc:
            out.append(1000.0 * j / rate)
    return out


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")
