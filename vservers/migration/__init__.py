"""Moving a server between nodes (issue 16): the MIGRATE operation across two workers.

 - actions.py: what the operator asks for (one server, or every server of a node: evacuate);
 - jobs.py: the source's half (a HANDLERS entry: stop, ship), the target's `receive` job
   (adopt, start, the one commit that moves the server) and either side's `cleanup` job;
 - recovery.py: what each node's recovery and reconcile do about migrations a dead worker left;
 - forms.py, views.py, api (api/migration.py): the operator's pages and endpoints.

The database says where a server lives (server.node); the one transaction that changes it is
the migration's point of no return. Before it the server is the source's, and the target
removes whatever it has of it; after it the target's, and the source removes its stopped copy.
"""
