"""uuidguard's Grafana dashboards: grafanalib sources, built into dashboards/generated/."""
