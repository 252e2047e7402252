"""The HTML report of an explanation run, and its results on disk.

:func:`build_report` draws a results dict (what
:func:`captum_similarity.cli.explain_images` returns, or what
:func:`load_results` reads back) into one self-contained HTML file: every
figure is an embedded PNG, there is no script and no link outside the file,
so it opens from the file system, offline, and can be mailed as is.
:func:`save_results` writes the dict as ``results.json`` (everything but the
arrays) and ``maps.npz`` (the arrays); each array's place in the JSON holds
``{"npz": KEY, "shape": [...]}``, its key in the ``.npz`` file.

The results dict (arrays are numpy arrays; images ``(H, W, 3)`` uint8; maps
``(C, H, W)`` input attributions or ``(1, h, w)`` layer maps):

- ``command``, ``created``, ``versions``, ``device``, ``seed``, ``seconds``
  (``model``, ``images``, ``scoring``, ``explaining``, ``faithfulness``,
  ``total``, ``report``);
- ``model``: ``spec``, ``kind``, ``description``, ``weights``, ``notes``,
  ``layer``, ``layer_choice`` (given, or how the default was chosen),
  ``layer_grid``, ``similarity``, ``score_meaning``, ``decision`` (None, or
  the verification ``threshold`` and its ``rule``);
- ``preprocessing``: how images became model inputs;
- ``methods``: ``[{short, name, cost, default}]``;
- ``query``: ``name``, ``image`` (as given, at most 512 px), ``size``,
  ``input`` (as the model sees it, before normalisation), ``note``; both
  images uint8 ``(H, W, 3)``;
- ``gallery``: one entry per reference in the order given: ``name``,
  ``score``, ``rank`` (1 = best), ``explained``, ``verdict``, ``accepted``;
- ``pairs``: one per explained reference, best ranked first: ``rank``,
  ``reference``, ``score``, ``verdict``, ``accepted``, ``distance``,
  ``reference_image``, ``reference_input``, ``reference_note``, ``notes``
  and ``methods``: ``{short name: {name, seconds, error, maps: [query map,
  reference map], matches (PAIR-X: points1, points2, cells1, cells2,
  relevance, layer_relevance1/2, pixel_relevance1/2, count, plausibility),
  links (BiLRP: relevance (P1, P2), patch_size), faithfulness ({query,
  reference}: fractions, insertion_curve, deletion_curve and the four AUCs)}}``,
  and optionally ``attributes`` (``{title: PNG bytes}``: figures of an
  attribute explanation, e.g. SANE's, shown when present);
- ``faithfulness``: None, or ``steps`` and ``fill``;
- ``warnings``, ``errors``, ``failed_methods``.

So ``maps.npz`` holds, e.g., ``pairs/0/methods/gradcam/maps/0`` (the query's
Grad-CAM map for the best ranked reference), ``.../maps/1`` (the
reference's), ``pairs/0/methods/pairx/matches/points1`` and
``query/input``; ``results.json`` names every key.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from matplotlib.figure import Figure

from .figures.curves import visualize_insertion_deletion
from .figures.links import visualize_links
from .figures.matches import visualize_match_consistency, visualize_matches
from .figures.pair import visualize_pair
from .figures.ranking import visualize_ranking
from .metrics.insertion_deletion import InsertionDeletion
from .pairwise_matching import PairMatches

__all__ = ["build_report", "save_results", "load_results"]

#: Methods per maps figure (more go to further figures).
MAPS_PER_FIGURE = 4

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
img { max-width: 100%; }
.images { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-end; }
.images figure { margin: 0; text-align: center; font-size: 0.8em; }
.images img { height: 180px; image-rendering: auto; }
.note { background: #fff7e0; border-left: 4px solid #e0a000; padding: 0.5em 0.8em; margin: 0.8em 0; }
.error { background: #fde8e8; border-left: 4px solid #c00; padding: 0.5em 0.8em; margin: 0.8em 0; }
.score { font-size: 1.1em; } code { background: #f4f4f4; padding: 0 0.2em; }
.small { font-size: 0.85em; color: #555; }
"""


