"""What ``render()`` shows of the single env: the route being built, as text (``"ansi"``) or drawn under
the instance's image (``"rgb_array"``). NumPy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RENDER_MODES = ("ansi", "rgb_array")

# One colour per bank (module kind), cycling; PASS grey, steps not taken yet black.
BANK_COLOURS = np.array(
    [
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
        [255, 255, 255],
    ],
    dtype=np.uint8,
)
PASS_COLOUR = np.array([128, 128, 128], dtype=np.uint8)
RESULT_COLOURS = {True: np.array([0, 200, 0], dtype=np.uint8), False: np.array([220, 0, 0], dtype=np.uint8)}
MIN_WIDTH = 96  # small images (MNIST's 28x28) are scaled up to at least this width


@dataclass
class RouteView:
    """One episode's state as ``render()`` needs it (numpy and Python values, no tensors).

    Attributes:
        image: ``(C, H, W)`` uint8.
        task: the task id; ``task_name`` its name.
        label: the label inside the task.
        route: the action ids so far, ``(max_depth,)``; ``n_actions`` marks a step not taken yet.
        step: steps taken.
        action_names: names of the actions (the last one PASS).
        action_bank: the bank of each action (-1 for PASS).
        action_dup: the duplicate index of each action inside its bank.
        valid: the valid next actions, ``(n_actions,)`` bool.
        final: the last step's info (``loss``, ``prediction``, ``correct``, ...), None before it.
    """

    image: np.ndarray
    task: int
    task_name: str
    label: int
    route: np.ndarray
    step: int
    action_names: list[str]
    action_bank: np.ndarray
    action_dup: np.ndarray
    valid: np.ndarray
    final: dict[str, Any] | None


def route_text(view: RouteView) -> str:
    """The route as text: the instance, the modules chosen so far, what may come next or the result."""
    depth = len(view.route)
    taken = [view.action_names[a] for a in view.route[: view.step].tolist()]
    lines = [
        f"task {view.task} ({view.task_name}), label {view.label}, step {view.step}/{depth}",
        "route: " + (" -> ".join(taken) if taken else "(empty)"),
    ]
    if view.final is None:
        valid = [view.action_names[a] for a in np.flatnonzero(view.valid)]
        lines.append("valid next: " + ", ".join(valid))
    else:
        f = view.final
        verdict = "correct" if f["correct"] else "wrong"
        lines.append(
            f"prediction {f['prediction']} ({verdict}), loss {f['loss']:.4f}, bonus {f['bonus']:.4f}"
        )
    return "\n".join(lines) + "\n"


def route_image(view: RouteView) -> np.ndarray:
    """``(H', W', 3)`` uint8: the image (scaled up to at least :data:`MIN_WIDTH` pixels wide), and under
    it one cell per step: the bank's colour on top, a bar as long as the duplicate index on the bottom,
    PASS grey, steps not taken yet black, the next step framed white; a green (right) or red (wrong)
    strip once the network is scored."""
    c, h, w = view.image.shape
    scale = max(1, -(-MIN_WIDTH // w))  # ceil
    picture = np.repeat(np.repeat(view.image, scale, axis=1), scale, axis=2)  # (C, sH, sW)
    picture = np.broadcast_to(picture, (3, *picture.shape[1:])) if c == 1 else picture[:3]
    picture = picture.transpose(1, 2, 0)  # (sH, sW, 3)
    width = picture.shape[1]
    depth = len(view.route)
    cell = max(4, width // depth)
    strip = np.zeros((cell, cell * depth, 3), dtype=np.uint8)
    n_dups = np.bincount(view.action_bank[view.action_bank >= 0]).max(initial=1)
    for k, action in enumerate(view.route.tolist()):
        box = strip[:, k * cell : (k + 1) * cell]
        if k < view.step:
            bank = int(view.action_bank[action])
            if bank < 0:
                box[:] = PASS_COLOUR
            else:
                box[: cell // 2] = BANK_COLOURS[bank % len(BANK_COLOURS)]
                bar = max(1, round(cell * (int(view.action_dup[action]) + 1) / n_dups))
                box[cell // 2 :, :bar] = 255
        elif k == view.step:
            box[[0, -1]] = 255
            box[:, [0, -1]] = 255
    if view.final is not None:
        strip[-max(1, cell // 8) :] = RESULT_COLOURS[bool(view.final["correct"])]
    canvas_width = max(width, strip.shape[1])
    canvas = np.zeros((picture.shape[0] + cell, canvas_width, 3), dtype=np.uint8)
    canvas[: picture.shape[0], :width] = picture
    canvas[picture.shape[0] :, : strip.shape[1]] = strip
    return canvas
