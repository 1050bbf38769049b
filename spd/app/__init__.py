"""Stage 12, reading a decomposition interactively: `spd-app RUN_DIR…`, a local web app over run
directories. The maths is in plain modules testable without the server: `attribution` (a prompt's
attribution graph through the component model under the CI masks), `intervention` (reruns with
chosen nodes ablated or kept alone), `clusters` (subcomponents grouped by co-firing); `runs` loads
a run for the app, `views` shapes the component browser's data, `server` is the HTTP server and
`cli` the command. The frontend (`app.html`) is plain JavaScript and SVG: no network at run time.

May import: every stage up to `spd.analysis`.
"""