# -- results on disk ---------------------------------------------------------------


def save_results(results: Dict[str, Any], folder: Union[str, Path]) -> Tuple[Path, Path]:
    r"""Writes ``results.json`` and ``maps.npz`` into ``folder``.

    Args:
        results (dict): The results (see the module's description).
        folder (str or Path): The output folder (created if missing).

    Returns:
        tuple of Path: the JSON file and the ``.npz`` file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: Dict[str, np.ndarray] = {}
    document = _split(results, "", arrays)
    json_path, npz_path = folder / "results.json", folder / "maps.npz"
    json_path.write_text(json.dumps(document, indent=1, allow_nan=True) + "\n")
    np.savez_compressed(npz_path, **arrays)
    return json_path, npz_path


def load_results(folder: Union[str, Path]) -> Dict[str, Any]:
    """Reads back what :func:`save_results` wrote: the results dict with its
    arrays in place."""
    folder = Path(folder)
    document = json.loads((folder / "results.json").read_text())
    with np.load(folder / "maps.npz") as arrays:
        return _join(document, arrays)


def _split(value: Any, key: str, arrays: Dict[str, np.ndarray]) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"npz": key, "shape": list(value.shape)}
    if isinstance(value, bytes):  # e.g. a PNG figure
        arrays[key] = np.frombuffer(value, dtype=np.uint8)
        return {"npz": key, "shape": [len(value)], "bytes": True}
    if isinstance(value, dict):
        return {
            str(k): _split(v, f"{key}/{k}" if key else str(k), arrays) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _join(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"npz", "shape"}:
            return arrays[value["npz"]]
        if set(value) == {"npz", "shape", "bytes"}:
            return arrays[value["npz"]].tobytes()
        return {k: _join(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, arrays) for v in value]
    return value


# -- the report --------------------------------------------------------------------


def build_report(results: Dict[str, Any], path: Union[str, Path]) -> Path:
    r"""Writes the HTML report of a results dict.

    Per explained pair: both images as given and as the model sees them
    (with what was done to them), the score and what it means (and the
    verification decision when the model has one), every method's maps on
    both images on one diverging colour scale per method with a colorbar
    and the normalisation said, PAIR-X's matches and their affine
    consistency, BiLRP's links, insertion/deletion curves when computed,
    and each method's time and errors. A gallery query gets the ranked strip
    and the full ranking. The file is self-contained (figures are embedded
    PNGs; no script, no network).

    Args:
        results (dict): What :func:`captum_similarity.cli.explain_images`
            returns or :func:`load_results` reads.
        path (str or Path): The HTML file to write.

    Returns:
        Path: ``path``.

    Example::

        >>> results = explain_images("a.png", ["b.png"], "dlib-face")
        >>> build_report(results, "report.html")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts: List[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>captum-similarity report: {_e(results['query']['name'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Why does the model find these images similar?</h1>",
    ]
    parts += _header(results)
    if len(results["gallery"]) > 1:
        parts += _ranking(results)
    for p, pair in enumerate(results["pairs"]):
        parts += _pair_section(results, p, pair)
    parts += _footer(results)
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _header(results: Dict[str, Any]) -> List[str]:
    model = results["model"]
    rows = [
        ("command", f"<code>{_e(results['command'])}</code>"),
        (
            "model",
            f"<code>{_e(model['spec'])}</code>: {_e(model['description'])}"
            + (f"; weights <code>{_e(model['weights'])}</code>" if model.get("weights") else "")
            + (f" ({_e('; '.join(model['notes']))})" if model.get("notes") else ""),
        ),
        (
            "explained layer",
            (f"<code>{_e(model['layer'])}</code>" if model.get("layer") else "none")
            + (
                f", grid {model['layer_grid'][0]}x{model['layer_grid'][1]}"
                if model.get("layer_grid")
                else ""
            )
            + f" ({_e(model['layer_choice'])})",
        ),
        ("score", f"s = {_e(model['score_meaning'])}; larger is more similar"),
    ]
    if model.get("decision"):
        rows.append(("decision", _e(model["decision"]["rule"])))
    rows += [
        ("images", _e(results["preprocessing"])),
        ("query", f"<code>{_e(results['query']['name'])}</code>"),
        (
            "references",
            f"{len(results['gallery'])} scored"
            + (
                f" (gallery folders: {_e(', '.join(results['gallery_folders']))})"
                if results.get("gallery_folders")
                else ""
            )
            + f"; the best {len(results['pairs'])} explained",
        ),
        ("device", _e(results["device"])),
        ("created", _e(results["created"])),
    ]
    parts = ["<table>"] + [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows] + ["</table>"]
    parts += [
        "<h3>Methods</h3>",
        "<table><tr><th>short name</th><th>method</th><th>cost per pair</th>"
        "<th>time per pair (s)</th></tr>",
    ]
    for m in results["methods"]:
        times = [
            pair["methods"].get(m["short"] or m["name"], {}).get("seconds")
            for pair in results["pairs"]
        ]
        times = [t for t in times if t is not None]
        mean = f"{sum(times) / len(times):.2f}" if times else "-"
        parts.append(
            f"<tr><td><code>{_e(m['short'] or '')}</code></td><td>{_e(m['name'])}</td>"
            f"<td>{_e(m['cost'])}</td><td>{mean}</td></tr>"
        )
    parts.append("</table>")
    for text in results.get("errors", []):
        parts.append(f'<div class="error">{_e(text)}</div>')
    for text in results.get("warnings", []):
        parts.append(f'<div class="note">{_e(text)}</div>')
    return parts


def _ranking(results: Dict[str, Any]) -> List[str]:
    gallery = sorted(results["gallery"], key=lambda g: g["rank"])
    parts = ["<h2>Ranking</h2>"]
    pairs = results["pairs"]
    if pairs:
        hits = torch.stack([_image_tensor(p["reference_input"]) for p in pairs])
        accepted = (
            [bool(p["accepted"]) for p in pairs] if pairs[0].get("accepted") is not None else None
        )
        decision = results["model"].get("decision")
        fig = visualize_ranking(
            _image_tensor(results["query"]["input"]),
            hits,
            [p["score"] for p in pairs],
            names=[p["reference"] for p in pairs],
            accepted=accepted,
            decision_labels=(decision["accept"], decision["reject"])
            if decision
            else ("accepted", "rejected"),
            query_name=f"query: {results['query']['name']}",
            gallery_size=len(gallery),
        )
        parts.append(_img(fig, "the query and its best ranked references"))
    parts.append(
        "<table><tr><th>rank</th><th>reference</th><th>s</th><th>verdict</th><th>explained</th></tr>"
    )
    for g in gallery:
        parts.append(
            f"<tr><td>{g['rank']}</td><td><code>{_e(g['name'])}</code></td><td>{g['score']:.4f}</td>"
            f"<td>{_e(g.get('verdict') or '')}</td><td>{'yes' if g['explained'] else ''}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _pair_section(results: Dict[str, Any], p: int, pair: Dict[str, Any]) -> List[str]:
    query = results["query"]
    parts = [
        f'<h2 id="pair-{p}">Rank {pair["rank"]}: <code>{_e(query["name"])}</code> vs '
        f"<code>{_e(pair['reference'])}</code></h2>"
    ]
    score = f"s = {pair['score']:.4f}"
    if pair.get("distance") is not None:
        score += f" (distance {pair['distance']:.4f})"
    if pair.get("verdict"):
        score += f": the model says <b>{_e(pair['verdict'])}</b>"
    parts.append(f'<p class="score">{score}</p>')
    parts.append('<div class="images">')
    for label, image, note in (
        (f"query as given ({query['size'][0]}x{query['size'][1]})", query["image"], ""),
        ("query as the model sees it", query["input"], query.get("note", "")),
        (
            f"reference as given ({pair['reference_size'][0]}x{pair['reference_size'][1]})",
            pair["reference_image"],
            "",
        ),
        ("reference as the model sees it", pair["reference_input"], pair.get("reference_note", "")),
    ):
        caption = _e(label) + (f"<br><span class='small'>{_e(note)}</span>" if note else "")
        parts.append(
            f"<figure>{_img_array(image, label)}<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("</div>")
    for text in pair.get("notes", []):
        parts.append(f'<div class="note">{_e(text)}</div>')

    x1 = _image_tensor(query["input"])[None]
    x2 = _image_tensor(pair["reference_input"])[None]
    titles = ("query", "reference")
    methods = pair["methods"]
    drawn = {short: e for short, e in methods.items() if e.get("maps") is not None}
    names = list(drawn)
    chunks = [names[i : i + MAPS_PER_FIGURE] for i in range(0, len(names), MAPS_PER_FIGURE)]
    if chunks:
        parts.append("<h3>Maps</h3>")
    for chunk in chunks:
        maps = {
            f"{s}: {drawn[s]['name']}": tuple(_map_tensor(m) for m in drawn[s]["maps"])
            for s in chunk
        }
        suptitle = f"rank {pair['rank']}, s = {pair['score']:.4f}"
        if pair.get("notes"):  # said on the figure too, not only in the page
            suptitle += (
                "\nnear-identical pair: gradient maps of s show what would make the "
                "images more alike, not the evidence (see the note)"
            )
        fig = visualize_pair(x1, x2, maps, sign="all", titles=titles, suptitle=suptitle)
        parts.append(_img(fig, f"maps of {', '.join(chunk)} for pair {p}"))
    failed = {s: e for s, e in methods.items() if e.get("error")}
    if failed:
        parts.append("<table><tr><th>method</th><th>not drawn because</th></tr>")
        for s, e in failed.items():
            parts.append(f"<tr><td><code>{_e(s)}</code></td><td>{_e(e['error'])}</td></tr>")
        parts.append("</table>")
    pairx = methods.get("pairx")
    if pairx and pairx.get("matches") is not None:
        parts += _pairx(x1, x2, pairx["matches"], pair, titles)
    bilrp = methods.get("bilrp")
    if bilrp and bilrp.get("links") is not None:
        relevance = torch.as_tensor(np.asarray(bilrp["links"]["relevance"]))[None]
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        visualize_links(
            x1, x2, relevance, int(bilrp["links"]["patch_size"]), k=12, ax=fig.add_subplot(1, 1, 1)
        )
        parts += ["<h3>BiLRP: the strongest patch-to-patch links</h3>", _img(fig, "BiLRP links")]
    curves = {s: e["faithfulness"] for s, e in drawn.items() if e.get("faithfulness")}
    if curves:
        parts += _faithfulness(results, pair, curves)
    if pair.get("attributes"):  # SANE's attribute explanation, when a method provides one
        parts.append("<h3>Attributes</h3>")
        for name, figure_png in pair["attributes"].items():
            parts.append(f"<p>{_e(name)}</p>{_img_bytes(figure_png, name)}")
    return parts


def _pairx(x1, x2, m: Dict[str, Any], pair: Dict[str, Any], titles) -> List[str]:
    result = PairMatches(
        score=float(pair["score"]),
        **{
            f: torch.as_tensor(np.asarray(m[f]))
            for f in (
                "layer_relevance1",
                "layer_relevance2",
                "cells1",
                "cells2",
                "points1",
                "points2",
                "relevance",
                "pixel_relevance1",
                "pixel_relevance2",
            )
        },
        distance=torch.zeros(int(m["count"])),
    )
    parts = ["<h3>PAIR-X: what the model matches between the two images</h3>"]
    plaus = m.get("plausibility") or {}
    fig = visualize_matches(x1, x2, result, titles=titles)
    parts.append(_img(fig, "PAIR-X matches"))
    if len(result) >= 3:
        fig = visualize_match_consistency(x1, x2, result, titles=titles)
        parts.append(_img(fig, "affine consistency of the top matches"))
    if plaus:
        parts.append(
            f"<p>{int(m['count'])} mutual matches; of the top 10, "
            f"{_pct(plaus.get('inlier_ratio'))} agree with one affine map between the views "
            f"(mean residual {_num(plaus.get('residual'))} px); "
            f"{_pct(plaus.get('relevance_on_matches'))} of the layer relevance lies on matched cells.</p>"
        )
    return parts


def _faithfulness(
    results: Dict[str, Any], pair: Dict[str, Any], curves: Dict[str, Any]
) -> List[str]:
    fill = (results.get("faithfulness") or {}).get("fill")
    parts = ["<h3>Faithfulness: insertion and deletion</h3>"]
    for which in ("query", "reference"):
        per_method = {}
        for short, c in curves.items():
            r = c[which]
            per_method[short] = InsertionDeletion(
                torch.as_tensor(np.asarray(r["fractions"])),
                torch.as_tensor(np.asarray(r["insertion_curve"]))[None],
                torch.as_tensor(np.asarray(r["deletion_curve"]))[None],
                torch.as_tensor(np.asarray(r["insertion_curve"]))[None, -1],
            )
        fig = visualize_insertion_deletion(
            per_method,
            fill=fill,
            suptitle=f"{which} explained, scored against the other image",
        )
        parts.append(_img(fig, f"insertion and deletion curves, {which}"))
    parts.append(
        "<table><tr><th>method</th><th>insertion AUC (query / reference)</th>"
        "<th>deletion AUC (query / reference)</th></tr>"
    )
    for short, c in curves.items():
        ins = " / ".join(
            _num(100 * c[w]["insertion_auc_normalized"], 1) for w in ("query", "reference")
        )
        dele = " / ".join(
            _num(100 * c[w]["deletion_auc_normalized"], 1) for w in ("query", "reference")
        )
        parts.append(f"<tr><td><code>{_e(short)}</code></td><td>{ins}</td><td>{dele}</td></tr>")
    parts.append(
        "</table><p class='small'>Areas under the min-max normalised curves, x 100 (SANE): "
        "higher insertion and lower deletion mean a more faithful map.</p>"
    )
    return parts


def _footer(results: Dict[str, Any]) -> List[str]:
    v = results["versions"]
    seconds = results.get("seconds", {})
    timing = ", ".join(f"{k} {float(t):.1f} s" for k, t in seconds.items())
    return [
        "<h2>Reproducing this report</h2>",
        f"<p>Command: <code>{_e(results['command'])}</code> (seed {results.get('seed', 0)}).</p>",
        f"<p class='small'>captum-similarity {_e(v.get('captum_similarity', '?'))}, torch "
        f"{_e(v.get('torch', '?'))}, captum {_e(v.get('captum', '?'))}, numpy {_e(v.get('numpy', '?'))}, "
        f"Python {_e(v.get('python', '?'))} on {_e(v.get('platform', '?'))}. Time: {_e(timing)}.</p>",
        "<p class='small'>The numbers and maps are in <code>results.json</code> and "
        "<code>maps.npz</code> next to this file (each array's key is given in the JSON).</p>",
    ]


# -- helpers ------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text))


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


def _num(value: Optional[float], digits: int = 2) -> str:
    return (
        "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    )


def _image_tensor(image: Any) -> torch.Tensor:
    arr = np.asarray(image)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _map_tensor(m: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))
    return t[None] if t.dim() == 2 else t


def _img(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return _img_bytes(buffer.getvalue(), alt)


def _img_array(image: Any, alt: str) -> str:
    from matplotlib import image as mpimg

    buffer = io.BytesIO()
    arr = np.asarray(image)
    mpimg.imsave(
        buffer,
        arr if arr.dtype == np.uint8 else np.clip(arr.astype(np.float32), 0, 1),
        format="png",
    )
    return _img_bytes(buffer.getvalue(), alt)


def _img_bytes(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'
