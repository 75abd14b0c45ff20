"""Molecule drawings for a molecules run: RDKit SVG as data URIs, keyed by the SMILES text.

Optional: without RDKit (or for a text RDKit cannot parse) there is simply no drawing. An SVG
goes into an <img> as a data URI, so nothing in it can run in the page."""
from __future__ import annotations

from report.images import bytes_uri

SIZE = (220, 160)  # pixels of one drawing


def draw_many(texts: list[str], limit: int) -> tuple[dict[str, str], str | None]:
    """{text: data URI} for the first `limit` distinct texts RDKit parses; and a note (or None)."""
    try:
        from rdkit import Chem, RDLogger  # lazy: optional; only a molecules run draws structures
        from rdkit.Chem.Draw import rdMolDraw2D  # lazy: optional; only a molecules run draws structures
    except ImportError:
        return {}, "no structure drawings: RDKit does not import here (pip install rdkit)"
    RDLogger.DisableLog("rdApp.*")  # unparseable decodes are expected, not news
    out: dict[str, str] = {}
    tried: set[str] = set()
    for text in texts:
        if len(out) >= limit:
            break
        if not text or text in tried:
            continue
        tried.add(text)
        mol = Chem.MolFromSmiles(text.strip())
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        try:
            d = rdMolDraw2D.MolDraw2DSVG(*SIZE)
            d.DrawMolecule(mol)
            d.FinishDrawing()
            out[text] = bytes_uri(d.GetDrawingText().encode("utf-8"), "image/svg+xml")
        except Exception:  # noqa: BLE001 - one odd molecule never stops the report
            continue
    note = None
    if len(out) >= limit:
        note = f"structure drawings for the first {limit} molecules (zones, then accepted candidates)"
    return out, note
