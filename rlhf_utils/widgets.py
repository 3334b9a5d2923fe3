"""Rating widgets: the reader judges model samples, and every judgement lands in the store.

:func:`rating_widget` lays out stock ipywidgets (no custom front-end code, so it renders
in JupyterLab 4, Notebook 7 and VS Code) and wires each button to a handler of a
:class:`rlhf_utils.rating.PairwiseSession` or :class:`rlhf_utils.rating.ScoreSession`,
which hold all the logic and are tested without a screen.

Keyboard: stock ipywidgets has no key events (and ipyevents is not used). The widget
has a small text box, the *key box*: while it has focus, each key typed into it
changes its value, the kernel reads the new character, acts on it and resets the box.
Backspace is seen because the box always holds a short sentinel, so deleting shortens
it. Keys therefore act only while the key box has focus -- JupyterLab and VS Code keep
their own single-key shortcuts everywhere else -- and the widget gives the box focus
again after each button click (``Text.focus()``, ipywidgets 8).

Front end: :func:`widget_frontend` decides whether a widget can be shown (rule in its
docstring). Without one, :func:`show` prints why and the notebook falls back to the
simulated annotator.

The live loop (notebook 09): :func:`live_loop_widget` is the pairwise widget on a
:class:`rlhf_utils.live_threads.LiveSession` with a panel below it, redrawn whenever a label
comes in or a round ends -- from the loop's worker thread too, which is why every drawing holds
the session's lock (trait changes made on another thread are sent to the page as comm messages).
"""

from __future__ import annotations

import contextlib
import html
import os
from typing import Any, Callable

from rlhf_utils.rating import BACKSPACE, SCORE_LABELS, VERDICTS, PairwiseSession, Session

GUIDELINES = """
<b>How to judge.</b> Each item is the opening of a review (the <i>prompt</i>) and the model's
continuation(s). Prefer the continuation that
<ul>
<li>is <b>more positive</b> about the thing reviewed (the course's task: steer the model to praise);</li>
<li>reads as <b>fluent English</b>: no doubled words ("great great"), no broken or jumbled sentences;</li>
<li>stays <b>on topic</b> (a film review should not talk about the pasta).</li>
</ul>
<b>Tie</b>: equally good. <b>Both bad</b>: neither is acceptable (kept apart from a tie).
<b>Skip</b>: you cannot tell. Which side is A is random; words that differ are <mark>marked</mark>.
The first few pairs are <i>calibration</i> pairs with a known answer; about one pair in ten comes
back later, blind, to see how consistent you are. Take your time: speed is measured, not judged.
"""


def widget_frontend() -> tuple[bool, str]:
    """Can a widget be shown here? Returns ``(ok, reason)``.

    The rule, in order:

    1. ``RLHF_HEADLESS`` set to anything but ``""``/``"0"`` -> no. The course runner and
       CI set it; set it yourself to skip rating.
    2. Not inside a Jupyter kernel (plain Python, terminal IPython) -> no: nothing could
       render a widget.
    3. Otherwise -> yes. JupyterLab 4, Notebook 7 and VS Code all render stock
       ipywidgets. (A kernel cannot know for sure that a front end is watching; if none
       is, nothing breaks: the widget is non-blocking, nothing gets rated, and the
       notebook fills the labels it needs from the simulated annotator.)
    """
    flag = os.environ.get("RLHF_HEADLESS", "").strip()
    if flag not in ("", "0"):
        return False, "RLHF_HEADLESS is set (course runner or CI): no one to click"
    try:
        from IPython import get_ipython
    except ImportError:
        return False, "IPython is not installed: not inside Jupyter"
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False, "not running in a Jupyter kernel (plain Python or terminal IPython)"
    return True, "Jupyter kernel with a front end"



# --------------------------------------------------------------------------------------
# Display: stock ipywidgets wired to a session
# --------------------------------------------------------------------------------------

KEY_SENTINEL = "⌨ "
"""What the key box holds between keys; deleting from it is read as Backspace."""


def read_key_box(value: str, sentinel: str = KEY_SENTINEL) -> str | None:
    """Which key turned the key box's ``sentinel`` into ``value`` (None: no change).

    A longer value -> the first inserted character (wherever the caret was); a shorter
    one -> Backspace.
    """
    if value == sentinel:
        return None
    if len(value) < len(sentinel):
        return BACKSPACE
    i = next((i for i, (x, y) in enumerate(zip(value, sentinel)) if x != y), len(sentinel))
    return value[i] if i < len(value) else None


