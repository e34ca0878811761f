"""The runtime's services: registering executions, opening runs, approvals, firing, completion, the
sweep, and the answers of the GET routes; on ports only (:mod:`controller.services.ports`)."""
