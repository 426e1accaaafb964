"""Django project of the hosting panel: settings, URLs and the WSGI/ASGI entry points."""
