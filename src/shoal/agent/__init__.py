"""The host agent: joins the mesh, follows the netmap and keeps this host configured to it."""
