"""The HTTP server of `spd-app`: a Flask application serving the frontend and a JSON API.

Every route returns JSON; a bad request (an empty prompt, an unknown layer, a run without
analysis) answers status 400 with `{"error": one line}`, which the page shows. The model work of
a run is serialised by the run's lock (torch already uses the CPU cores).
"""

import socket
from dataclasses import asdict
from importlib import resources
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from spd.app.attribution import attribution_graph, ci_masks, masked_output
from spd.app.clusters import cluster_contexts, find_clusters
from spd.app.intervention import NodeKey, token_intervention, vector_intervention
from spd.app.runs import LoadedRun
from spd.app.views import search, subcomponent, table_page
from spd.errors import SPDUserError

HOST = "127.0.0.1"
N_LOGITS = 3


def _run(runs: list[LoadedRun], index: int) -> LoadedRun:
    if not 0 <= index < len(runs):
        raise SPDUserError(f"no run {index}; the app serves runs 0 … {len(runs) - 1}")
    return runs[index]


def _analysed(run: LoadedRun) -> Any:
    if run.analysis is None:
        raise SPDUserError(run.analysis_message or "no analysis")
    return run.analysis


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise SPDUserError("the request needs a JSON object body")
    return body


def graph_json(run: LoadedRun, body: dict[str, Any]) -> dict[str, Any]:
    """The attribution graph of `body['prompt']` with its top logits (or toy outputs) as targets."""
    threshold = float(body.get("threshold", 0.1))
    x = run.encode(str(body.get("prompt", "")))
    model = run.model
    with run.lock:
        out = masked_output(model, x, ci_masks(model, x, run.config.sigmoid_type))
        last = out.reshape(-1, out.shape[-1])
        position = last.shape[0] - 1
        if run.kind == "tokens":
            chosen = last[position].softmax(-1).topk(N_LOGITS).indices.tolist()
        else:
            chosen = last[position].abs().topk(min(N_LOGITS, last.shape[-1])).indices.tolist()
        graph = attribution_graph(
            model,
            x,
            run.config.sigmoid_type,
            [(position, i) for i in chosen],
            threshold=threshold,
            max_nodes=int(body.get("max_nodes", 200)),
        )
    probs = last[position].softmax(-1) if run.kind == "tokens" else last[position]
    labels = run.token_strings(chosen)
    tokens = run.token_strings(x[0].tolist()) if run.kind == "tokens" else ["input"]
    return {
        "layers": graph.layer_names,
        "positions": tokens,
        "nodes": [
            {
                **asdict(node),
                "label": (
                    f"{labels[chosen.index(node.index)]} ({float(probs[node.index]):.3f})"
                    if node.layer == len(graph.layer_names)
                    else f"{node.index}"
                ),
            }
            for node in graph.nodes
        ],
        "edges": graph.edges[: int(body.get("max_edges", 2000))],
    }


def intervention_json(run: LoadedRun, body: dict[str, Any]) -> dict[str, Any]:
    """The outputs before and after editing `body['nodes']` ([layer name, position, index])."""
    x = run.encode(str(body.get("prompt", "")))
    nodes: list[NodeKey] = [(str(n), int(p), int(i)) for n, p, i in body.get("nodes", [])]
    if not nodes:
        raise SPDUserError("select at least one node to ablate or keep")
    mode = body.get("mode", "ablate")
    with run.lock:
        if run.kind != "tokens":
            return {
                "kind": "toy",
                **asdict(vector_intervention(run.model, x, run.config.sigmoid_type, nodes, mode)),
            }
        result = token_intervention(run.model, x, run.config.sigmoid_type, nodes, mode)

    def named(top: list[list[tuple[int, float]]]) -> list[list[tuple[str, float]]]:
        return [
            list(zip(run.token_strings([i for i, _ in row]), [p for _, p in row], strict=True))
            for row in top
        ]

    return {
        "kind": "tokens",
        "positions": run.token_strings(x[0].tolist()),
        "before": named(result.before),
        "after": named(result.after),
        "kl_before": result.kl_before,
        "kl_after": result.kl_after,
    }


