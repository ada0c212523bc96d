"""The training harness: Lightning module, network factory, run orchestration (see docs/ARCHITECTURE.md)."""
