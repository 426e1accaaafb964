"""The nodes' roles limited by row (vservers.nodes.rowsecurity): PostgreSQL only."""

from django.db import migrations


def enable(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from vservers.nodes import rowsecurity

    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        rowsecurity.enable(cursor, cursor.fetchone()[0])


def disable(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from vservers.nodes import rowsecurity

    with schema_editor.connection.cursor() as cursor:
        rowsecurity.disable(cursor)


class Migration(migrations.Migration):

    dependencies = [
        ('vservers', '0016_cluster'),
        ('alerts', '0001_initial'),
        ('consoles', '0001_initial'),
        ('notifications', '0002_alter_optout_event_alter_outboxmail_event'),
    ]

    operations = [
        migrations.RunPython(enable, disable),
    ]