_CSS = """<style>
.rlhf-rate mark { background: #ffe08a; padding: 0 1px; }
.rlhf-rate .rlhf-side { border: 1px solid #bbb; border-radius: 4px; padding: 4px 8px; min-height: 1.5em; }
.rlhf-rate .rlhf-empty { color: #888; }
</style>"""


def rating_widget(session: Session):
    """Lay out stock ipywidgets for ``session`` and wire them to its handlers."""
    import ipywidgets as w

    if not isinstance(session, Session):
        raise TypeError(f"rating_widget needs a rating session (rlhf_utils.rating.PairwiseSession or ScoreSession), "
                        f"got {type(session).__name__}")
    is_pair = isinstance(session, PairwiseSession)
    name_box = w.Text(value=session.annotator, description="Your name:", layout=w.Layout(width="280px"))
    start_button = w.Button(description="Start rating", button_style="primary")
    guidelines = w.VBox([w.HTML(_CSS + GUIDELINES if is_pair else _CSS + GUIDELINES.replace(
        "Prefer the continuation that", "Score how satisfied you are with a continuation that")),
        w.HBox([name_box, start_button])])
    guidelines.add_class("rlhf-guidelines")

    item_label = w.HTML()
    prompt_html = w.HTML()
    if is_pair:
        left, right = w.HTML(), w.HTML()
        left.add_class("rlhf-side")
        right.add_class("rlhf-side")
        sides = w.HBox([w.VBox([w.HTML("<b>A</b>"), left], layout=w.Layout(width="50%")),
                        w.VBox([w.HTML("<b>B</b>"), right], layout=w.Layout(width="50%"))])
        buttons = {v: w.Button(description=f"{text} [{key}]", layout=w.Layout(width="max-content"))
                   for v, (text, key) in VERDICTS.items()}
        actions = {v: (lambda v=v: session.choose(v)) for v in buttons}
    else:
        completion = w.HTML()
        completion.add_class("rlhf-side")
        sides = completion
        buttons = {s: w.Button(description=f"{s} {SCORE_LABELS[s]} [{s}]", layout=w.Layout(width="max-content"))
                   for s in SCORE_LABELS}
        buttons[None] = w.Button(description="Skip [0]", layout=w.Layout(width="max-content"))
        actions = {s: (lambda s=s: session.score(s)) for s in buttons}
    undo_button = w.Button(description="Undo last [Backspace]", layout=w.Layout(width="max-content"))
    back_button = w.Button(description="◀ Back", layout=w.Layout(width="max-content"))
    next_button = w.Button(description="Next unjudged ▶", layout=w.Layout(width="max-content"))
    key_box = w.Text(value=KEY_SENTINEL, layout=w.Layout(width="60px"), continuous_update=True)
    key_box.add_class("rlhf-keys")
    key_help = w.HTML("<small>⌨ keys: click this box first</small>",
                      tooltip="Type the key shown on a button; keys act only while the box has focus.")
    status = w.HTML()
    status.add_class("rlhf-status")
    message = w.HTML()
    message.add_class("rlhf-message")
    rating = w.VBox([item_label, w.HTML("<b>Prompt</b>"), prompt_html, sides,
                     w.HBox(list(buttons.values())),
                     w.HBox([undo_button, back_button, next_button, key_box, key_help])])
    box = w.VBox([guidelines, rating, status, message])
    box.add_class("rlhf-rate")

    lock = getattr(session, "lock", None) or contextlib.nullcontext()  # a live session is shared by two threads

    def render() -> None:
        with lock:
            _render()

    def _render() -> None:
        guidelines.layout.display = "none" if session.started else None
        rating.layout.display = None if session.started and session.entries else "none"
        view = session.view()
        item_label.value = f"<b>{view['label']}</b>" if view["label"] else "<b>All done.</b>"
        prompt_html.value = view["prompt"]
        if is_pair:
            left.value, right.value = view["left"], view["right"]
        else:
            completion.value = view["completion"]
        off = session.current is None
        for b in buttons.values():
            b.disabled = off
        text = session.summary_text() if is_pair else session.progress_text()
        status.value = f"<span class='rlhf-progress'>{html.escape(text)}</span>"
        message.value = f"<i>{html.escape(session.message)}</i>" if session.message else ""

    def safely(action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # shown in the widget, never swallowed silently
            session.message = f"Error: {exc}"
            render()
        else:
            render()

    def refocus() -> None:
        try:
            key_box.focus()
        except Exception:
            pass

    for b, act in zip(buttons.values(), actions.values()):
        b.on_click(lambda _b, act=act: (safely(act), refocus()))
    undo_button.on_click(lambda _b: (safely(session.undo), refocus()))
    back_button.on_click(lambda _b: (safely(session.back), refocus()))
    next_button.on_click(lambda _b: (safely(session.next_undone), refocus()))
    start_button.on_click(lambda _b: (safely(lambda: session.start(name_box.value)), refocus()))

    def on_key(change: dict) -> None:
        key = read_key_box(change["new"])
        if change["new"] != KEY_SENTINEL:
            key_box.value = KEY_SENTINEL
        if key is not None:
            safely(lambda: session.key(key))

    key_box.observe(on_key, names="value")

    def on_rater_change() -> None:  # the name was changed in the other widget on this store
        name_box.value = session.annotator
        render()

    session.on_rater_change.append(on_rater_change)
    render()
    box.session = session  # handy in a notebook: widget.session
    box.render = render  # redraw from outside (the live loop, when new pairs come in)
    return box


def show(session: Session) -> bool:
    """Display the rating widget if a front end can show it; else say why. Returns shown."""
    if not isinstance(session, Session):
        raise TypeError(f"show needs a rating session (PairwiseSession or ScoreSession), got {type(session).__name__}")
    ok, reason = widget_frontend()
    if not ok:
        print(f"No widget front end ({reason}): nothing will be rated by hand here; "
              "the notebook uses the simulated annotator for the labels it needs.")
        return False
    from IPython.display import display

    display(rating_widget(session))
    return True


# --------------------------------------------------------------------------------------
# The live loop: the pairwise widget and a panel (notebook 09)
# --------------------------------------------------------------------------------------


def live_panel_html(summary: dict, k: int) -> str:
    """The live panel's HTML from :meth:`rlhf_utils.live_loop.LiveLoop.summary` (escaped)."""
    s, esc = summary, html.escape
    state = {"training": f"training round {s['round'] + 1}…", "stopped": "<b style='color:#b00'>stopped</b>",
             "paused": "paused"}.get(s["status"], f"waiting for {max(0, k - s['queued'])} more label(s)")
    queued = (f"<b>{s['queued']} queued</b> for the next round (you rate faster than it trains: none is lost)"
              if s["queued"] >= k and s["status"] == "training" else f"{s['queued']} queued")
    rows = "".join(f"<tr><td>{esc(p)}</td><td>{esc(b)}</td><td>{esc(a)}</td></tr>" for p, b, a in s["samples"])
    error = f"<div class='rlhf-live-error' style='color:#b00'>{esc(s['error'])}</div>" if s["error"] else ""
    return (f"<div class='rlhf-live-status'><b>The loop, live</b> · round <span class='rlhf-live-round'>{s['round']}"
            f"</span> · {state}</div>"
            f"<div>labels: <span class='rlhf-live-labels'>{s['labels']}</span> ({s['reader']} from you · {s['scripted']} "
            f"from the scripted reader, a simulated annotator, not counted as yours · {s['simulated']} simulated) · "
            f"{queued} · {s['to_rate']} pair(s) to rate</div>"
            f"<div>reward model: agreed with <b>{s['prequential']:.2f}</b> of the last {s['prequential_n']} labels "
            f"before training on them · with the gold order <b>{s['rm_gold_agreement']:.2f}</b></div>"
            f"<div>policy: gold reward <b>{s['policy_gold']:+.3f}</b> (SFT {s['sft_gold']:+.3f}) · KL to SFT "
            f"{s['policy_kl']:.2f} nats · last round {s['round_seconds']:.1f} s</div>"
            f"<table class='rlhf-live-samples'><tr><th>prompt</th><th>before (SFT)</th><th>now</th></tr>{rows}</table>"
            + error)


def live_loop_widget(loop, session):
    """The pairwise widget on the loop's ``session`` and the live panel below it, with a button
    that trains on the queued labels at once. Redrawn on every label and every round."""
    import ipywidgets as w

    rate = rating_widget(session)
    panel = w.HTML()
    panel.add_class("rlhf-live-panel")
    now = w.Button(description="Train on the queued labels now", layout=w.Layout(width="max-content"))
    now.on_click(lambda _b: loop.train_now())
    shown = {"entries": len(session.entries)}

    def draw() -> None:
        with session.lock:
            if len(session.entries) != shown["entries"]:  # the worker added pairs: redraw the rating part too
                shown["entries"] = len(session.entries)
                rate.render()
            panel.value = live_panel_html(loop.summary(), loop.cfg.k)

    loop.on_update.append(draw)
    draw()
    box = w.VBox([rate, panel, now])
    box.add_class("rlhf-live")
    box.session, box.loop, box.draw = session, loop, draw
    return box
