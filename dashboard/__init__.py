"""InferMesh dashboard: a Streamlit app over the control-plane API (SLOs, canaries, the fleet,
jobs, events and audit), started by `infermesh dashboard`. It talks to the API only, through the
SDK. `APP` is the entry script `streamlit run` takes."""

from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
