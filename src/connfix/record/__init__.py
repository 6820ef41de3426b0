"""What a run leaves: the journal's event vocabulary (`events`), the JSON-lines journal
(`journal`), the Markdown report built from it (`report`, `templates/`), notifications
sent from its entries (`notify`), and a diagnosis as Prometheus gauges (`metrics`)."""
