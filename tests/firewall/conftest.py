from tests.hostnet.conftest import netns

__all__ = ["netns"]
