"""A contact sheet people can look at: one self-contained HTML page from ledgers alone.

Rows are source images, columns the grid's other axes as a manifest states them:
prompt x seed slot x any other parameter that varies (one never varying, or unset, is
no heading). A seed `seed: {count: N}` derived is in slot #1..N, recomputed from the
job's own parameters as `grid` derives it (other seeds: by value when rows share them,
else by rank in the ledger); the seed itself is in each cell's caption. Cells are
thumbnails linking to the full image, or the error, or "pending". It opens from the
file system: relative links, inline CSS and a little vanilla JS whose filters (status,
prompt, source image) and choice of the axis that goes across live in the URL hash, so
a view can be shared; the headings stay in sight as the sheet scrolls. Thumbnails are
made once with Pillow into `thumbs/`, named by the image's sha256 and size, and loaded
lazily: a resumed run's gallery only makes the new ones. Every text that came from a
manifest is escaped: a prompt is user input, and the page runs script (no JSON is
embedded in it: the filters and the layout read data-* attributes and `#axes`).
Several ledgers merge by the one fold every reader uses (`ledger.fold`): the last word
wins, except that a success is never forgotten.

    cells.py   a Cell per job, folded from the ledgers; where the manifests may be
    thumbs.py  the thumbnails, made once each, several at a time
    seeds.py   the seed axis: derived slots, shared values, ranks
    axes.py    the axes, their headings, and each job's place (`layout`)
    page.py    the HTML page (around it: `page.html`), written with its thumbnails
"""

from batchgen.gallery.axes import Axis, Layout, layout
from batchgen.gallery.cells import Cell, collect
from batchgen.gallery.page import write_gallery
from batchgen.gallery.thumbs import THUMB_PX, Thumbs

__all__ = ["THUMB_PX", "Axis", "Cell", "Layout", "Thumbs", "collect", "layout", "write_gallery"]
