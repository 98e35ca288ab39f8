"""Outputs: export, the hub, the report, the audit, views, review decisions, maps, output folders."""
