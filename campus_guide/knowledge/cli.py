"""`campus-guide kb check | route | ask | eval`: inspect a campus knowledge base.

Nothing here loads a language model; `ask` and `eval` load the small embedding model
(multilingual-e5-small, 4-bit, 72 MB) and cache the campus embeddings.
"""
from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..config import load_config


def register(sub) -> None:
    kb = sub.add_parser("kb", help="campus knowledge base: check, route, ask, eval",
                        description=__doc__)
    cmds = kb.add_subparsers(dest="kb_command", required=True, metavar="KB_COMMAND")

    def common(p):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = common(cmds.add_parser("check", help="validate a campus file and summarise it"))
    p.add_argument("path", nargs="?", help="campus YAML (default: the configured knowledge base)")
    p.set_defaults(func=_check)

    p = common(cmds.add_parser("route", help="walking route between two places (ids or names)"))
    p.add_argument("origin", metavar="FROM")
    p.add_argument("destination", metavar="TO")
    p.add_argument("--lang", choices=("ko", "en"), default="en")
    p.add_argument("--kb", help="campus YAML (default: the configured knowledge base)")
    p.set_defaults(func=_route)

    p = common(cmds.add_parser("ask", help="what retrieval returns for a question, and why"))
    p.add_argument("question")
    p.add_argument("--here", help="where the kiosk stands (default: dialogue.kiosk_location)")
    p.add_argument("-k", type=int, default=None, help="results to show (default: dialogue.retrieval_k)")
    p.add_argument("--kb", help="campus YAML (default: the configured knowledge base)")
    p.set_defaults(func=_ask)

    p = common(cmds.add_parser("eval", help="recall@1/@3 on generated questions, off-topic false accepts"))
    p.add_argument("--kb", help="campus YAML (default: the configured knowledge base)")
    p.add_argument("--min-score", type=float, default=None, help="default: dialogue.min_score")
    p.add_argument("--out", help="also write the full report (JSON) here")
    p.add_argument("--plot", help="write a PNG of the score distributions here")
    p.set_defaults(func=_eval)


def _kb_path(args) -> str:
    return getattr(args, "kb", None) or getattr(args, "path", None) or load_config(args.config).kb


def _check(args) -> int:
    from .schema import KBError, load_kb

    path = _kb_path(args)
    try:
        kb = load_kb(path)
    except KBError as e:
        if not args.json:
            raise
        print(json.dumps({"ok": False, "path": str(path), "errors": e.errors}, ensure_ascii=False, indent=2))
        return 1
    graph = kb.graph
    off = sum(p.off_campus for p in kb.places)
    summary = {
        "ok": True, "path": str(path), "campus": kb.campus.en, "sha256": kb.sha256,
        "buildings": len(kb.buildings), "places_on_campus": len(kb.places) - off, "places_off_campus": off,
        "graph_nodes": len(kb.graph.nodes), "graph_edges": len(kb.graph.edges),
        "connected": len(graph.component(next(iter(graph.nodes)))) == len(graph.nodes), "names": len(kb.names()),
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(f"{path}: OK - {kb.campus.en} ({kb.campus.ko})\n"
              f"  {summary['buildings']} buildings, {summary['places_on_campus']} places on campus, "
              f"{off} off campus\n"
              f"  path graph: {summary['graph_nodes']} nodes, {summary['graph_edges']} edges, "
              f"{'connected' if summary['connected'] else 'NOT connected'}\n"
              f"  {summary['names']} names and aliases")
    return 0


def _resolve(kb, text: str) -> str:
    """An id as is, else the place a name or alias (possibly misspelt) refers to."""
    if kb.has(text):
        return text
    from .retrieval import Retriever

    matches = Retriever(kb, here=next(iter(kb.graph.nodes)), embeddings=False).name_matches(text)
    if matches:
        return max(matches, key=lambda m: m.score).id
    ids = [e.id for e in kb.entries()] + kb.names()
    near = difflib.get_close_matches(text, ids, n=3, cutoff=0.5)
    hint = f" (did you mean: {', '.join(near)}?)" if near else " (see `campus-guide kb check` for the file)"
    raise UserError(f"{kb.path}: no place called {text!r}{hint}")


def _route(args) -> int:
    from .routes import find_route
    from .schema import load_kb

    kb = load_kb(_kb_path(args))
    route = find_route(kb, _resolve(kb, args.origin), _resolve(kb, args.destination))
    if args.json:
        print(json.dumps(route.to_json(args.lang), ensure_ascii=False, indent=2))
    else:
        print(f"{route.origin_name[args.lang]} → {route.destination_name[args.lang]}")
        print(route.render(args.lang))
    return 0


def _ask(args) -> int:
    from .answers import compose_answer
    from .retrieval import Retriever
    from .schema import load_kb

    cfg = load_config(args.config)
    kb = load_kb(args.kb or cfg.kb)
    here = args.here or cfg.dialogue.kiosk_location
    r = Retriever(kb, here=_resolve(kb, here)).retrieve(args.question, k=args.k or cfg.dialogue.retrieval_k)
    known = r.known(cfg.dialogue.min_score)
    answer = compose_answer(r, cfg.dialogue.min_score)
    if args.json:
        out = r.to_json()
        out.update(known=known, min_score=cfg.dialogue.min_score, facts=r.facts(), answer=answer)
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"question ({r.lang}): {args.question}")
    for i, h in enumerate(r.results, 1):
        print(f"  {i}. {h.id:<18} {h.score:.3f}  {h.why:<9} {h.matched}")
    if not r.results:
        print("  (nothing matched)")
    if r.route:
        print(f"route {r.route.origin} → {r.route.destination}:\n" +
              "\n".join("  " + line for line in r.route.render(r.lang).splitlines()))
    print(f"known at min_score {cfg.dialogue.min_score:.2f}: {'yes' if known else 'no (answers UNKNOWN)'}")
    print("facts:\n" + "\n".join(f"  - {f}" for f in r.facts()))
    print(f"answer: {answer}")
    return 0


def _eval(args) -> int:
    from .evaluate import evaluate
    from .retrieval import Retriever
    from .schema import load_kb

    cfg = load_config(args.config)
    kb = load_kb(args.kb or cfg.kb)
    min_score = cfg.dialogue.min_score if args.min_score is None else args.min_score
    report = evaluate(Retriever(kb, here=cfg.dialogue.kiosk_location), min_score=min_score,
                      progress=sys.stderr.isatty() and not args.json)
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
    if args.plot:
        from .evaluate import plot_scores
        plot_scores(report, args.plot)
    if args.json:
        out = report.to_json()
        out.pop("scores", None)
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(report.summary())
    return 0
