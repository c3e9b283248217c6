"""InferMesh dashboard: a Streamlit app over the control-plane API (SLOs, canaries, the fleet,
jobs, events and audit), started by `infermesh dashboard`. It talks to the API only, through the
SDK. `APP` is the app's entry script; `SERVER` the file `streamlit run` takes (server.py: APP
behind Streamlit's server, with the routes and page head the charts need)."""

from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
SERVER = APP.with_name("server.py")
