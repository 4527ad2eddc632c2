"""The ground floor: the model, errors, clock, retry, JSON, field vocabularies, redaction, the incident lifecycle
and the typed ports through which the pipeline talks to rules and connectors. Imports nothing of ours."""
