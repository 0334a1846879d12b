#!/usr/bin/env python3
"""Copies the byte table of table/src/format.rs into man/mcshm.5 (tests/man.rs checks it)."""
import pathlib
root = pathlib.Path(__file__).resolve().parent.parent
src = (root / "table/src/format.rs").read_text().splitlines()
start = src.index("//! ```text") + 1
end = next(i for i in range(start, len(src)) if src[i].startswith("//! ```"))
table = [l[4:] if l.startswith("//! ") else l[3:] for l in src[start:end]]
roff = [l.replace("\\", "\\e").replace("-", "\\-") for l in table]
page = (root / "man/mcshm.5").read_text().splitlines()
a = page.index(".ft CR") + 1
b = page.index(".ft", a)
page[a:b] = roff
(root / "man/mcshm.5").write_text("\n".join(page) + "\n")
