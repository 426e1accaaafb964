"""Virtual servers: the Django app of the panel, and (in vservers.engine) the engine.

Nothing here may import Django: the engine and its `vserver` CLI are used without it.
"""
