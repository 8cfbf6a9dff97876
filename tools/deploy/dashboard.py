#!/usr/bin/env python3
"""Writes the Grafana dashboard of patchwork's metrics (deploy/base/grafana/patchwork-dashboard.json).

The dashboard is generated so that its panels stay regular; `validate.sh` checks that the committed JSON is
what this script writes, and tests/web.rs that every metric it queries is one the processes export.

Coordinators are all scraped (the follower too): the cluster's gauges are the same on each, so panels take
their max; counters and histograms grow only on the leader, so panels sum them.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "deploy/base/grafana/patchwork-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self):
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.panels = []

    def row(self, title):
        self.newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "gridPos": self.pos(24, 1), "panels": []})
        self.newline()

    def pos(self, w, h):
        if self.x + w > 24:
            self.newline()
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def newline(self):
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def add(self, panel, w, h):
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = self.pos(w, h)
        panel["datasource"] = DS
        self.panels.append(panel)


def targets(*queries):
    return [{"refId": chr(ord("A") + i), "datasource": DS, "expr": q, "legendFormat": legend} for i, (q, legend) in enumerate(queries)]


def stat(title, unit, *queries, description=""):
    return {"type": "stat", "title": title, "description": description, "targets": targets(*queries),
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}}


def series(title, unit, *queries, description="", stack=False):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {"type": "timeseries", "title": title, "description": description, "targets": targets(*queries),
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def quantiles(metric, by, where="", window="5m"):
    """p50 and p95 of a histogram, by the `by` label."""
    sel = f"{{{where}}}" if where else ""
    return [(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel}[{window}])))", f"p{int(q * 100)} {{{{{by}}}}}")
            for q in (0.5, 0.95)]


def dashboard():
    p = Layout()
    running = 'patchwork_jobs{state=~"encoding_prompts|denoising|decoding"}'
    p.row("Jobs")
    p.add(stat("Queue depth", "short", ("max(patchwork_queue_depth)", "queued"),
               description="Jobs waiting for a running slot or for a worker that serves their model."), 4, 4)
    p.add(stat("Running jobs", "short", (f"sum(max by (state) ({running}))", "running")), 4, 4)
    p.add(stat("Workers", "short", ("sum(max by (status) (patchwork_workers))", "workers")), 4, 4)
    p.add(stat("Unhealthy shard groups", "short", ('max(patchwork_shard_groups{health="unhealthy"})', "unhealthy")), 4, 4)
    p.add(stat("Leader term", "none", ("max(patchwork_leader_term)", "term"),
               description="Grows at every change of leader."), 4, 4)
    p.add(stat("Coordinators leading", "short", ("sum(patchwork_leader)", "leading"),
               description="1 when healthy: 0 during an election, never more."), 4, 4)
    p.add(series("Jobs by state", "short", ('max by (state) (patchwork_jobs{state=~"queued|encoding_prompts|denoising|decoding"})', "{{state}}"),
                 stack=True), 12, 8)
    p.add(series("Jobs finished", "short", ("sum by (state) (increase(patchwork_jobs_finished_total[5m]))", "{{state}}"),
                 description="Per 5 minutes, by how they ended."), 12, 8)
    p.add(series("Job duration (start to end)", "s", *quantiles("patchwork_job_duration_seconds", "state", window="30m")), 12, 8)
    p.add(series("Queue wait (submission to start)", "s", *quantiles("patchwork_job_queue_wait_seconds", "model", window="30m")), 12, 8)

    p.row("Steps and windows")
    p.add(series("Step latency", "s", *quantiles("patchwork_step_duration_seconds", "model"),
                 description="One denoising step of a job: every window evaluated and fused."), 8, 8)
    p.add(series("Window evaluations", "ops", ("sum by (kind, outcome) (rate(patchwork_window_evaluations_total[5m]))", "{{kind}} {{outcome}}")), 8, 8)
    p.add(series("Retries", "ops", ("sum by (kind) (rate(patchwork_window_evaluation_retries_total[5m]))", "{{kind}}"),
                 description="Evaluations sent again after a failure, a timeout or a worker leaving."), 8, 8)
    p.add(series("Evaluation latency, coordinator's view", "s", *quantiles("patchwork_window_evaluation_duration_seconds", "kind")), 12, 8)
    p.add(series("Evaluation latency, workers' view", "s", *quantiles("patchwork_worker_evaluation_duration_seconds", "kind")), 12, 8)

    p.row("Workers and devices")
    p.add(series("Workers by status", "short", ("max by (status) (patchwork_workers)", "{{status}}"), stack=True), 8, 8)
    p.add(series("Evaluation slots", "short", ("max by (slots) (patchwork_worker_slots)", "{{slots}}")), 8, 8)
    p.add(series("Shard groups by health", "short", ("max by (health) (patchwork_shard_groups)", "{{health}}"), stack=True), 8, 8)
    p.add(series("Device memory used", "bytes", ("patchwork_device_memory_used_bytes", "{{pod}} {{device}}")), 12, 8)
    p.add(series("Device memory used (share)", "percentunit",
                 ("patchwork_device_memory_used_bytes / patchwork_device_memory_total_bytes", "{{pod}} {{device}}")), 12, 8)
    p.add(series("Evaluations answered by worker", "ops",
                 ("sum by (pod, outcome) (rate(patchwork_worker_evaluations_total[5m]))", "{{pod}} {{outcome}}")), 12, 8)
    p.add(series("In flight by worker", "short", ("patchwork_worker_evaluations_in_flight", "{{pod}}"),
                 ("patchwork_worker_capacity", "{{pod}} capacity")), 12, 8)

    p.row("Bytes moved")
    p.add(series("Coordinator to and from workers", "Bps",
                 ("sum by (direction, kind) (rate(patchwork_transfer_bytes_total[5m]))", "{{kind}} {{direction}}")), 12, 8)
    p.add(series("Workers", "Bps",
                 ("sum by (pod, direction, kind) (rate(patchwork_worker_transfer_bytes_total[5m]))", "{{pod}} {{kind}} {{direction}}")), 12, 8)

    return {
        "title": "patchwork",
        "uid": "patchwork",
        "description": "The patchwork render farm: jobs, steps, windows, workers, devices and traffic.",
        "tags": ["patchwork"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}]},
        "annotations": {"list": []},
        "links": [],
        "panels": p.panels,
    }


def main():
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            sys.exit(f"{OUT} is not what tools/deploy/dashboard.py writes; run it and commit the result")
        print(f"{OUT.name}: up to date")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
