"""Backups, the panel's side (issue 15, 2.): the worker's jobs (jobs.py), the schedule and its
retention (schedule.py), what users ask for (actions.py), the pages (views.py, forms.py) and the
streamed download through the node's root side (downloads.py). The archives themselves are the
engine's (vservers.engine.backups); the Backup rows remember what the panel made."""
