"""A multi-host lab on one machine (netns + dockerd per host) for the demo, tests and benchmarks.

lab = Lab.create("demo", hosts=3)
url = lab.start_server(); token = lab.create_token()
h1 = lab.host("h1")
h1.popen(["shoal", "up", "--server", url, "--token", token, ...], log=h1.dir / "agent.log")
lab.destroy()
"""

from shoal.lab.errors import LabCommandFailed, LabError, LabNotFound
from shoal.lab.image import IMAGE
from shoal.lab.lab import DEFAULT_ROOT, SERVER_IP, SERVER_PORT, Lab, LabHost, LabOutsider, sweep

__all__ = [
    "DEFAULT_ROOT",
    "IMAGE",
    "SERVER_IP",
    "SERVER_PORT",
    "Lab",
    "LabCommandFailed",
    "LabError",
    "LabHost",
    "LabNotFound",
    "LabOutsider",
    "sweep",
]
