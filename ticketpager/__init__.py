"""The application (top floor): settings wiring, the service, the HTTP app and the CLI. The only package that
knows every other one (see docs/architecture.md)."""
