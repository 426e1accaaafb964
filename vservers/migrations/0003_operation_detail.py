from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('vservers', '0002_operation_runner'),
    ]

    operations = [
        migrations.AddField(
            model_name='operation',
            name='detail',
            field=models.TextField(blank=True),
        ),
    ]
