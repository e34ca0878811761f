"""The runtime: registering executions, opening runs, approvals, firing, dispatch and completion."""
