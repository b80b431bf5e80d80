"""A bokeh layout as a live ipywidget that renders on every page load of a running kernel.

    w = BokehWidget(layout)     # display(w); later changes to layout's Document reach it

Why not jupyter_bokeh's BokehModel: its browser view needs BokehJS already in the page
(`window.Bokeh`), which `output_notebook()` puts there once per kernel, as the output of
one cell. After a browser reload, or in a second tab on the same kernel, the widget
views are rebuilt from the kernel but that output is not run again, so every live figure
fails with "Cannot read properties of undefined (reading 'require')".

This widget (an anywidget: its browser code is the small ES module below, no build step)
carries BokehJS with it: each view loads it into the page if the page does not have it,
then embeds the layout with `Bokeh.embed.embed_item` and applies the Document's changes
as the kernel sends them (bokeh's own PATCH-DOC messages, applied with the Document's
`apply_json_patch`). A view that opens later (a reload, another tab) starts from
`snapshot`, the layout as of a numbered patch, refreshed SNAPSHOT_SECONDS after changes,
and follows the patches from then on; one that missed a patch while it loaded starts
again from the next snapshot.

Every change to the Document must happen on the kernel's main thread (see plots.py),
whose IOLoop (`loop`) times the snapshot refreshes; without one (a script) the snapshot
is refreshed on a patch at most every SNAPSHOT_SECONDS.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets
from bokeh.document import Document
from bokeh.document.events import DocumentPatchedEvent
from bokeh.embed import json_item
from bokeh.protocol import Protocol

# How stale the layout a newly opened view starts from may be.
SNAPSHOT_SECONDS = 2.0

_ESM = r"""
// Load BokehJS into this page once (a reloaded page has none).
function loadBokeh(model) {
  const version = model.get("bokeh_version");
  if (window.Bokeh && window.Bokeh.version === version) return Promise.resolve();
  if (!window.__labkitBokehLoading) {
    window.__labkitBokehLoading = new Promise((resolve) => {
      for (const source of model.get("bokehjs")) {
        const script = document.createElement("script");
        script.textContent = source;  // inline: runs now, in order, offline
        document.head.appendChild(script);
      }
      resolve();
    });
  }
  return window.__labkitBokehLoading;
}

// Patches are numbered; a snapshot says which number it includes. A view applies each
// patch after its snapshot once, in order; if one went missing (sent while the view was
// still loading), it waits for the next snapshot and starts again from it.
async function render({ model, el }) {
  const queue = [];
  let doc = null, seq = -1, stale = false;
  const apply = (msg, buffers) => {
    if (msg.seq <= seq) return;
    if (msg.seq !== seq + 1) { stale = true; return; }
    const map = new Map();
    msg.buffer_ids.forEach((id, i) => {
      const view = buffers[i];
      map.set(id, view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
    });
    doc.apply_json_patch(JSON.parse(msg.content), map);
    seq = msg.seq;
  };
  const onPatch = (msg, buffers) => {
    if (msg.kind !== "patch") return;
    if (doc === null || stale) queue.push([msg, buffers]); else apply(msg, buffers);
  };
  const embed = async () => {
    const { seq: at, item } = JSON.parse(model.get("snapshot"));
    if (doc !== null) doc.clear();  // removes the old root, and with it its views
    el.replaceChildren();
    const target = document.createElement("div");
    el.appendChild(target);
    await window.Bokeh.embed.embed_item(item, target);
    // each embedding gets a Document of its own: the one that holds this layout
    doc = window.Bokeh.documents.find((d) => d.get_model_by_id(item.root_id) != null);
    seq = at;
    stale = false;
    for (const [msg, buffers] of queue.splice(0)) apply(msg, buffers);
  };
  const onSnapshot = () => { if (stale) embed(); };
  model.on("msg:custom", onPatch);
  model.on("change:snapshot", onSnapshot);
  await loadBokeh(model);
  await embed();
  return () => {
    model.off("msg:custom", onPatch);
    model.off("change:snapshot", onSnapshot);
    if (doc !== null) doc.clear();
  };
}
export default { render };
"""


@functools.cache
def _bokehjs() -> tuple[list[str], str]:
    """BokehJS as the files bokeh ships (everything but MathJax, which labkit's figures do
    not use and which is larger than the rest together), and its version."""
    import bokeh
    from bokeh.resources import Resources

    files = [f for f in Resources(mode="absolute").js_files if "mathjax" not in f]
    return [Path(f).read_text(encoding="utf-8") for f in files], bokeh.__version__


class BokehWidget(anywidget.AnyWidget):
    """A bokeh layout in a widget that survives page reloads (see the module docstring)."""

    _esm = traitlets.Unicode(_ESM).tag(sync=True)
    bokehjs = traitlets.List(traitlets.Unicode()).tag(sync=True)
    bokeh_version = traitlets.Unicode().tag(sync=True)
    # {"seq": the last patch it includes, "item": json_item of the layout}
    snapshot = traitlets.Unicode().tag(sync=True)

    def __init__(self, layout: Any, loop: Any = None, **kwargs: Any) -> None:
        scripts, version = _bokehjs()
        if layout.document is None:
            Document().add_root(layout)
        self._layout = layout
        self._loop = loop
        self._seq = -1
        self._refresh_pending = False
        self._snapshot_at = time.monotonic()
        super().__init__(bokehjs=scripts, bokeh_version=version, snapshot=self._item(),
                         **kwargs)
        layout.document.on_change_dispatch_to(self)

    def _item(self) -> str:
        return json.dumps({"seq": self._seq, "item": json_item(self._layout)})

    def _refresh(self) -> None:
        self._refresh_pending = False
        self._snapshot_at = time.monotonic()
        self.snapshot = self._item()

    def _document_patched(self, event: DocumentPatchedEvent) -> None:
        """Every change of the layout's Document: to each open view as one numbered patch;
        the snapshot follows within SNAPSHOT_SECONDS (for views that open later)."""
        msg = Protocol().create("PATCH-DOC", [event])
        self._seq += 1
        self.send({"kind": "patch", "seq": self._seq, "content": msg.content_json,
                   "buffer_ids": [b.id for b in msg.buffers]},
                  [b.to_bytes() for b in msg.buffers])
        if self._loop is not None:
            if not self._refresh_pending:
                self._refresh_pending = True
                self._loop.call_later(SNAPSHOT_SECONDS, self._refresh)
        elif time.monotonic() - self._snapshot_at >= SNAPSHOT_SECONDS:
            self._refresh()

    def close(self) -> None:
        if self._layout.document is not None:
            self._layout.document.remove_on_change(self)
        super().close()
