"""What `frontgate restart` tells the operator about a stage with one process: it must match what a
restart does to each listener (frontgate_ops.deploy.one_worker_note)."""
import pytest

from frontgate_ops.deploy import one_worker_note


@pytest.mark.parametrize("closed, held, expected", [
    ([], [], None),                                                  # the checker: nothing listens
    (["0.0.0.0:443"], [], "one worker: 0.0.0.0:443 refuses connections while it restarts (workers = 2 or "
                          "more, or \"auto\" on a multi-core machine, restarts without a gap)"),
    ([], ["unix:/srv/fg/run/router.sock"], "unix:/srv/fg/run/router.sock stays open: supervisord holds it, "
                                           "and connections wait in its backlog for the new process"),
    (["0.0.0.0:80", "127.0.0.1:8443"], ["unix:/r.sock"],
     "one worker: 0.0.0.0:80, 127.0.0.1:8443 refuse connections while it restarts (workers = 2 or more, or "
     "\"auto\" on a multi-core machine, restarts without a gap); unix:/r.sock stays open: supervisord holds it, "
     "and connections wait in its backlog for the new process"),
])
def test_one_worker_note_says_which_listeners_close(closed, held, expected):
    assert one_worker_note(closed, held) == expected
