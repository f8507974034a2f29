"""The daemon: supervisor and device tasks, report-by-exception pipeline, status socket, the Agent."""
