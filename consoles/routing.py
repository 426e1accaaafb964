"""The console's WebSocket route (panel/asgi.py mounts it behind the origin check and the
session)."""

from django.urls import path

from .consumers import ConsoleConsumer

websocket_urlpatterns = [
    path("ws/servers/<uuid:uuid>/console/", ConsoleConsumer.as_asgi(), name="console_websocket"),
]
