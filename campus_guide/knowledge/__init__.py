"""Campus knowledge: the validated campus file, walking routes, retrieval and grounded answers.

    kb = load_kb(path)
    r = Retriever(kb, here="main_gate").retrieve("여기서 도서관 어떻게 가?")
    r.known(cfg.dialogue.min_score), r.facts(), compose_answer(r)
"""
from .answers import compose_answer
from .retrieval import Hit, Retrieval, Retriever
from .routes import Route, Step, find_route
from .schema import Building, KBError, KnowledgeBase, Place, Service, Text, load_kb

__all__ = ["Building", "Hit", "KBError", "KnowledgeBase", "Place", "Retrieval", "Retriever", "Route", "Service",
           "Step", "Text", "compose_answer", "find_route", "load_kb"]