def clusters_json(run: LoadedRun) -> list[dict[str, Any]]:
    """Every cluster's members (layer number, layer name, subcomponent)."""
    analysis = _analysed(run)
    return [
        {
            "fires": cl.fires,
            "members": [[li, analysis.layers[li].name, c] for li, c in cl.members],
        }
        for cl in find_clusters(analysis)
    ]


def cluster_json(run: LoadedRun, k: int) -> dict[str, Any]:
    """One cluster's members and its top contexts."""
    analysis = _analysed(run)
    clusters = find_clusters(analysis)
    if not 0 <= k < len(clusters):
        raise SPDUserError(f"no cluster {k}; this run has {len(clusters)}")
    cluster = clusters[k]
    contexts = []
    for li, c, j in cluster_contexts(analysis, cluster):
        data = analysis.layers[li]
        contexts.append(
            {
                "layer_name": data.name,
                "layer": li,
                "index": c,
                "ci": float(data["top_ci"][c, j]),
                "tokens": [analysis.vocab[t] if t >= 0 else None for t in data["top_tokens"][c, j]],
                "window_ci": data["top_window_ci"][c, j].astype(float).round(3).tolist(),
            }
        )
    members = [[li, analysis.layers[li].name, c] for li, c in cluster.members]
    return {"index": k, "members": members, "fires": cluster.fires, "contexts": contexts}


def create_app(runs: list[LoadedRun]) -> Flask:
    """The Flask application over `runs`."""
    app = Flask("spd.app")
    page = resources.files("spd.app").joinpath("app.html").read_text()

    @app.errorhandler(SPDUserError)
    def user_error(error: SPDUserError) -> tuple[Response, int]:
        return jsonify({"error": str(error)}), 400

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/api/runs")
    def list_runs() -> Response:
        return jsonify(
            [
                {
                    "index": i,
                    "name": run.name,
                    "path": str(run.path.resolve()),
                    "kind": run.kind,
                    "analysis": run.analysis is not None,
                    "message": run.analysis_message,
                    "layers": [
                        [layer.name, layer.C]
                        for layer in (run.analysis.layers if run.analysis else [])
                    ],
                    "n_tokens": run.analysis.meta.get("n_tokens") if run.analysis else None,
                }
                for i, run in enumerate(runs)
            ]
        )

    @app.get("/api/runs/<int:i>/layers/<int:layer>")
    def table(i: int, layer: int) -> Response:
        args = request.args
        return jsonify(
            table_page(
                _analysed(_run(runs, i)),
                layer,
                offset=int(args.get("offset", 0)),
                limit=int(args.get("limit", 50)),
                sort=args.get("sort", "density"),
                descending=args.get("desc", "1") == "1",
                hide_dead=args.get("hide_dead", "1") == "1",
            )
        )

    @app.get("/api/runs/<int:i>/layers/<int:layer>/<int:c>")
    def sub(i: int, layer: int, c: int) -> Response:
        return jsonify(subcomponent(_analysed(_run(runs, i)), layer, c))

    @app.get("/api/runs/<int:i>/search")
    def token_search(i: int) -> Response:
        return jsonify(search(_analysed(_run(runs, i)), request.args.get("q", "")))

    @app.post("/api/runs/<int:i>/graph")
    def graph(i: int) -> Response:
        return jsonify(graph_json(_run(runs, i), _body()))

    @app.post("/api/runs/<int:i>/intervene")
    def intervene(i: int) -> Response:
        return jsonify(intervention_json(_run(runs, i), _body()))

    @app.get("/api/runs/<int:i>/clusters")
    def clusters(i: int) -> Response:
        return jsonify(clusters_json(_run(runs, i)))

    @app.get("/api/runs/<int:i>/clusters/<int:k>")
    def cluster(i: int, k: int) -> Response:
        return jsonify(cluster_json(_run(runs, i), k))

    return app


def bind(app: Flask, port: int) -> BaseWSGIServer:
    """A threaded HTTP server for `app` on 127.0.0.1:`port` (0: any free port)."""
    # Werkzeug answers a taken port with a message and sys.exit: try the address first.
    try:
        with socket.socket() as probe:
            probe.bind((HOST, port))
    except OSError as error:
        raise SPDUserError(
            f"cannot listen on {HOST}:{port} ({error.strerror}); pick another with --port"
        ) from error
    return make_server(HOST, port, app, threaded=True)
