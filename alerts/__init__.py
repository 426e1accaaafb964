"""Per-server alerts: thresholds a tenant sets on the server's page (disk above X %, memory
above Y % for N minutes, the server unreachable for N minutes), evaluated after every usage
sample of the node (alerts.evaluate, called from the receiver of
vservers.usage.signals.node_sampled), and one mail per episode through the notification outbox
(Event.ALERT: the tenant's admins, opt-out and retries like every other mail)."""
