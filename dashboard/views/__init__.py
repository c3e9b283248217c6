"""The dashboard's pages: scripts that `st.navigation` runs (see app.py); each is a thin layer of
Streamlit calls over the data modules of `infermesh.dashboard`."""
