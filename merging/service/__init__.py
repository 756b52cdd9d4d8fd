"""The service behind the app, in small modules: settings (`config`), the allow-listed encoders
(`registry`), the reusable models and thread control (`pool`), the live probes (`probing`), the
method/role wiring and control parsing (`controls`), session values (`session`) and the thin `Lab`."""
