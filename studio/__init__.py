"""DELIFT Studio's Streamlit helpers: session state, background kernel jobs, shared widgets."""
