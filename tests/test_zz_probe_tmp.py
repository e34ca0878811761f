import json
from tests.test_runtime_api import flux, MONTH, manual, item, error_of, send, api_event  # noqa

def test_probe(flux):
    for path, body in [
        ("/register_execution", {"data": [{**item("tb_a", ano_mes=1), "source": "x"*300000}]}),
        ("/approve", {"approval_status_id": 1, "comment": "x"*300000}),
        ("/runs", {"table_name": "tb_a", "partitions": [], "reason": "x"*300000}),
    ]:
        s, raw = send(flux, api_event("POST", path, body)); print(s, raw[:300])
    print(send(flux, api_event("GET", "/nope")))
    print(send(flux, api_event("DELETE", "/runs")))
    print(send(flux, api_event("GET", "/runs/abc")))
    print(send(flux, api_event("POST", "/register_execution", {"data": [{**item("tb_a", ano_mes=1), "idempotency_key": "k"}, {**item("tb_a", ano_mes=2), "idempotency_key": "k"}]})))
