"""Settings of the node workers that the cluster tests start (tests/cluster_world.py): the fault
tests' settings (the test's database, REDIS_URL and VSERVER_* from the environment), with a
queue for each of the two test nodes."""

from tests.panel.fault_settings import *  # noqa: F403
from tests.panel.fault_settings import REDIS_URL, RQ_QUEUES

RQ_QUEUES = {
    **RQ_QUEUES,
    **{name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600, "SERIALIZER": "rq.serializers.JSONSerializer"}
       for name in ("node-a", "node-b")},
}
